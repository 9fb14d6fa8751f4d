"""Fuzzing the relay's HTTP API (schemathesis) against the OpenAPI document a real relay serves at /openapi.json.

Every operation of the document is called with generated requests, valid and invalid (hypothesis, through
schemathesis' strategies), twice:

- **signed**, as the real client signs (RFC 9421, Ed25519, ``labrelay.crypto.httpsig.sign_request``): each
  request is signed as the party the operation is for, over the exact method, URL and body that go on the wire.
  Whatever it carries, the relay must not fail (no 5xx) and must answer as its document says: a documented
  status code, the documented content type, a body and headers that match the documented schema;
- **unsigned**: every /v1 operation refuses it with a 4xx (and no audit checkpoint), whatever it carries.

Generated path parameters are mixed with ones that exist (a transfer waiting for cnam, one whose upload has not
started, the policy in force, cnam's age key), so that requests get past "no such transfer" into the handlers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.schemas import APIOperation, BaseSchema

from labrelay.client.send import seal as seal_for
from labrelay.client.send import send_file, verified_recipients
from labrelay.clock import SystemClock
from labrelay.crypto.envelopes import envelope_payload
from labrelay.crypto.httpsig import sign_request
from labrelay.crypto.keys import SigningKey
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.transfers import Manifest
from tests.support.world import RelayServer, World, make_world, run_cli

# Upload chunks are plain bytes: schemathesis sends them as it sends application/octet-stream.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

# Deterministic (derandomize, no example database) and bounded: at most 40 signed requests per operation and 25
# unsigned ones (they all stop at authentication), about a thousand for the file. No deadline and no slowness
# health check: a relay process on a shared machine is not a timing benchmark. schemathesis' invalid-data
# strategies filter a lot and make large documents by design.
SIGNED = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
UNSIGNED = settings(SIGNED, max_examples=25)

LAB, RECIPIENT = "lab-paris-01", "cnam"
# Who signs each operation: the party it is meant for, so that the request is judged on its content and not
# refused for the caller's role. Recipient operations as cnam, the authority's own as the authority (requests
# it signs still carry generated bodies, which no key of ours ever signed: nothing is registered), the rest
# as the lab (which sends, uploads and reads its own transfers).
RECIPIENT_OPERATIONS = {
    "GET /v1/transfers",
    "GET /v1/transfers/{transfer_id}/payload",
    "POST /v1/transfers/{transfer_id}/receipt",
    "GET /v1/keys/{age_recipient}/horizon",
}
AUTHORITY_OPERATIONS = {
    "POST /v1/directory/revocations",
    "POST /v1/policies",
    "POST /v1/policies/withdrawals",
    "GET /v1/audit/export",
    "POST /v1/admin/commands",
    "GET /v1/admin/status",
}


def problem_states_the_response_status(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> bool | None:
    """Our own check: an error's problem document gives the status of the response that carries it (RFC 9457)."""
    if response.status_code < 400 or not response.content:  # a HEAD has no body
        return None
    assert response.json()["status"] == response.status_code, response.json()
    return True


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
    problem_states_the_response_status,
]
CHECKPOINT_HEADER = "labrelay-checkpoint"  # schemathesis gives header names in lower case


class SignedAs(requests.auth.AuthBase):
    """Signs the request as ``requests`` is about to send it: method, final URL (query included) and body bytes,
    the way ``RelayClient`` signs (a Content-Digest for every body, even empty, and the protocol headers)."""

    def __init__(self, keyid: str, key: SigningKey) -> None:
        self.keyid = keyid
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        method = (request.method or "GET").upper()
        body = request.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        assert body is None or isinstance(body, bytes), type(body)  # never a stream: bodies are generated whole
        if body is not None:
            request.body = body
            request.headers["Content-Length"] = str(len(body))
        headers = dict(request.headers)
        sign_request(
            method,
            request.url or "",
            headers,
            body,
            keyid=self.keyid,
            key=self.key,
            now=datetime.now(UTC),
            extra_components=("content-type", "upload-offset", "range"),
        )
        request.headers.update(headers)
        return request


