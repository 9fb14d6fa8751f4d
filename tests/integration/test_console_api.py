"""The console's passkeys, sessions and commands on a real relay process, answered by a software passkey
(tests/support/passkeys.py), including the answers an attacker would give. Every refusal here is a security decision
that must fail closed (docs/threat-model.md, T22)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from labrelay.client.api import RelayClient
from labrelay.clock import SystemClock
from labrelay.crypto import httpsig
from labrelay.domain.parties import Role
from labrelay.errors import AuthenticationFailed, PermissionDenied, RelayFrozen, UsageError
from tests.support.alerting import webhook
from tests.support.browser import localhost
from tests.support.passkeys import SoftPasskey
from tests.support.processes import RelayProcess
from tests.support.world import World, make_world


class Console:
    """A browser's view of the console API: same origin, a cookie jar, JSON; ``source``: the client's address
    (another loopback address than 127.0.0.1, for the relay to see several clients)."""

    def __init__(self, world: World, source: str | None = None) -> None:
        self.world = world
        self.base = localhost(world.url)
        transport = httpx.HTTPTransport(local_address=source) if source else None
        self.http = httpx.Client(base_url=self.base, headers={"Origin": self.base}, timeout=30, transport=transport)

    def close(self) -> None:
        self.http.close()

    def signed(self, party: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A /v1 request signed with the party's own key (as the enrolment page signs it)."""
        p = self.world.parties[party]
        with RelayClient(self.base, p.name, p.signing_key, SystemClock(), retries=0) as client:
            response = client._request(
                "POST",
                path,
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
                extra=("content-type",),
            )
            return dict(response.json())

    def enrol(self, party: str, key: SoftPasskey) -> dict[str, Any]:
        options = self.signed(party, "/v1/console/passkeys/options", {})
        return self.signed(party, "/v1/console/passkeys", {"credential": key.create(options)})

    def post(self, path: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=body if body is not None else {}, **kw)

    def signin(self, key: SoftPasskey, **answer: Any) -> httpx.Response:
        options = self.post("/console/api/signin/options").json()
        return self.post("/console/api/signin", {"credential": key.get(options, **answer)})

    def command(self, key: SoftPasskey, action: str, target: str | None = None) -> httpx.Response:
        options = self.post("/console/api/commands/options", {"action": action, "target": target, "reason": "test"})
        assert options.status_code == 200, options.text
        return self.post("/console/api/commands", {"credential": key.get(options.json())})


@pytest.fixture
def console_world(tmp_path: Path, relay_factory) -> World:
    world = make_world(tmp_path / "w", relay_factory)
    world.add("ops-01", Role.ADMIN)
    world.add("dpo-aphp", Role.DPO)
    world.add("audit-01", Role.AUDITOR)
    return world


@pytest.fixture
def console(console_world: World):
    c = Console(console_world)
    yield c
    c.close()


def passkey(console: Console) -> SoftPasskey:
    return SoftPasskey(origin=console.base)


@pytest.mark.scaled("console sessions and passkey challenges across replicas")
def test_admin_enrols_signs_in_freezes_and_unfreezes(world: World, relay_factory) -> None:
    """The whole path, on both deployments (at scale, the balancer sends each request to another replica)."""
    world.add("ops-01", Role.ADMIN)
    console = Console(world)
    try:
        key = SoftPasskey(origin=console.base)
        enrolled = console.enrol("ops-01", key)
        assert enrolled["party"] == "ops-01"
        assert console.signin(key).status_code == 200
        me = console.http.get("/console/api/me").json()
        assert me == {"party": "ops-01", "role": "admin", "may_command": True}
        assert console.http.get("/console/api/overview").json()["frozen"] is False

        frozen = console.command(key, "freeze")
        assert frozen.status_code == 200, frozen.text
        assert frozen.json()["changed"] is True
        assert console.http.get("/console/api/overview").json()["frozen"] is True
        with pytest.raises(RelayFrozen), world.client("cnam") as cnam:
            cnam.transfers("inbox")
        assert console.command(key, "unfreeze").status_code == 200
        with world.client("cnam") as cnam:
            assert cnam.transfers("inbox") == []
        trail = world.db("SELECT event, actor FROM audit_events WHERE event LIKE 'console:%' OR event LIKE 'relay:%'")
        assert ("console:passkey", "ops-01") in trail
        assert ("console:signin", "ops-01") in trail
        assert ("relay:freeze", None) not in trail  # every command names who approved it
        assert ("relay:freeze", "ops-01") in trail
        assert ("relay:unfreeze", "ops-01") in trail
        kept = world.db("SELECT signer, action, envelope FROM admin_commands ORDER BY at")
        assert [(s, a) for s, a, _ in kept] == [("ops-01", "freeze"), ("ops-01", "unfreeze")]
        assert "assertion" in json.loads(kept[0][2])  # the passkey's signature over the command is kept
    finally:
        console.close()


