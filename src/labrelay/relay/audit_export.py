"""The audit trail as a SIEM receives it: one NDJSON document per link, every hashed field, so that the chain can
be verified again from the export alone (``GET /v1/audit/export``, ``labrelay audit export``; docs/audit.md)."""

from __future__ import annotations

import json
from typing import Any

from labrelay.domain.audit import AuditLink
from labrelay.domain.timeutil import to_rfc3339
from labrelay.ports import AuditLog


def link_doc(rec: AuditLink) -> dict[str, Any]:
    """One audit link as an NDJSON line: every hashed field, so a SIEM can re-verify the chain."""
    e = rec.entry
    return {
        "seq": rec.seq,
        "at": to_rfc3339(e.at),
        "event": e.event.value,
        "outcome": e.outcome.value,
        "actor": e.actor,
        "transfer_id": e.transfer_id,
        "reason": e.reason,
        "details": dict(e.details),
        "prev": rec.prev_hash,
        "hash": rec.hash,
    }


def export_ndjson(audit_log: AuditLog, after: int, limit: int) -> bytes:
    """At most ``limit`` links after ``after``, one compact JSON document a line (nothing at all when none)."""
    out = []
    for rec in audit_log.links(after):
        out.append(json.dumps(link_doc(rec), sort_keys=True, separators=(",", ":")))
        if len(out) >= limit:
            break
    return ("\n".join(out) + "\n").encode() if out else b""
