"""Transport rules: TLS off loopback, certificate checks, and the HTTP edge's answers to malformed requests."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority, Party
from labrelay.clock import SystemClock
from labrelay.crypto.httpsig import sign_request
from labrelay.crypto.keys import SigningKey
from labrelay.domain.names import new_id
from labrelay.domain.parties import Role
from labrelay.operations import init_data_dir


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labrelay test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(
        fd,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    os.close(fd)
    return cert_path, key_path


@pytest.mark.threat("T10")
def test_tls_relay_and_certificate_checks(tmp_path: Path, relay_factory, cli) -> None:
    cert, key = self_signed(tmp_path)
    authority = Authority.init(tmp_path / "auth")
    init_data_dir(tmp_path / "relay", authority.path / "authority.pub")
    relay = relay_factory(tmp_path / "relay", "--tls-cert", str(cert), "--tls-key", str(key))
    assert relay.url.startswith("https://127.0.0.1:")
    lab = Party.create(tmp_path / "p", "lab-a", Role.LAB, None, authority.path / "authority.pub", datetime.now(UTC))
    envelope = authority.sign_entry(lab, datetime.now(UTC), timedelta(days=1))
    with RelayClient(relay.url, lab.name, lab.signing_key, SystemClock(), ca_bundle=cert, retries=0) as client:
        client.register_entry(envelope)
    trusted = cli("directory", "--as", lab.path, "--server", relay.url, "--cacert", cert)
    assert trusted.code == 0, str(trusted)
    assert "lab-a" in trusted.out
    untrusted = cli("directory", "--as", lab.path, "--server", relay.url)
    assert untrusted.code == 3, str(untrusted)
    assert "not trusted" in untrusted.err
    plain = cli("directory", "--as", lab.path, "--server", relay.url.replace("https://", "http://"))
    assert plain.code == 1, str(plain)


@pytest.mark.threat("T10")
def test_relay_refuses_a_public_address_without_tls(tmp_path: Path, cli) -> None:
    result = cli("authority", "init", tmp_path / "auth")
    assert result.code == 0
    assert cli("server", "init", tmp_path / "relay", "--authority", tmp_path / "auth" / "authority.pub").code == 0
    for host in ("0.0.0.0", "::", "192.0.2.10"):  # noqa: S104 - these are the addresses that must be refused
        refused = cli("serve", "--data", tmp_path / "relay", "--host", host, "--port", "0")
        assert refused.code == 3, str(refused)
        assert "without TLS" in refused.err
    cert, key = self_signed(tmp_path)
    key.chmod(0o644)
    loose = cli("serve", "--data", tmp_path / "relay", "--port", "0", "--tls-cert", cert, "--tls-key", key)
    assert loose.code == 3
    assert "too open" in loose.err


@pytest.mark.threat("T10")
def test_clients_refuse_plain_http_off_loopback(world, cli, batch: Path) -> None:
    for url in ("http://relay.example.org", "http://10.0.0.1:8000", "ftp://127.0.0.1"):
        result = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", url, "--to", "cnam")
        assert result.code in (2, 3), str(result)
        assert "plain HTTP" in result.err or "invalid relay URL" in result.err


# ------------------------------------------------------------------ the HTTP edge


def signed_headers(
    world, method: str, url: str, body: bytes | None = None, name: str = "lab-paris-01", **extra: str
) -> dict[str, str]:
    headers = dict(extra)
    sign_request(
        method,
        url,
        headers,
        body,
        keyid=name,
        key=world.parties[name].signing_key,
        now=datetime.now(UTC),
        extra_components=tuple(k.lower() for k in extra),
    )
    return headers


def test_public_endpoints_and_problem_documents(world) -> None:
    health = httpx.get(f"{world.url}/healthz")
    assert health.status_code == 200
    assert health.headers["cache-control"] == "no-store"
    assert health.headers["x-content-type-options"] == "nosniff"
    spec = httpx.get(f"{world.url}/openapi.json").json()
    for path in (
        "/v1/directory",
        "/v1/transfers",
        "/v1/uploads/{transfer_id}",
        "/v1/transfers/{transfer_id}/payload",
        "/v1/transfers/{transfer_id}/receipt",
    ):
        assert path in spec["paths"], path
    assert httpx.get(f"{world.url}/docs").status_code == 404  # no CDN-loading Swagger UI
    missing = httpx.get(f"{world.url}/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


@pytest.mark.threat("T8")
def test_unsigned_requests_are_refused_everywhere(world) -> None:
    tid = new_id()
    for method, path in (
        ("GET", "/v1/directory"),
        ("GET", "/v1/transfers"),
        ("POST", "/v1/transfers"),
        ("GET", f"/v1/transfers/{tid}"),
        ("GET", f"/v1/transfers/{tid}/payload"),
        ("POST", f"/v1/transfers/{tid}/receipt"),
        ("HEAD", f"/v1/uploads/{tid}"),
        ("PATCH", f"/v1/uploads/{tid}"),
        ("DELETE", f"/v1/uploads/{tid}"),
        ("POST", "/v1/directory/entries"),
        ("POST", "/v1/directory/revocations"),
    ):
        response = httpx.request(method, world.url + path, content=b"{}" if method in ("POST", "PATCH") else None)
        assert response.status_code == 401, (method, path, response.status_code)
        if method != "HEAD":
            assert response.json()["code"] == "authentication-failed"


def test_malformed_requests_get_4xx_not_5xx(world) -> None:
    url = f"{world.url}/v1/transfers"
    big = b"{" + b" " * 70_000 + b"}"
    assert httpx.post(url, content=big, headers=signed_headers(world, "POST", url, big)).status_code == 413
    not_json = b"\xff\xfe"
    response = httpx.post(url, content=not_json, headers=signed_headers(world, "POST", url, not_json))
    assert response.status_code == 400
    tampered = signed_headers(world, "POST", url, b'{"a":1}')
    response = httpx.post(url, content=b'{"a":2}', headers=tampered)
    assert response.status_code == 422  # the body does not match its signed Content-Digest
    bad_id = f"{world.url}/v1/transfers/..%2F..%2Fetc/payload"
    assert httpx.get(bad_id, headers=signed_headers(world, "GET", bad_id)).status_code in (400, 404)
    tid = new_id()
    patch = f"{world.url}/v1/uploads/{tid}"
    chunk = b"x" * 10
    headers = signed_headers(
        world, "PATCH", patch, chunk, **{"Content-Type": "text/plain", "Upload-Offset": "0", "Tus-Resumable": "1.0.0"}
    )
    assert httpx.patch(patch, content=chunk, headers=headers).status_code == 415
    headers = signed_headers(
        world,
        "PATCH",
        patch,
        chunk,
        **{"Content-Type": "application/offset+octet-stream", "Upload-Offset": "-1", "Tus-Resumable": "1.0.0"},
    )
    assert httpx.patch(patch, content=chunk, headers=headers).status_code == 400
    payload = f"{world.url}/v1/transfers/{tid}/payload"
    for rng in ("bytes=0-10", "items=1-", "bytes=-5"):
        response = httpx.get(payload, headers=signed_headers(world, "GET", payload, name="cnam", Range=rng))
        assert response.status_code == 400, rng
    with world.relay.log.open() as log:
        assert "Traceback" not in log.read()


@pytest.mark.threat("T7")
def test_upload_chunks_must_sign_their_digest(world) -> None:
    """A PATCH whose signature does not cover Content-Digest is refused: otherwise an on-path attacker could
    swap the body and its (unsigned) digest."""
    lab = world.parties["lab-paris-01"]
    tid = new_id()
    url = f"{world.url}/v1/uploads/{tid}"
    body = b"attacker bytes"
    headers = {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0", "Tus-Resumable": "1.0.0"}
    sign_request(
        "PATCH",
        url,
        headers,
        None,
        keyid=lab.name,
        key=lab.signing_key,
        now=datetime.now(UTC),
        extra_components=("content-type", "upload-offset"),
    )
    headers["Content-Digest"] = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    response = httpx.patch(url, content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "authentication-failed"


def test_json_bodies_must_sign_their_content_type(world) -> None:
    lab = world.parties["lab-paris-01"]
    url = f"{world.url}/v1/transfers"
    headers = {"Content-Type": "application/json"}
    sign_request("POST", url, headers, b"{}", keyid=lab.name, key=lab.signing_key, now=datetime.now(UTC))
    assert httpx.post(url, content=b"{}", headers=headers).status_code == 401


@pytest.mark.threat("T6")
def test_enrolment_route_judges_nothing_before_authentication(world) -> None:
    url = f"{world.url}/v1/directory/entries"
    for junk in (b"not json", b"[" * 5000 + b"]" * 5000, b'{"payload": {"type": "party-entry"}}'):
        response = httpx.post(url, content=junk, headers={"Content-Type": "application/json"})
        assert response.status_code == 401, junk[:20]
    # Signed by an enrolled party, absurdly nested JSON is a plain 400, not a crash.
    deep = b"[" * 5000 + b"]" * 5000
    response = httpx.post(
        url, content=deep, headers=signed_headers(world, "POST", url, deep, **{"Content-Type": "application/json"})
    )
    assert response.status_code == 400
    refused = world.db("SELECT count(*) FROM audit_events WHERE event = 'auth:failure'")[0][0]
    assert refused >= 3  # every unauthenticated attempt is in the audit trail
    assert "Traceback" not in world.relay.log_text()


@pytest.mark.threat("T6")
def test_refusals_do_not_reveal_who_exists_or_is_revoked(world, cli) -> None:
    """Without the key, an unknown party, a known one and a revoked one are refused in the same words."""
    assert cli("authority", "revoke", "ars-11", "--authority", world.auth_dir, "--server", world.url).code == 0
    url = f"{world.url}/v1/directory"
    answers = set()
    for keyid in ("nobody-at-all", "cnam", "ars-11"):
        headers: dict[str, str] = {}
        sign_request("GET", url, headers, None, keyid=keyid, key=SigningKey.generate(), now=datetime.now(UTC))
        response = httpx.get(url, headers=headers)
        answers.add((response.status_code, response.json()["code"], response.json()["detail"]))
    assert len(answers) == 1, answers
    # With its own key, a revoked party does learn why.
    headers = {}
    sign_request(
        "GET", url, headers, None, keyid="ars-11", key=world.parties["ars-11"].signing_key, now=datetime.now(UTC)
    )
    response = httpx.get(url, headers=headers)
    assert response.status_code == 403
    assert response.json()["code"] == "revoked"