@pytest.mark.threat("T22")
def test_everything_needs_a_session(console: Console) -> None:
    paths = ("/console/api/me", "/console/api/overview", "/console/api/audit", "/console/api/retention")
    for path in (*paths, "/console/api/parties"):
        response = console.http.get(path)
        assert response.status_code == 401, path
        assert response.headers["content-type"] == "application/problem+json"
    console.http.cookies.set("labrelay_console", "forged-token-" + "x" * 30)
    assert console.http.get("/console/api/overview").status_code == 401
    assert console.post("/console/api/commands/options", {"action": "freeze"}).status_code == 401


@pytest.mark.threat("T22")
def test_only_console_roles_may_enrol(console: Console) -> None:
    key = passkey(console)
    for party in ("lab-paris-01", "cnam"):
        with pytest.raises(PermissionDenied):
            console.enrol(party, key)
    assert console.world.db("SELECT count(*) FROM passkeys") == [(0,)]


@pytest.mark.threat("T22")
def test_a_registration_answer_for_another_origin_or_challenge_is_refused(console: Console) -> None:
    key = passkey(console)
    options = console.signed("ops-01", "/v1/console/passkeys/options", {})
    with pytest.raises(AuthenticationFailed):
        console.signed(
            "ops-01", "/v1/console/passkeys", {"credential": key.create(options, origin="https://evil.example")}
        )
    # The challenge was used by that failed attempt: the same answer, fixed, is refused too.
    with pytest.raises(AuthenticationFailed):
        console.signed("ops-01", "/v1/console/passkeys", {"credential": key.create(options)})
    # A challenge issued to one party cannot register a passkey for another.
    options = console.signed("dpo-aphp", "/v1/console/passkeys/options", {})
    with pytest.raises(AuthenticationFailed):
        console.signed("ops-01", "/v1/console/passkeys", {"credential": key.create(options)})
    assert console.world.db("SELECT count(*) FROM passkeys") == [(0,)]


@pytest.mark.threat("T22")
def test_sign_in_refuses_unknown_keys_wrong_origin_and_replays(console: Console) -> None:
    key = passkey(console)
    console.enrol("ops-01", key)
    stranger = passkey(console)
    assert console.signin(stranger).status_code == 401
    assert console.signin(key, origin="https://evil.example").status_code == 401
    assert console.signin(key, rp_id="evil.example").status_code == 401
    options = console.post("/console/api/signin/options").json()
    answer = key.get(options)
    assert console.post("/console/api/signin", {"credential": answer}).status_code == 200
    console.http.cookies.clear()
    assert console.post("/console/api/signin", {"credential": answer}).status_code == 401  # replayed
    assert console.http.get("/console/api/overview").status_code == 401
    refusals = console.world.db("SELECT count(*) FROM audit_events WHERE event = 'console:refuse'")
    assert refusals[0][0] >= 4


@pytest.mark.threat("T22")
def test_cross_origin_posts_are_refused(console: Console) -> None:
    key = passkey(console)
    console.enrol("ops-01", key)
    options = console.post("/console/api/signin/options").json()
    evil = {"Origin": "https://evil.example"}
    response = console.post("/console/api/signin", {"credential": key.get(options)}, headers=evil)
    assert response.status_code == 403
    assert console.signin(key).status_code == 200
    refused = console.post("/console/api/commands/options", {"action": "freeze"}, headers=evil)
    assert refused.status_code == 403
    no_origin = httpx.post(console.base + "/console/api/signin/options", json={}, timeout=30)
    assert no_origin.status_code == 403


@pytest.mark.threat("T22")
def test_the_console_answers_on_localhost_only_without_public_url(console: Console) -> None:
    ip = console.world.url  # http://127.0.0.1:PORT: an address, not a WebAuthn relying party
    response = httpx.post(ip + "/console/api/signin/options", json={}, headers={"Origin": ip}, timeout=30)
    assert response.status_code == 403
    assert "public_url" in response.json()["detail"] + response.json().get("hint", "")