# ------------------------------------------------------------------ one relay for the whole module


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A relay with the usual parties (embedded configuration), one for the module: the tests below share it, as
    the conftest's ``relay_factory`` starts one per test. Fuzzing asks for hundreds of transfer ids that do not
    exist, which is what the `enumeration` detection rule is there to catch: by default the relay would lock the
    fuzzing party after 20 of them and answer 403 to everything after, so nothing past the lock would be tested.
    Alerts stay on (``detect_lock_on = "none"``); only the lock is off."""
    started: list[RelayServer] = []

    def relay_factory(data: Path, *extra: str) -> RelayServer:
        server = RelayServer(data, extra)
        server.start()
        started.append(server)
        return server

    try:
        yield make_world(tmp_path_factory.mktemp("fuzz"), relay_factory, settings={"detect_lock_on": '"none"'})
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def known(fuzz_world: World) -> dict[str, list[str]]:
    """Path parameter values that exist: a transfer waiting for cnam, one created but not uploaded, the policy in
    force and cnam's age key."""
    lab = fuzz_world.parties[LAB]
    letter = fuzz_world.root / "letter.txt"
    letter.write_text("synthetic letter, no health data\n" * 4)
    clock = SystemClock()
    with fuzz_world.client(LAB) as client:
        available = send_file(lab, client, letter, [RECIPIENT], timedelta(days=1), clock).sent[0].transfer_id
        recipients = verified_recipients(lab, client, [RECIPIENT], clock)
        (state,) = seal_for(lab, letter, recipients, timedelta(days=1), clock)
        envelope = json.loads(state.read_text())["manifest"]
        client.create_transfer(envelope)
        pending = Manifest.from_payload(envelope_payload(envelope)).transfer_id
    with fuzz_world.client(RECIPIENT) as client:
        version = str(client.policy()["payload"]["version"])
    return {
        "transfer_id": [available, pending],
        "version": [version],
        "age_recipient": [fuzz_world.parties[RECIPIENT].age_recipient],
    }


@pytest.fixture(scope="module")
def api(fuzz_world: World) -> BaseSchema:
    # An explicit configuration, so that a schemathesis.toml lying around changes nothing here. An invalid request
    # must be refused with one of the statuses the relay uses for that (docs/protocol.md, Errors), 412 included:
    # tus 1.0 answers it to a request without `Tus-Resumable`.
    refusals = ["400", "401", "403", "404", "409", "412", "413", "415", "422"]
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": refusals}}})
    return schemathesis.openapi.from_url(fuzz_world.url + "/openapi.json", config=config)


def operations(api: BaseSchema) -> list[APIOperation]:
    found = [result.ok() for result in api.get_all_operations()]
    assert len(found) >= 20, [op.label for op in found]  # the document lists the whole API
    return found


def signer(world: World, operation: APIOperation) -> SignedAs:
    if operation.label in AUTHORITY_OPERATIONS:
        return SignedAs(AUTHORITY_KEYID, world.authority.key)
    name = RECIPIENT if operation.label in RECIPIENT_OPERATIONS else LAB
    return SignedAs(name, world.parties[name].signing_key)


def cases(operation: APIOperation, known: dict[str, list[str]]) -> st.SearchStrategy[Case]:
    """Generated requests, valid and invalid; and as often, requests whose path names something that exists (or a
    well-formed transfer id that does not), with a chunk at offset 0 for uploads. Invalid ones of that second kind
    are made only where something besides the path can be made invalid."""
    generated = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    names = [parameter.name for parameter in operation.path_parameters if parameter.name in known]
    if not names:
        return generated
    paths = st.fixed_dictionaries(
        {
            name: st.one_of(st.sampled_from(known[name]), st.uuids(version=4).map(str))
            if name == "transfer_id"
            else st.sampled_from(known[name])
            for name in names
        }
    )
    headers: st.SearchStrategy[dict[str, str] | None] = st.none()
    if any(header.name == "Upload-Offset" for header in operation.headers):
        headers = st.sampled_from([None, {"Upload-Offset": "0"}])
    negatable = any(len(container) for container in (operation.query, operation.headers, operation.body))
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if negatable else [GenerationMode.POSITIVE]
    targeted = st.tuples(paths, headers, st.sampled_from(modes)).flatmap(
        lambda picked: operation.as_strategy(generation_mode=picked[2], path_parameters=picked[0], headers=picked[1])
    )
    return st.one_of(generated, targeted)


