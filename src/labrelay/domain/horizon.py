"""How long a recipient must keep one of its age keys after rotating: until the last transfer sealed to it is over.

The relay answers ``GET /v1/keys/{key}/horizon`` with it; the client destroys the old key once ``latest_deadline``
has passed (``labrelay.client.rotation``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from labrelay.domain.transfers import Transfer


@dataclass(frozen=True, slots=True)
class KeyHorizon:
    key: str
    open: int
    """Transfers not over yet that were sealed to ``key``."""
    latest_deadline: datetime | None
    """The latest of their deadlines; None: none is open, the key may go now."""

    @classmethod
    def of(cls, key: str, transfers: Sequence[Transfer]) -> KeyHorizon:
        """The horizon of ``key`` over ``transfers``, the caller's open transfers sealed to it."""
        return cls(key, len(transfers), max((r.deadline for r in transfers), default=None))