@pytest.mark.threat("T22")
def test_read_only_roles_cannot_command(console: Console) -> None:
    for party in ("dpo-aphp", "audit-01"):
        key = passkey(console)
        console.enrol(party, key)
        console.http.cookies.clear()
        assert console.signin(key).status_code == 200
        assert console.http.get("/console/api/me").json()["may_command"] is False
        assert console.http.get("/console/api/overview").status_code == 200
        refused = console.post("/console/api/commands/options", {"action": "freeze"})
        assert refused.status_code == 403
    assert console.world.db("SELECT count(*) FROM admin_commands") == [(0,)]


@pytest.mark.threat("T22")
def test_a_command_is_approved_once_by_the_signed_in_admins_own_passkey(console: Console) -> None:
    key = passkey(console)
    console.enrol("ops-01", key)
    console.signin(key)
    options = console.post("/console/api/commands/options", {"action": "freeze", "reason": "drill"}).json()
    other = passkey(console)  # a passkey the relay does not know signs the right challenge
    assert console.post("/console/api/commands", {"credential": other.get(options)}).status_code == 401
    options = console.post("/console/api/commands/options", {"action": "freeze", "reason": "drill"}).json()
    answer = key.get(options)
    assert console.post("/console/api/commands", {"credential": answer}).status_code == 200
    assert console.post("/console/api/commands", {"credential": answer}).status_code == 401  # replayed
    assert console.world.db("SELECT action FROM admin_commands") == [("freeze",)]
    # Unknown actions and actions the console does not offer are refused before any passkey is asked.
    for action in ("explode", "quarantine", "lock"):
        assert console.post("/console/api/commands/options", {"action": action, "target": "cnam"}).status_code == 400


@pytest.mark.threat("T22")
def test_revoking_a_party_ends_its_sessions_and_its_passkey_sign_ins(console: Console) -> None:
    admin, dpo = passkey(console), passkey(console)
    console.enrol("ops-01", admin)
    console.enrol("dpo-aphp", dpo)
    dpo_console = Console(console.world)
    try:
        assert dpo_console.signin(dpo).status_code == 200
        assert dpo_console.http.get("/console/api/overview").status_code == 200
        console.signin(admin)
        revoked = console.command(admin, "revoke", "dpo-aphp")
        assert revoked.status_code == 200, revoked.text
        assert dpo_console.http.get("/console/api/overview").status_code in (401, 403)
        dpo_console.http.cookies.clear()
        assert dpo_console.signin(dpo).status_code == 403
        overview = console.http.get("/console/api/overview").json()
        assert {"dpo-aphp": "revoke"}.items() <= {lock["name"]: lock["kind"] for lock in overview["locks"]}.items()
    finally:
        dpo_console.close()


@pytest.mark.threat("T22")
def test_an_admin_cannot_approve_with_a_session_after_its_own_revocation(console: Console) -> None:
    a, b = passkey(console), passkey(console)
    console.world.add("ops-02", Role.ADMIN)
    console.enrol("ops-01", a)
    console.enrol("ops-02", b)
    other = Console(console.world)
    try:
        other.signin(b)
        console.signin(a)
        options = other.post("/console/api/commands/options", {"action": "freeze"}).json()
        assert console.command(a, "revoke", "ops-02").status_code == 200
        assert other.post("/console/api/commands", {"credential": b.get(options)}).status_code in (401, 403)
        assert console.world.db("SELECT action FROM admin_commands") == [("revoke",)]
    finally:
        other.close()


GARBAGE: list[dict[str, Any]] = [  # each replaces parts of a genuine answer
    {"rawId": "x"},
    {"type": "password", "response": {}},
    {"rawId": "A" * 43, "response": "nope"},
    {"rawId": "A" * 43, "response": {"clientDataJSON": "!!!"}},
    {"rawId": "A" * 43, "response": {"clientDataJSON": "e30"}},  # {}
    {"rawId": "A" * 43, "response": {"clientDataJSON": "W10", "authenticatorData": 5}},  # []
    {"rawId": ["A"], "response": {"clientDataJSON": None}},
    {"rawId": "A" * 5000, "response": {"clientDataJSON": "A" * 5000}},
    {"response": {"clientDataJSON": base64.urlsafe_b64encode(b"[" * 3000).decode().rstrip("=")}},  # deep nesting
]


