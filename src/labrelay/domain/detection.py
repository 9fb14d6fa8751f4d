"""The names of the detection rules (``labrelay.relay.detector``), as settings and alerts spell them."""

from __future__ import annotations

RULES = ("enumeration", "bad-signatures", "replay", "revoked-key", "volume")
# A bad signature proves nobody's identity; a replay is sent by whoever captured the request, not its signer.
LOCKABLE = frozenset(RULES) - {"bad-signatures", "replay"}


def parse_lock_on(text: str) -> frozenset[str]:
    """``"enumeration, replay"`` → the rules that lock the offending party; ``none`` → no rule locks."""
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = names - set(RULES) - {"none"}
    if unknown:
        raise ValueError(f"unknown rules {sorted(unknown)}; rules are {', '.join(RULES)}")
    if names - {"none"} - LOCKABLE:
        raise ValueError(
            "bad-signatures and replay cannot lock: a bad signature proves nobody's identity, and a replay is sent "
            "by whoever captured the request, not by its signer"
        )
    return names - {"none"}
