"""Group commit: writes that arrive while a transaction is being written wait for it, then go together in the next
one. Each caller still returns only once its own write is committed; a transaction that fails fails every write
in it, none of them stored. On SQLite (``synchronous=FULL``) a commit is an fsync and every transaction holds the
database's one write lock: under load, one commit for many writes instead of one each (decision 0021)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Batch(Generic[Item, Result]):
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.results: list[Result] = []
        self.error: BaseException | None = None
        self.done = threading.Event()


class GroupCommit(Generic[Item, Result]):
    """Runs ``write`` (one transaction: a result per item, in order) over the items submitted together. ``lock`` is
    held by each ``write``: hold it to run another transaction that must not interleave with them."""

    def __init__(self, write: Callable[[list[Item]], list[Result]], max_batch: int = 256) -> None:
        self._write = write
        self._max = max_batch
        self.lock = threading.Lock()
        self._queue = threading.Lock()
        self._open: _Batch[Item, Result] | None = None

    def submit(self, item: Item) -> Result:
        mine: _Batch[Item, Result] | None = None  # the batch this call leads, from the moment it is made
        committed = False
        try:
            with self._queue:
                batch = self._open
                if batch is None or len(batch.items) >= self._max:
                    mine = _Batch()
                    self._open = mine
                    batch = mine
                index = len(batch.items)
                batch.items.append(item)
            if mine is not None:
                with self.lock:
                    self._close(mine)  # what arrives from now on waits for the next transaction
                    results = self._write(mine.items)
                    if len(results) != len(mine.items):
                        raise RuntimeError("a group commit wrote a different number of results than items")
                    mine.results = results
                    committed = True
        except BaseException as exc:
            if mine is not None and not committed:
                mine.error = exc
            raise
        finally:
            if mine is not None:  # whatever stopped the leader (even KeyboardInterrupt while waiting for the lock),
                self._close(mine)  # no later write joins its batch and every write in it is answered
                mine.done.set()
        if mine is None:
            batch.done.wait()
            if batch.error is not None:
                raise batch.error
        return batch.results[index]

    def _close(self, batch: _Batch[Item, Result]) -> None:
        with self._queue:
            if self._open is batch:
                self._open = None