@pytest.mark.threat("T22")
def test_malformed_passkey_answers_are_refused_never_a_server_error(console: Console) -> None:
    key = passkey(console)
    console.enrol("ops-01", key)
    for credential in GARBAGE:
        options = console.post("/console/api/signin/options").json()
        answer = key.get(options)
        forged = {**answer, **credential}
        response = console.post("/console/api/signin", {"credential": forged})
        assert response.status_code in (400, 401), (credential, response.status_code, response.text)
        with pytest.raises((AuthenticationFailed, UsageError)):
            console.signed("ops-01", "/v1/console/passkeys", {"credential": forged})
    for body in (b"", b"[]", b'{"credential": 5}', b"{" * 5000):
        response = console.http.post("/console/api/signin", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (body[:10], response.status_code)
    assert console.world.db("SELECT count(*) FROM audit_events WHERE event = 'request:error'") == [(0,)]


@pytest.mark.threat("T22")
def test_a_lost_passkey_is_removed_by_the_operator_and_signs_in_no_more(console: Console, cli) -> None:
    key = passkey(console)
    console.enrol("ops-01", key)
    assert console.signin(key).status_code == 200
    data = console.world.relay.data
    listed = cli("admin", "passkeys", "ops-01", "--data", data)
    assert listed.code == 0, str(listed)
    assert "1 passkey(s) bound" in listed.out
    removed = cli("admin", "passkeys", "ops-01", "--data", data, "--remove")
    assert removed.code == 0, str(removed)
    assert "1 passkey(s) removed" in removed.out
    assert console.http.get("/console/api/overview").status_code == 401  # its session ended with it
    assert console.signin(key).status_code == 401
    assert console.world.db("SELECT event, details FROM audit_events WHERE event = 'console:passkey-remove'")


@pytest.mark.threat("T22")
def test_registration_answers_that_do_not_verify_are_refused(console: Console) -> None:
    """Answers to the right challenge that fail the ceremony's own checks: a broken attestation, no user
    verification, another relying party."""
    key = passkey(console)
    options = console.signed("ops-01", "/v1/console/passkeys/options", {})
    broken = key.create(options)
    broken["response"]["attestationObject"] = broken["response"]["attestationObject"][:-8]
    with pytest.raises(AuthenticationFailed):
        console.signed("ops-01", "/v1/console/passkeys", {"credential": broken})
    unverified = SoftPasskey(origin=console.base, verified=False)
    options = console.signed("ops-01", "/v1/console/passkeys/options", {})
    with pytest.raises(AuthenticationFailed):
        console.signed("ops-01", "/v1/console/passkeys", {"credential": unverified.create(options)})
    options = console.signed("ops-01", "/v1/console/passkeys/options", {})
    options["rp"]["id"] = "evil.example"
    with pytest.raises(AuthenticationFailed):
        console.signed("ops-01", "/v1/console/passkeys", {"credential": key.create(options)})
    assert console.world.db("SELECT count(*) FROM passkeys") == [(0,)]
    refused = console.world.db("SELECT count(*) FROM audit_events WHERE event = 'console:refuse'")
    assert refused[0][0] >= 3


@pytest.mark.threat("T22")
def test_a_sign_in_without_user_verification_or_with_a_command_challenge_is_refused(console: Console) -> None:
    key = passkey(console)
    console.enrol("ops-01", key)
    key.verified = False
    assert console.signin(key).status_code == 401
    key.verified = True
    assert console.signin(key).status_code == 200
    command = console.post("/console/api/commands/options", {"action": "freeze"}).json()
    console.http.cookies.clear()
    assert console.post("/console/api/signin", {"credential": key.get(command)}).status_code == 401
    assert console.world.db("SELECT count(*) FROM admin_commands") == [(0,)]


@pytest.mark.threat("T22")
def test_cross_site_reads_are_refused(console: Console) -> None:
    key = passkey(console)
    console.enrol("ops-01", key)
    console.signin(key)
    assert console.http.get("/console/api/overview").status_code == 200
    for site in ("cross-site", "same-site"):
        response = console.http.get("/console/api/audit", headers={"Sec-Fetch-Site": site})
        assert response.status_code == 403, site


@pytest.mark.threat("T22")
def test_behind_https_the_session_cookie_is_host_only_and_secure(tmp_path: Path, relay_factory) -> None:
    """With public_url on https (TLS ends at a proxy), passkeys are bound to that origin and the session cookie is
    __Host-: Secure, host-only, Path=/, so no sibling host can plant or read it. An answer for the plain-http
    origin the relay is actually reached on is refused."""
    world = make_world(tmp_path / "w", relay_factory)
    world.add("ops-01", Role.ADMIN)
    port = world.url.rsplit(":", 1)[1]
    public = f"https://localhost:{port}"
    assert isinstance(world.relay, RelayProcess)
    world.relay.stop()  # restarted on the same port, now told the address clients use
    config = world.relay.data / "relay.toml"
    config.write_text(config.read_text().replace('public_url = ""', f'public_url = "{public}"'))
    relay = relay_factory(world.relay.data, "--port", port)
    http = httpx.Client(base_url=localhost(relay.url), headers={"Origin": public}, timeout=30)
    try:

        def signed(path: str, body: dict[str, Any]) -> dict[str, Any]:
            content = json.dumps(body).encode()
            headers = {"Content-Type": "application/json"}
            party = world.parties["ops-01"]
            httpsig.sign_request(
                "POST", public + path, headers, content, keyid="ops-01", key=party.signing_key,
                now=datetime.now(UTC), extra_components=("content-type",),
            )  # fmt: skip
            response = http.post(path, content=content, headers=headers)
            assert response.status_code == 200, response.text
            return dict(response.json())

        key = SoftPasskey(origin=public)
        options = signed("/v1/console/passkeys/options", {})
        assert options["rp"]["id"] == "localhost"
        signed("/v1/console/passkeys", {"credential": key.create(options)})

        def start() -> tuple[dict[str, Any], dict[str, str]]:
            """Sign-in options, and the sealed challenge's cookie as a browser on https sends it back (Secure: this
            client, on plain http to the proxy's back end, would not)."""
            response = http.post("/console/api/signin/options", json={})
            [cookie] = response.headers.get_list("set-cookie")
            assert cookie.startswith("__Host-labrelay_signin=")
            attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
            assert {"secure", "httponly", "path=/", "samesite=strict", "max-age=300"} <= attributes
            assert not any(a.startswith("domain=") for a in attributes)
            return response.json(), {"Cookie": cookie.split(";")[0]}

        plain = SoftPasskey(origin=localhost(relay.url), key=key.key, credential_id=key.credential_id)
        options, sealed = start()
        assert (
            http.post("/console/api/signin", json={"credential": plain.get(options)}, headers=sealed).status_code == 401
        )
        options, sealed = start()
        response = http.post("/console/api/signin", json={"credential": key.get(options)}, headers=sealed)
        assert response.status_code == 200, response.text
        [cookie] = [c for c in response.headers.get_list("set-cookie") if c.startswith("__Host-labrelay_console=")]
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly", "path=/", "samesite=strict"} <= attributes
        assert not any(a.startswith("domain=") for a in attributes)
    finally:
        http.close()


# ------------------------------------------------------------------ T32: sign-in costs the relay nothing to hold


def sign_in_rows(world: World) -> dict[str, int]:
    """What the relay holds or records for console sign-ins: pending or used challenges, console and limit events."""
    [(challenges,)] = world.db("SELECT count(*) FROM console_challenges")
    [(events,)] = world.db("SELECT count(*) FROM audit_events WHERE event LIKE 'console:%' OR event = 'limit:hit'")
    return {"challenges": challenges, "events": events}


@pytest.mark.threat("T32")
def test_an_anonymous_sign_in_flood_leaves_the_relay_nothing_and_an_admin_signs_in_at_once(console: Console) -> None:
    """300 sign-ins started from 30 addresses and never answered (the old relay kept each one, up to 10,000, then
    answered 503 to everyone): the relay holds and records nothing, and an administrator signs in at once."""
    key = passkey(console)
    console.enrol("ops-01", key)
    before = sign_in_rows(console.world)
    for n in range(30):
        client = Console(console.world, source=f"127.0.0.{n + 2}")
        try:
            for _ in range(10):
                response = client.post("/console/api/signin/options")
                assert response.status_code == 200, response.text
        finally:
            client.close()
    assert sign_in_rows(console.world) == before
    started = time.monotonic()
    assert console.signin(key).status_code == 200
    assert time.monotonic() - started < 2
    assert console.http.get("/console/api/me").json()["party"] == "ops-01"
    assert sign_in_rows(console.world)["challenges"] == 1  # the one that signed in, kept until it expires


@pytest.mark.threat("T32")
def test_one_address_over_its_sign_in_limit_gets_429_and_the_operator_one_alert(
    tmp_path: Path, relay_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABRELAY_CONSOLE_SIGNIN_LIMIT", "5")  # the relay's environment: 5 a minute per address
    with webhook() as (hook, posts):
        world = make_world(tmp_path / "w", relay_factory, "--alert-webhook", hook)
        world.add("ops-01", Role.ADMIN)
        flood, admin = Console(world), Console(world, source="127.0.0.2")
        try:
            key = SoftPasskey(origin=admin.base)
            admin.enrol("ops-01", key)
            statuses = [flood.post("/console/api/signin/options").status_code for _ in range(5)]
            assert statuses == [200] * 5
            refused = [flood.post("/console/api/signin/options") for _ in range(30)]
            refused.append(flood.post("/console/api/signin", {"credential": {}}))
            for response in refused:
                assert response.status_code == 429
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["code"] == "rate-limited"
                assert 1 <= int(response.headers["retry-after"]) <= 12
            # Another address is not held back by this one.
            assert admin.signin(key).status_code == 200
            found = posts.wait_for(lambda a: a["rule"] == "limits", timeout=10)
            assert found is not None
            assert found[1]["subject"] == "console-signin:127.0.0.1"
            time.sleep(1)  # whatever else would come, from the same flood
            assert [a["subject"] for _, a in posts.items if a["rule"] == "limits"] == ["console-signin:127.0.0.1"]
            hits = world.db("SELECT details FROM audit_events WHERE event = 'limit:hit'")
            assert len(hits) == 1  # one record for 31 refusals: the flood does not flood the audit trail
            assert json.loads(hits[0][0])["remote"] == "127.0.0.1"
        finally:
            flood.close()
            admin.close()


@pytest.mark.threat("T32")
def test_a_sign_in_answer_counts_only_with_its_own_cookie_and_only_once(console: Console) -> None:
    """The challenge is bound to the browser that asked for it: an answer to it is refused with another browser's
    cookie, with none, with an altered one; and with its own, once (a passkey without a signature counter, so
    that only the relay's record of a used challenge stops the replay)."""
    key = passkey(console)
    key.counts = False
    console.enrol("ops-01", key)
    other = Console(console.world)
    try:
        start = console.post("/console/api/signin/options")
        answer = key.get(start.json())
        other.post("/console/api/signin/options")  # another browser's sign-in, its own cookie
        assert other.post("/console/api/signin", {"credential": answer}).status_code == 401
        other.http.cookies.clear()
        assert other.post("/console/api/signin", {"credential": answer}).status_code == 401
        mine = start.cookies["labrelay_signin"]
        [cookie] = start.headers.get_list("set-cookie")
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path=/", "samesite=strict", "max-age=300"} <= attributes
        version, expires, challenge, mac = mine.split(".")
        for forged in (
            f"{version}.{int(expires) + 600}.{challenge}.{mac}",
            f"{version}.{expires}.{challenge}.{mac[::-1]}",
        ):
            other.http.cookies.set("labrelay_signin", forged)
            assert other.post("/console/api/signin", {"credential": answer}).status_code == 401
        assert console.post("/console/api/signin", {"credential": answer}).status_code == 200
        other.http.cookies.set("labrelay_signin", mine)  # the same answer and cookie, captured and replayed
        replayed = other.post("/console/api/signin", {"credential": answer})
        assert replayed.status_code == 401
        assert replayed.json()["code"] == "replay"
        assert other.http.get("/console/api/me").status_code == 401
        refusals = console.world.db(
            "SELECT reason FROM audit_events WHERE event = 'console:refuse' AND details LIKE '%signin%'"
        )
        assert [r for (r,) in refusals].count("replay") == 1
        assert len(refusals) == 5
    finally:
        other.close()


def test_the_overview_counts_each_batch_from_the_relays_metadata(console: Console, cli, batch: Path) -> None:
    """Per batch, n of m delivered: the relay reads the batch id of each signed manifest it holds (never a payload)."""
    world = console.world
    lab = world.party_dir("lab-paris-01")
    sent = cli("send", batch, "--to", "cnam", "--to", "ars-11", "--dpo", "dpo", "--as", lab, "--server", world.url)
    assert sent.code == 0, str(sent)
    got = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", world.root / "in")
    assert got.code == 0, str(got)
    key = passkey(console)
    console.enrol("audit-01", key)
    assert console.signin(key).status_code == 200
    [tally] = console.http.get("/console/api/overview").json()["batches"]
    [batch_id] = {row[0] for row in world.db("SELECT batch_id FROM transfers")}
    assert tally == {
        "batch_id": batch_id,
        "sender": "lab-paris-01",
        "created": tally["created"],
        "total": 2,
        "delivered": 1,
        "waiting": 1,
        "refused": 0,
        "expired": 0,
        "held": 0,
        "failed": 0,
    }
