"""What the routes add to the OpenAPI document beyond their signatures: refusals, signed requests, tus headers.

Errors are served as application/problem+json (never application/json, which FastAPI would document for a
`model`): the schema is given inline under the media type actually sent. The tus 1.0 headers are documented
(docs/protocol.md, HTTP API): without them, a client generated from the document could not upload (every PATCH
would be refused with 412).
"""

from __future__ import annotations

from typing import Any

from labrelay.http.deps import MAX_UINT
from labrelay.http.models import Envelope, Problem
from labrelay.wire import JSON_CONTENT_TYPE, PROBLEM_CONTENT_TYPE, TUS_RESUMABLE, TUS_VERSION, UPLOAD_OFFSET

_PROBLEM_CONTENT = {PROBLEM_CONTENT_TYPE: {"schema": Problem.model_json_schema()}}
PROBLEMS: dict[int | str, dict[str, Any]] = {
    "4XX": {"content": _PROBLEM_CONTENT, "description": "Refused; `code` says why (docs/protocol.md, Errors)."},
    "5XX": {
        "content": _PROBLEM_CONTENT,
        "description": "`frozen` or `unavailable` (503), `storage-full` (507); `internal` (500) is a bug.",
    },
}
SIGNED = "Signed request (RFC 9421, Ed25519; see docs/protocol.md)."
UINT_HEADER = {"schema": {"type": "integer", "minimum": 0, "maximum": MAX_UINT}}
TUS_HEADER = {"schema": {"type": "string", "enum": [TUS_VERSION]}, "description": "tus protocol version."}
TUS_PARAMETERS = [
    {"name": TUS_RESUMABLE, "in": "header", "required": True, **TUS_HEADER},
    {
        "name": UPLOAD_OFFSET,
        "in": "header",
        "required": True,
        "description": "Where this chunk starts: the offset the relay holds (signed, with `content-digest`).",
        **UINT_HEADER,
    },
]
RANGE_PARAMETER = {
    "name": "Range",
    "in": "header",
    "required": False,
    "description": "`bytes=N-`: resume from byte N (signed, when present).",
    "schema": {"type": "string", "pattern": "^bytes=[0-9]{1,15}-$"},
}
ENVELOPE_BODY = {
    "requestBody": {
        "required": True,
        "content": {JSON_CONTENT_TYPE: {"schema": Envelope.model_json_schema()}},
    }
}
