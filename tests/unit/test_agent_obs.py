"""What the agent shows of itself: no personal data in its log or on /health whatever an error's message says, and
/health for the loopback only (DNS rebinding)."""

from __future__ import annotations

import http.client
import io
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from labrelay.agent import policy
from labrelay.agent.events import EventLog
from labrelay.agent.health import HealthServer, Metrics, Status
from labrelay.agent.policy import error_fields
from labrelay.agent.recipient import RecipientWorker
from labrelay.agent.settings import RecipientSettings, Retry
from labrelay.agent.worker import Context
from labrelay.batch.pipeline import open_reader
from labrelay.client.fetch import FetchReport
from labrelay.clock import SystemClock
from labrelay.errors import LabrelayError, NotResults, PermissionDenied, Unavailable, UsageError

NIR = "1850575123456"  # a made-up NIR: what a CSV without a header row puts in "columns found"
LEAKY = NotResults(f"not a results file: columns found: DUPONT, Jean, {NIR}", hint=f"row {NIR}")


def recipient(tmp_path: Path, *, hook: tuple[str, ...] = (), stop: threading.Event | None = None) -> RecipientWorker:
    """A recipient worker on a party directory of its own, without a relay (its fetch is patched by the test)."""
    (tmp_path / "party").mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "inbox").mkdir(mode=0o700, exist_ok=True)
    clock = SystemClock()
    log = EventLog(io.StringIO(), clock)
    ctx = Context("https://x", None, 0, 1.0, log, Metrics(), clock, stop or threading.Event())
    w = RecipientWorker.__new__(RecipientWorker)
    w.party = SimpleNamespace(name="cnam", path=tmp_path / "party")  # type: ignore[assignment]
    w.ctx = ctx
    w.status = Status("cnam", "recipient", ctx.metrics, clock)
    w.worst = 0
    w._client = SimpleNamespace(close=lambda: None)  # type: ignore[assignment]
    w.settings = RecipientSettings(
        party=tmp_path / "party", inbox=tmp_path / "inbox", hook=hook, hook_timeout=30.0, retry=Retry(3, 0.01, 0.02)
    )
    w.started = 0.0
    w.recovered = False
    w.backoff = None  # type: ignore[assignment]
    return w


def events(w: RecipientWorker) -> list[dict]:
    stream = w.ctx.log._stream
    assert isinstance(stream, io.StringIO)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def get(server: HealthServer, path: str, host: str | None) -> tuple[int, bytes]:
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A recipient whose fetch failed with an error quoting a record, a payload that failed likewise, and the
    agent's listener serving its status."""
    w = recipient(tmp_path)

    def fetch_all(*_args: object, **_kwargs: object) -> FetchReport:
        raise LEAKY

    monkeypatch.setattr("labrelay.agent.recipient.fetch_all", fetch_all)
    assert w.run_once() is False
    w._problems("payload.failed", [("t1", Unavailable(f"relay unreachable while sending {NIR}"))])
    w.status.hook_failed({"file": str(tmp_path / f"{NIR}.csv"), "reason": "cannot run", "message": NIR})
    w.status.running(True)
    server = HealthServer(("127.0.0.1", 0), w.ctx.metrics, [w.status])
    server.start()
    try:
        yield w, server
    finally:
        server.stop()


@pytest.mark.threat("T42")
def test_an_error_quoting_a_record_never_reaches_the_log_or_health(health) -> None:
    w, server = health
    log = events(w)
    assert [e["event"] for e in log] == ["fetch.failed", "payload.failed"]
    assert NIR not in json.dumps(log)
    failed = log[0]
    assert (failed["kind"], failed["error_class"], failed["error_type"], failed["exit_code"]) == (
        "not-results",
        "usage",
        "NotResults",
        2,
    )
    assert failed["message"] == "not a readable results file or a bad option"
    status, body = get(server, "/health", f"127.0.0.1:{server.url.rsplit(':', 1)[1]}")
    assert status == 200
    assert NIR not in body.decode()
    party = json.loads(body)["parties"][0]
    assert party["last_failure"]["kind"] == "not-results"
    assert "message" not in party["last_failure"]  # codes and counts only
    assert party["last_hook_failure"]["reason"] == "cannot run"
    assert "file" not in party["last_hook_failure"]
    assert NIR not in get(server, "/metrics", f"localhost:{server.url.rsplit(':', 1)[1]}")[1].decode()


def test_the_full_diagnostics_are_kept_for_the_reason_file_only() -> None:
    assert policy.detailed_error(LEAKY)["detail"] == LEAKY.diagnostics()
    assert error_fields(LEAKY)["kind"] == policy.detailed_error(LEAKY)["kind"] == "not-results"
    unexpected = ValueError(f"NIR {NIR} bad")
    assert NIR not in json.dumps(policy.detailed_error(unexpected))  # not raised on purpose: its type alone, everywhere
    assert error_fields(PermissionDenied("x"))["message"] == "refused by a security check"


@pytest.mark.threat("T42")
def test_a_csv_without_a_header_row_leaves_no_trace_of_its_rows_in_the_fields(tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text(f"DUPONT,Jean,{NIR},1985-05-07,SARS-CoV-2,POSITIF\n")
    with pytest.raises(LabrelayError) as caught:
        open_reader(export, "auto")
    fields = json.dumps(error_fields(caught.value))
    assert NIR not in fields
    assert "DUPONT" not in fields


@pytest.mark.parametrize(
    "host", ["evil.example:{port}", "127.0.0.1", "127.0.0.1:1", "localhost.evil.example:{port}", None]
)
@pytest.mark.threat("T42")
def test_health_answers_only_requests_for_the_loopback(health, host: str | None) -> None:
    _w, server = health
    port = server.url.rsplit(":", 1)[1]
    for path in ("/health", "/metrics", "/"):
        status, body = get(server, path, None if host is None else host.format(port=port))
        assert status == 421
        assert b"cnam" not in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_health_answers_the_loopback_names_with_its_port(health, host: str) -> None:
    _w, server = health
    status, body = get(server, "/health", host.format(port=server.url.rsplit(":", 1)[1]))
    assert status == 200
    assert json.loads(body)["parties"][0]["party"] == "cnam"


def test_a_second_agent_on_the_same_listen_address_is_a_setting_to_change_not_an_internal_error(
    tmp_path: Path,
) -> None:
    """Two agents started with the same settings: the second cannot listen. It said "internal error (OSError)" and
    exited 1, which systemd's Restart=on-failure retries for ever; it now names the address and the likely cause,
    as a usage error (exit 2, not restarted)."""
    w = recipient(tmp_path)
    first = HealthServer(("127.0.0.1", 0), w.ctx.metrics, [w.status])
    first.start()
    port = int(first.url.rsplit(":", 1)[1])
    try:
        with pytest.raises(UsageError, match=rf"cannot listen on 127\.0\.0\.1:{port}") as refused:
            HealthServer(("127.0.0.1", port), w.ctx.metrics, [w.status])
        assert "another agent is running" in (refused.value.hint or "")
    finally:
        first.stop()
