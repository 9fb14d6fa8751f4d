"""The life of a transfer, as transcripts: sequences of events and what the lifecycle table answers to each (the state
it leads to, or a refusal), with no database, no clock and no payload store. Then every pair of a state and an event,
so that each illegal transition is seen refused; and the one place that hands the table's answer to the repository,
and closes a transfer decision first, driven with recording fakes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from labrelay.domain.audit import AuditEvent
from labrelay.domain.transfers import (
    LIFECYCLE,
    TERMINAL_STATES,
    TransferEvent,
    TransferState,
    next_state,
)
from labrelay.errors import Conflict
from labrelay.relay.transfer_access import Decision, TransferAccess

E, S = TransferEvent, TransferState
HOLDS = {E.REFUSAL, E.QUARANTINE, E.CORRUPT}
REFUSED = "refused"

# Written out apart from the table under test: every legal (state, event) and where it leads.
ALLOWED: dict[tuple[TransferState, TransferEvent], TransferState] = {
    (S.UPLOADING, E.VERIFIED): S.AVAILABLE,
    (S.UPLOADING, E.MISMATCHED): S.REJECTED,
    (S.UPLOADING, E.CANCEL): S.CANCELLED,
    (S.UPLOADING, E.EXPIRE): S.EXPIRED,
    (S.UPLOADING, E.BYTES_LOST): S.EXPIRED,
    (S.UPLOADING, E.RESTART): S.UPLOADING,
    (S.UPLOADING, E.QUARANTINE): S.UPLOADING,
    (S.UPLOADING, E.CORRUPT): S.UPLOADING,
    (S.AVAILABLE, E.RECEIPT): S.DELIVERED,
    (S.AVAILABLE, E.EXPIRE): S.EXPIRED,
    (S.AVAILABLE, E.BYTES_LOST): S.EXPIRED,
    (S.AVAILABLE, E.REFUSAL): S.AVAILABLE,
    (S.AVAILABLE, E.QUARANTINE): S.AVAILABLE,
    (S.AVAILABLE, E.CORRUPT): S.AVAILABLE,
}
REFUSED_WHILE_HELD = {E.RECEIPT, E.CANCEL}

TRANSCRIPTS = {
    "sent, fetched and acknowledged": """
        verified    available
        receipt     delivered
        receipt     refused
        refusal     refused
        expire      refused
        bytes-lost  refused
    """,
    "bytes that do not match the manifest": """
        mismatched  rejected
        verified    refused
        cancel      refused
        restart     refused
    """,
    "a sender that gives up after a lost disk": """
        restart     uploading
        cancel      cancelled
        verified    refused
        expire      refused
    """,
    "an upload that never finished": """
        expire      expired
        verified    refused
        receipt     refused
        restart     refused
    """,
    "a payload nobody fetched": """
        verified    available
        cancel      refused
        mismatched  refused
        expire      expired
        receipt     refused
        expire      refused
    """,
    "a payload its recipient refuses": """
        refusal     refused
        verified    available
        refusal     available
        receipt     refused
        cancel      refused
        expire      expired
    """,
    "an upload an administrator holds": """
        quarantine  uploading
        cancel      refused
        verified    available
        receipt     refused
        quarantine  available
        expire      expired
    """,
    "a stored copy that fails its at-rest check": """
        verified    available
        corrupt     available
        receipt     refused
        bytes-lost  expired
        corrupt     refused
    """,
    "a published payload whose bytes are lost": """
        verified    available
        restart     refused
        bytes-lost  expired
        quarantine  refused
    """,
}


def play(transcript: str) -> None:
    """Feed each line's event to the lifecycle, from a new transfer (``uploading``, not held): each must lead to the
    state the line names, or be refused (``Conflict``) and change nothing."""
    state, held = S.UPLOADING, False
    for number, line in enumerate(transcript.split("\n")):
        if not line.strip():
            continue
        event, expected = (E(line.split()[0]), line.split()[1])
        if expected == REFUSED:
            with pytest.raises(Conflict, match=event.value):
                next_state(state, event, held=held)
            continue
        state = next_state(state, event, held=held)
        assert state is S(expected), f"line {number}: {line.strip()}"
        held = held or event in HOLDS


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcripts(name: str) -> None:
    play(TRANSCRIPTS[name])


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("event", list(E))
def test_every_transition_is_the_tables_and_every_other_is_refused(state: TransferState, event: TransferEvent) -> None:
    for held in (False, True):
        if (state, event) not in ALLOWED or (held and event in REFUSED_WHILE_HELD):
            with pytest.raises(Conflict):
                next_state(state, event, held=held)
        else:
            assert next_state(state, event, held=held) is ALLOWED[state, event]


def test_terminal_states_are_those_no_event_leaves_and_uploading_is_where_a_transfer_starts() -> None:
    left = {state for state, _ in ALLOWED}
    assert set(S) - left == TERMINAL_STATES
    reachable, frontier = {S.UPLOADING}, [S.UPLOADING]
    while frontier:
        state = frontier.pop()
        for (source, _), target in ALLOWED.items():
            if source is state and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(S)  # every state is reached from a new transfer


def test_an_event_that_moves_a_transfer_leads_to_one_state_from_wherever_it_may_happen() -> None:
    """What lets the repository apply a row in one atomic statement: its sources, to its one target. A hold or a
    restart moves nothing: the state stays."""
    for event, row in LIFECYCLE.items():
        targets = {next_state(source, event) for source in row.sources}
        assert targets == (set(row.sources) if row.target is None else {row.target}), event
        assert (row.target is None) == (event in HOLDS or event is E.RESTART), event


# ------------------------------------------------------------------ the table's answer, handed to the repository


class Recorder:
    """A repository, payload store, auditor and lock that write down what they are asked, in order."""

    def __init__(self, moves: bool = True) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.moves = moves

    def transition(
        self,
        transfer_id: str,
        from_states: Sequence[TransferState],
        to_state: TransferState,
        at: datetime,
        receipt_envelope: Any = None,
        *,
        unless_quarantined: bool = False,
    ) -> bool:
        self.calls.append(("transition", tuple(from_states), to_state, unless_quarantined))
        return self.moves

    def delete(self, transfer_id: str) -> bool:
        self.calls.append(("delete",))
        return True

    def record(self, event: AuditEvent, **fields: Any) -> None:
        self.calls.append(("audit", event, fields.get("actor"), fields.get("cause")))

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        yield

    def forget(self, name: str) -> None: ...


def access(recorder: Recorder) -> TransferAccess:
    return TransferAccess(recorder, recorder, recorder, recorder, recorder)  # type: ignore[arg-type]


T = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize("event", [e for e, row in LIFECYCLE.items() if row.target is not None])
def test_the_repository_is_given_the_tables_row(event: TransferEvent) -> None:
    recorder = Recorder()
    assert access(recorder).move("t", event, T)
    row = LIFECYCLE[event]
    assert recorder.calls == [("transition", tuple(sorted(row.sources)), row.target, event in REFUSED_WHILE_HELD)]


@pytest.mark.parametrize("event", [e for e, row in LIFECYCLE.items() if row.target is None])
def test_an_event_that_moves_nothing_never_reaches_the_repository(event: TransferEvent) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="does not change"):
        access(recorder).move("t", event, T)
    assert recorder.calls == []


def test_a_transfer_is_closed_decision_first() -> None:
    """The state changes, the decision is recorded, then the bytes go and their deletion is recorded: a crash at any
    point leaves the decision on record, or bytes of a transfer that is over (which recovery deletes)."""
    recorder = Recorder()
    decision = Decision(AuditEvent.UPLOAD_CANCEL, "lab-a")
    assert access(recorder).close("t", E.CANCEL, T, decision, deleted_by="lab-a")
    assert recorder.calls == [
        ("transition", (S.UPLOADING,), S.CANCELLED, True),
        ("audit", AuditEvent.UPLOAD_CANCEL, "lab-a", None),
        ("delete",),
        ("audit", AuditEvent.PAYLOAD_DELETE, "lab-a", "cancelled"),
    ]
    refused = Recorder(moves=False)
    assert not access(refused).close("t", E.EXPIRE, T, Decision(AuditEvent.TRANSFER_EXPIRE, "lab-a"), deleted_by=None)
    assert [call[0] for call in refused.calls] == ["transition"]  # nothing decided, nothing deleted
