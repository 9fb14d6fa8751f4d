"""Group commit (decision 0021): a leader stopped at any point, even by an asynchronous exception while it waits for
the write lock, answers every write that joined its batch and leaves no batch open for later writes to join."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from labrelay.storage.sql.group import GroupCommit


def test_writes_are_answered_in_order() -> None:
    group: GroupCommit[str, str] = GroupCommit(lambda items: [i.upper() for i in items])
    assert [group.submit(x) for x in "abc"] == ["A", "B", "C"]


def test_a_leader_interrupted_while_waiting_for_the_lock_fails_its_batch_and_hangs_no_one() -> None:
    written: list[str] = []

    def write(items: list[str]) -> list[str]:
        written.extend(items)
        return items

    group: GroupCommit[str, str] = GroupCommit(write)
    entered, release = threading.Event(), threading.Event()

    class Interrupted:  # the leader gets KeyboardInterrupt (or Terminated) while blocked on the lock
        def __enter__(self) -> None:
            entered.set()
            release.wait(10)
            raise KeyboardInterrupt

        def __exit__(self, *exc: Any) -> None:
            return None

    real = group.lock
    group.lock = Interrupted()  # type: ignore[assignment]
    errors: dict[str, BaseException] = {}

    def submit(name: str, item: str) -> None:
        try:
            group.submit(item)
        except BaseException as exc:  # noqa: BLE001 - the thread keeps what it got, KeyboardInterrupt included
            errors[name] = exc

    leader = threading.Thread(target=submit, args=("leader", "a"), daemon=True)
    leader.start()
    assert entered.wait(10)
    follower = threading.Thread(target=submit, args=("follower", "b"), daemon=True)
    follower.start()
    deadline = time.monotonic() + 10
    while (group._open is None or len(group._open.items) < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert group._open is not None
    assert group._open.items == ["a", "b"]  # the follower joined the leader's batch
    release.set()
    leader.join(10)
    follower.join(10)
    assert not follower.is_alive(), "the follower waits forever for a batch its leader abandoned"
    assert isinstance(errors["leader"], KeyboardInterrupt)
    assert isinstance(errors["follower"], KeyboardInterrupt)
    assert group._open is None
    group.lock = real
    assert group.submit("c") == "c"  # a later write goes in a new batch, not the dead one
    assert written == ["c"]


def test_a_failed_write_fails_every_write_in_its_batch() -> None:
    def write(items: list[str]) -> list[str]:
        raise RuntimeError("disk full")

    group: GroupCommit[str, str] = GroupCommit(write)
    with pytest.raises(RuntimeError, match="disk full"):
        group.submit("a")
    assert group._open is None
