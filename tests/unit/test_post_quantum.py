"""Hybrid post-quantum recipients (T43), below the CLI: keys are hybrid by default, a file is never sealed to classic
and hybrid recipients together, and the routing policy's ``require_pq`` is parsed strictly and judged per key."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from labrelay.client.policy import classic_payload_refusal, default_policy_text
from labrelay.crypto import age_format, age_stream
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.names import new_id
from labrelay.domain.parties import is_age_recipient, is_pq_recipient, key_kind, short_key
from labrelay.domain.policy import PolicyError, parse_policy, policy_payload, signed_policy_from_payload
from labrelay.domain.transfers import Manifest
from labrelay.errors import UsageError

HYBRID = AgeIdentity.generate()
CLASSIC = AgeIdentity.generate(classic=True)


def test_new_keys_are_hybrid_unless_asked_otherwise() -> None:
    assert HYBRID.is_pq
    assert HYBRID.secret.startswith("AGE-SECRET-KEY-PQ-1")
    assert HYBRID.recipient.startswith("age1pq1")
    assert len(HYBRID.recipient) == 1959
    assert not CLASSIC.is_pq
    assert CLASSIC.secret.startswith("AGE-SECRET-KEY-1")
    assert len(CLASSIC.recipient) == 62
    assert [is_pq_recipient(r) for r in (HYBRID.recipient, CLASSIC.recipient)] == [True, False]
    assert all(is_age_recipient(r) for r in (HYBRID.recipient, CLASSIC.recipient))
    assert not is_age_recipient(HYBRID.recipient[:-1])
    assert not is_age_recipient(CLASSIC.recipient + "q")
    assert [key_kind(r) for r in (HYBRID.recipient, CLASSIC.recipient)] == ["post-quantum", "classic"]
    assert short_key(CLASSIC.recipient) == CLASSIC.recipient
    assert len(short_key(HYBRID.recipient)) < 40


@pytest.mark.threat("T43")
def test_a_file_is_never_sealed_to_classic_and_hybrid_recipients_together() -> None:
    other = AgeIdentity.generate()
    for recipients in ([HYBRID.recipient, CLASSIC.recipient], [CLASSIC.recipient, other.recipient]):
        sink = io.BytesIO()
        with pytest.raises(UsageError, match=r"both classic \(X25519\) and post-quantum"):
            age_stream.encrypt(io.BytesIO(b"synthetic"), sink, recipients)
        assert sink.getvalue() == b""  # refused before a byte is written
        with pytest.raises(UsageError, match="both classic"):
            age_format.Writer(sink, recipients)
        assert sink.getvalue() == b""
    # One kind at a time is sealed, and each recipient opens it: the stanzas are all of that kind.
    for kind, recipients, opener in (
        ("mlkem768x25519", [HYBRID.recipient, other.recipient], other),
        ("X25519", [CLASSIC.recipient], CLASSIC),
    ):
        sealed = io.BytesIO()
        age_stream.encrypt(io.BytesIO(b"synthetic"), sealed, recipients)
        header = sealed.getvalue().split(b"\n---", 1)[0].decode()
        assert [line.split()[1] for line in header.splitlines() if line.startswith("-> ")] == [kind] * len(recipients)
        opened = io.BytesIO()
        age_stream.decrypt(io.BytesIO(sealed.getvalue()), opened, [opener], expect=None)
        assert opened.getvalue() == b"synthetic"


def test_require_pq_is_a_boolean_the_shipped_policy_sets() -> None:
    shipped = parse_policy(default_policy_text())
    assert shipped.require_pq is True
    assert shipped.classic_refusal("cnam", HYBRID.recipient) is None
    why = shipped.classic_refusal("cnam", CLASSIC.recipient)
    assert why is not None
    assert "requires post-quantum recipients" in why
    assert "party rotate --pq" in why
    lax = parse_policy(default_policy_text().replace("require_pq = true\n", ""))
    assert lax.require_pq is False
    assert lax.classic_refusal("cnam", CLASSIC.recipient) is None
    for bad in ('"true"', "1", "[]"):
        with pytest.raises(PolicyError, match="require_pq must be true or false"):
            parse_policy(default_policy_text().replace("require_pq = true", f"require_pq = {bad}"))


def _manifest(recipient_key: str, created: datetime) -> Manifest:
    return Manifest(
        transfer_id=new_id(),
        batch_id=new_id(),
        sender="lab-a",
        recipient="cnam",
        recipient_key=recipient_key,
        size=4096,
        sha256="0" * 64,
        record_count=1,
        media_type="text/csv",
        created=created,
        deadline=created + timedelta(days=1),
    )


@pytest.mark.threat("T43")
def test_a_payload_sealed_to_a_classic_key_after_require_pq_is_refused_one_sealed_before_is_not() -> None:
    issued = datetime(2026, 12, 1, 12, tzinfo=UTC)
    payload = policy_payload(default_policy_text(), issued, issue=2, not_after=issued + timedelta(days=90))
    signed = signed_policy_from_payload(payload)
    after = classic_payload_refusal(signed, "cnam", _manifest(CLASSIC.recipient, issued + timedelta(minutes=1)))
    assert after is not None
    assert "sealed to a classic (X25519) age key after policy fr-covid-2026.3 (issue 2)" in after
    # Within the clock skew allowed between the lab and the authority: opened.
    assert classic_payload_refusal(signed, "cnam", _manifest(CLASSIC.recipient, issued + timedelta(seconds=20))) is None
    # Sealed before the policy required post-quantum keys (to a key kept after a rotation): opened.
    assert classic_payload_refusal(signed, "cnam", _manifest(CLASSIC.recipient, issued - timedelta(hours=1))) is None
    assert classic_payload_refusal(signed, "cnam", _manifest(HYBRID.recipient, issued + timedelta(hours=1))) is None
    lax = signed_policy_from_payload(
        policy_payload(
            default_policy_text().replace("require_pq = true", "require_pq = false"),
            issued,
            issue=3,
            not_after=issued + timedelta(days=90),
        )
    )
    assert classic_payload_refusal(lax, "cnam", _manifest(CLASSIC.recipient, issued + timedelta(hours=1))) is None


def test_a_file_with_more_recipients_than_labrelay_accepts_is_refused_before_any_is_tried() -> None:
    many = [AgeIdentity.generate(classic=True).recipient for _ in range(age_stream.MAX_STANZAS)] + [CLASSIC.recipient]
    sealed = io.BytesIO()
    age_stream.encrypt(io.BytesIO(b"synthetic"), sealed, many)
    with pytest.raises(age_format.AgeError, match="more than the 16 accepted") as caught:
        age_stream.decrypt(io.BytesIO(sealed.getvalue()), io.BytesIO(), [CLASSIC], expect=None)
    assert caught.value.stage == "header"
    opened = io.BytesIO()  # the format itself has no such limit
    age_format.decrypt(io.BytesIO(sealed.getvalue()), opened, [CLASSIC.key], max_stanzas=None)
    assert opened.getvalue() == b"synthetic"


def test_a_header_longer_than_the_cap_is_refused_before_it_is_read_whole() -> None:
    hostile = b"age-encryption.org/v1\n-> grease " + b"A" * (age_format.MAX_HEADER_BYTES + 10) + b"\n"
    with pytest.raises(age_format.AgeError, match="header too long"):
        age_format.decrypt(io.BytesIO(hostile), io.BytesIO(), [CLASSIC.key])