def fuzz(operation: APIOperation, known: dict[str, list[str]], url: str, auth: SignedAs | None) -> None:
    """Send generated requests (signed with ``auth``, or not at all), and check every answer against the document."""
    session = requests.Session()
    send: dict[str, Any] = {"auth": auth} if auth is not None else {}

    @(SIGNED if auth is not None else UNSIGNED)
    @given(case=cases(operation, known))
    def run(case: Case) -> None:
        response = case.call(base_url=url, session=session, **send)
        case.validate_response(response, checks=CHECKS, transport_kwargs={"base_url": url, **send})
        if not operation.path.startswith("/v1/"):
            return
        if auth is None:
            assert 400 <= response.status_code < 500, (operation.label, response.status_code)
            assert CHECKPOINT_HEADER not in response.headers  # nothing about the audit log for strangers
        elif response.status_code < 300:
            assert CHECKPOINT_HEADER in response.headers  # every answer to a proven signer carries the audit head

    try:
        run()
    finally:
        session.close()


def audit_head(world: World) -> int:
    return int(world.db("SELECT COALESCE(MAX(seq), 0) FROM audit_events")[0][0])


def assert_sound_after(world: World, audited_before: int) -> None:
    """After the fuzzing this test just did (hundreds of audited requests), the audit chain verifies and the relay
    logged no crash: checked by each fuzzing test itself, whatever ran before it and on whichever worker."""
    assert audit_head(world) > audited_before + 100, "the fuzzing reached the relay"
    result = run_cli("audit", "verify", "--data", world.relay.data)
    assert result.code == 0, str(result)
    log = world.relay.log_text()
    assert "Traceback" not in log
    assert "unexpected error" not in log


# ------------------------------------------------------------------ the tests


def test_signed_requests_get_documented_answers_and_no_5xx(
    api: BaseSchema, fuzz_world: World, known: dict[str, list[str]], subtests: pytest.Subtests
) -> None:
    audited_before = audit_head(fuzz_world)
    for operation in operations(api):
        auth = signer(fuzz_world, operation) if operation.path.startswith("/v1/") else None
        with subtests.test(operation=operation.label):
            fuzz(operation, known, fuzz_world.url, auth)
    assert_sound_after(fuzz_world, audited_before)


def test_unsigned_requests_are_refused_with_4xx(
    api: BaseSchema, fuzz_world: World, known: dict[str, list[str]], subtests: pytest.Subtests
) -> None:
    audited_before = audit_head(fuzz_world)
    for operation in operations(api):
        if not operation.path.startswith("/v1/"):
            continue  # /healthz and /openapi.json are public by design
        with subtests.test(operation=operation.label):
            fuzz(operation, known, fuzz_world.url, None)
    assert_sound_after(fuzz_world, audited_before)


def test_undocumented_methods_get_405_with_allow(
    api: BaseSchema, fuzz_world: World, known: dict[str, list[str]]
) -> None:
    """A method the document does not list for a path is refused with 405, an ``Allow`` header (RFC 9110) and a
    problem document that says 405, before authentication: it reveals nothing the document does not."""
    parameters = {"seq": "1", **{name: values[0] for name, values in known.items()}}
    for path, item in api.raw_schema["paths"].items():
        documented = {method.upper() for method in item}
        url = fuzz_world.url + path.format(**parameters)
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented):
            response = requests.request(method, url, timeout=30)
            assert response.status_code == 405, (method, path, response.status_code)
            allowed = {m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip()}
            assert allowed, (method, path)
            assert method not in allowed
            assert allowed <= documented | {"HEAD"}, (method, path, allowed)
            assert response.headers["Content-Type"] == "application/problem+json"
            assert response.json()["status"] == 405
