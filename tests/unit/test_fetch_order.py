"""The order fetch takes the relay's inbox in (``in_sending_order``): the order the senders signed their
manifests, a copy sent by mistake before one sent ``--again`` within a second, the relay's order otherwise. The
relay's own order breaks ties of ``created_at`` (whole seconds) at random; tests/integration/test_unattended.py
shows what that did to an original and its ``--again`` copy."""

from __future__ import annotations

from typing import Any

from labrelay.client.fetch import in_sending_order


def listed(tid: str, created: object, *, again: bool = False) -> dict[str, Any]:
    payload: dict[str, Any] = {"created": created}
    if again:
        payload["again"] = True
    return {"transfer_id": tid, "manifest": {"payload": payload}}


def ids(listings: list[Any]) -> list[str]:
    return [item["transfer_id"] if isinstance(item, dict) else repr(item) for item in in_sending_order(listings)]


def test_sending_order_reads_every_rfc3339_form_as_the_verifier_does() -> None:
    """By instant, not by text: an offset or a fraction of a second from another client sorts where it falls."""
    listings = [
        listed("c", "2026-12-05T06:00:01Z"),
        listed("a", "2026-12-05T07:00:00+01:00"),  # 06:00:00 UTC
        listed("b", "2026-12-05T06:00:00.500Z"),
    ]
    assert ids(listings) == ["a", "b", "c"]


def test_within_a_second_a_mistaken_copy_comes_before_an_again_copy_and_ties_keep_the_relays_order() -> None:
    listings = [
        listed("again", "2026-12-05T06:00:00Z", again=True),
        listed("first", "2026-12-05T06:00:00Z"),
        listed("second", "2026-12-05T06:00:00Z"),
        listed("later", "2026-12-05T06:00:01Z"),
    ]
    assert ids(listings) == ["first", "second", "again", "later"]


def test_malformed_entries_come_first_and_never_stop_the_sort() -> None:
    """They are refused when their turn comes (their manifest does not verify); the others keep their order."""
    listings: list[Any] = [
        listed("ok", "2026-12-05T06:00:00Z"),
        listed("no-time", None),
        listed("bad-time", "yesterday"),
        {"transfer_id": "no-manifest"},
        {"transfer_id": "no-payload", "manifest": {"payload": "text"}},
    ]
    assert ids(listings) == ["no-time", "bad-time", "no-manifest", "no-payload", "ok"]
