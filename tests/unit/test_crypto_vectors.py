"""Known-answer tests for the crypto layer, from the RFCs' own vectors (tests/vectors/)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, algorithms

from labrelay.crypto import httpsig
from labrelay.crypto.envelopes import canonical, sign_envelope, verify_envelope
from labrelay.crypto.httpsig import DigestCheck, HeaderLines, RequestView
from labrelay.crypto.keys import SigningKey, VerifyKey, unb64u
from labrelay.domain.transfers import Manifest
from labrelay.errors import IntegrityError
from labrelay.synthetic.generator import nir_key
from tests.support.world import load_vector


@pytest.mark.parametrize("vector", load_vector("rfc8032_ed25519.json")["vectors"], ids=lambda v: v["name"])
def test_ed25519_rfc8032(vector: dict) -> None:
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key"])))
    assert key.public.raw.hex() == vector["public_key"]
    message = bytes.fromhex(vector["message"])
    assert key.sign(message).hex() == vector["signature"]
    key.public.verify(bytes.fromhex(vector["signature"]), message)
    with pytest.raises(IntegrityError):
        key.public.verify(bytes.fromhex(vector["signature"]), message + b"x")


@pytest.mark.parametrize("vector", load_vector("rfc8785_jcs.json")["vectors"])
def test_jcs_rfc8785(vector: dict) -> None:
    assert canonical(json.loads(vector["input"])).decode("utf-8") == vector["canonical"]


@pytest.mark.parametrize("vector", load_vector("rfc9530_content_digest.json")["vectors"])
def test_content_digest_rfc9530(vector: dict) -> None:
    check = DigestCheck(vector["content_digest_sha256"])
    check.update(vector["body"].encode())
    check.verify()
    bad = DigestCheck(vector["content_digest_sha256"])
    bad.update(vector["body"].encode() + b" ")
    with pytest.raises(IntegrityError):
        bad.verify()


def _b26_view(v: dict) -> RequestView:
    req = v["request"]
    return RequestView(req["method"], req["url"], HeaderLines([tuple(h) for h in req["headers"]], writable={}))


def test_rfc9421_b26_signature_reproduced() -> None:
    """The library we rely on builds RFC 9421's B.2.6 signature base and signature byte for byte."""
    v = load_vector("rfc9421_b26_ed25519.json")
    seed = unb64u(v["seed_b64url"])
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(seed))
    assert key.public.b64 == v["public_b64url"]
    view = _b26_view(v)
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=httpsig._OneKey(private=key))
    prepared = signer.prepare(
        view,
        key_id=v["keyid"],
        created=datetime.fromtimestamp(v["created"], tz=UTC),
        label=v["label"],
        include_alg=False,
        covered_component_ids=v["covered"],
    )
    assert prepared.signature_base.decode() == v["signature_base"]
    sig = base64.b64encode(key.sign(prepared.signature_base)).decode()
    assert f"{v['label']}=:{sig}:" == v["signature"]


def test_nir_key_vectors() -> None:
    vectors = load_vector("nir_keys.json")
    for item in vectors["valid"]:
        assert nir_key(item["first13"]) == item["key"], item
    for bad in vectors["invalid"]:
        assert nir_key(bad[:13]) != bad[13:], bad


def test_verify_key_rejects_wrong_length() -> None:
    with pytest.raises(IntegrityError):
        VerifyKey(b"\x00" * 31)


def test_signed_manifest_known_answer() -> None:
    """Our signed-object format, pinned: another implementation (the browser's) must produce these bytes."""
    v = load_vector("labrelay_envelope_v1.json")
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["secret_key_hex"])))
    assert canonical(v["payload"]).decode("utf-8") == v["canonical_utf8"]
    assert sign_envelope(v["payload"], key, "lab-paris-01") == v["envelope"]
    assert verify_envelope(v["envelope"], "transfer-manifest", key.public) == v["payload"]
    assert Manifest.from_payload(v["payload"]).to_payload() == v["payload"]
    with pytest.raises(IntegrityError):
        verify_envelope(v["envelope"], "transfer-receipt", key.public)
