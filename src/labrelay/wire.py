"""The wire protocol's names and values, defined once for both sides: the relay's HTTP edge and the client.

Header names are given in their canonical case (HTTP header names are case-insensitive; signature components are
their lower-case form). Nothing here imports from labrelay: this is a bottom layer, beside the domain
(docs/protocol.md says what each one means).
"""

from __future__ import annotations

# ---------------------------------------------------------------- tus 1.0 (core + termination)

TUS_VERSION = "1.0.0"
TUS_RESUMABLE = "Tus-Resumable"
TUS_VERSION_HEADER = "Tus-Version"
UPLOAD_OFFSET = "Upload-Offset"
UPLOAD_LENGTH = "Upload-Length"
UPLOAD_PATH = "/v1/uploads/"
"""Where a transfer's bytes are uploaded: ``UPLOAD_PATH + transfer_id``."""

# ---------------------------------------------------------------- content types

JSON_CONTENT_TYPE = "application/json"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
"""A tus chunk."""
OCTET_STREAM = "application/octet-stream"
"""A payload: its age ciphertext."""
PROBLEM_CONTENT_TYPE = "application/problem+json"
"""Every refusal (RFC 9457), with the error's stable ``code``."""
NDJSON_CONTENT_TYPE = "application/x-ndjson"
"""The audit export."""

# ---------------------------------------------------------------- signatures (RFC 9421, RFC 9530) and the audit head

SIGNATURE_INPUT = "Signature-Input"
SIGNATURE = "Signature"
CONTENT_DIGEST = "Content-Digest"
UPLOAD_SIGNED = ("upload-offset", "content-type")
"""What a tus PATCH signs beyond the method, the target URI and the content digest: where its chunk goes, and
that it is one."""
PAYLOAD_SIGNED = ("range",)
"""What a payload download signs beyond the method and the target URI: where it resumes, when it does."""
CHECKPOINT_HEADER = "Labrelay-Checkpoint"
"""The relay's latest signed audit head, on every response to a proven signer."""
