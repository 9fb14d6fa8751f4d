"""Hybrid post-quantum recipients (T43), below the CLI: keys are hybrid by default, a file is never sealed to classic
and hybrid recipients together, and the routing policy's ``require_pq`` is parsed strictly and judged per key."""

from __future__ import annotations

import io

import pytest

from labrelay.client.policy import default_policy_text
from labrelay.crypto import age_format, age_stream
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.parties import is_age_recipient, is_pq_recipient, key_kind, short_key
from labrelay.domain.policy import PolicyError, parse_policy
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
