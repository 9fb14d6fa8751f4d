"""The names of the detection rules (``labrelay.relay.detector``), as settings and alerts spell them."""

from __future__ import annotations

RULES = ("enumeration", "bad-signatures", "replay", "revoked-key", "volume", "limits")
# A bad signature proves nobody's identity; a replay is sent by whoever captured the request, not its signer; a
# limit hit (too many connections or uploads at once) is pressure, not proof of bad faith.
LOCKABLE = frozenset(RULES) - {"bad-signatures", "replay", "limits"}


def parse_lock_on(text: str) -> frozenset[str]:
    """``"enumeration, replay"`` → the rules that lock the offending party; ``none`` → no rule locks."""
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = names - set(RULES) - {"none"}
    if unknown:
        raise ValueError(f"unknown rules {sorted(unknown)}; rules are {', '.join(RULES)}")
    if names - {"none"} - LOCKABLE:
        raise ValueError(
            "bad-signatures, replay and limits cannot lock: a bad signature proves nobody's identity, a replay is "
            "sent by whoever captured the request, not by its signer, and a limit hit is pressure, not bad faith"
        )
    return names - {"none"}
