"""Issue 5's scenarios on a real relay process: enumeration, replay and revoked keys raise alerts at a real webhook,
e-mail and syslog receiver; the kill switch (freeze, revoke, quarantine) takes effect on the very next request."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from labrelay.crypto import httpsig
from labrelay.domain.names import new_id
from labrelay.domain.parties import Role
from labrelay.operations import audit_export
from tests.support.alerting import smtp_server, syslog_socket, webhook
from tests.support.scaled import ReplicaSet
from tests.support.world import World, make_world, scaled_backing, sent_ids

PROBES = 40  # twice detect_probes (20): the threshold crossed, then as many again against the lock and cooldown


def signed_get(world: World, name: str, path: str) -> httpx.Response:
    url = world.url + path
    headers: dict[str, str] = {}
    httpsig.sign_request(
        "GET", url, headers, None, keyid=name, key=world.parties[name].signing_key, now=datetime.now(UTC)
    )
    return httpx.get(url, headers=headers, timeout=30)


def events(world: World) -> list[tuple[str, str | None, str | None]]:
    return world.db("SELECT event, actor, reason FROM audit_events ORDER BY seq")


def raised_within(world: World, alert: dict, probes: list[dict], threshold: int = 20) -> None:
    """By the relay's own records (its audit trail, not the test's clock): the alert counted exactly the threshold,
    names the probe that crossed it, and its own record was written within 5 s of that probe. On one relay process
    the detector listens to the audit log as it is written: the alert's record falls between the probe that crossed
    the threshold and the next one. How fast it then reaches a receiver depends on the receiver; the tests only wait
    for it to arrive."""
    assert (alert["count"], alert["threshold"]) == (threshold, threshold), alert
    tripping = probes[threshold - 1]
    [raised] = [
        d for d in audit_export(world.relay.data, after=alert["audit_seq"] - 1) if d["seq"] == alert["audit_seq"]
    ]
    assert raised["event"] == "alert:raise"
    assert alert["at"] == tripping["at"], (alert, tripping)
    lag = datetime.fromisoformat(raised["at"]) - datetime.fromisoformat(tripping["at"])
    assert timedelta(0) <= lag <= timedelta(seconds=5), lag
    if not isinstance(world.relay, ReplicaSet):
        assert tripping["seq"] < raised["seq"], (tripping, raised)
        if len(probes) > threshold:
            assert raised["seq"] < probes[threshold]["seq"], (raised, probes[threshold])


def refused_probes(world: World, after: int, *, actor: str | None = None, remote: str | None = None) -> list[dict]:
    return [
        d
        for d in audit_export(world.relay.data, after=after)
        if d["outcome"] == "refused"
        and not d["event"].startswith(("alert:", "party:"))  # the detector's own records, not probes
        and (actor is None or d["actor"] == actor)
        and (remote is None or d["details"].get("remote") == remote)
    ]


def head(world: World) -> int:
    return int(world.db("SELECT COALESCE(MAX(seq), 0) FROM audit_events")[0][0])


def send_one(world: World, cli, batch: Path, to: str = "cnam") -> str:
    """One new transfer of ``batch`` to ``to`` (--again: the same file sent once more is a new batch, on purpose)."""
    result = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", to, "--again")
    assert result.code == 0, str(result)
    return sent_ids(result.out)[to]


@pytest.mark.threat("T18")
def test_signed_enumeration_alerts_within_5s_and_locks_the_signer(tmp_path: Path, relay_factory, cli) -> None:
    with webhook() as (hook, posts), smtp_server() as (smtp, mails), syslog_socket() as (syslog, lines):
        settings = {
            "alert_smtp": f'"{smtp}"',
            "alert_email_from": '"relay@labrelay.invalid"',
            "alert_email_to": '"soc@labrelay.invalid"',
            "alert_syslog": f'"{syslog}"',
        }
        world = make_world(tmp_path / "w", relay_factory, "--alert-webhook", hook, settings=settings)
        statuses = []
        before = head(world)
        for _ in range(PROBES):
            statuses.append(signed_get(world, "cnam", f"/v1/transfers/{new_id()}/payload").status_code)
        found = posts.wait_for(lambda a: a["rule"] == "enumeration" and a["subject"] == "cnam", timeout=30)
        assert found is not None, "no enumeration alert at the webhook"
        _, alert = found
        raised_within(world, alert, refused_probes(world, before, actor="cnam"))  # detect_probes = 20
        assert alert["locked"] is True
        assert alert["type"] == "labrelay.alert.v1"
        # The lock took effect on the next request: 20 probes answered "not found", every later one refused.
        assert statuses[:20] == [404] * 20
        assert set(statuses[20:]) == {403}
        assert mails.wait_for(lambda m: "enumeration" in m and "cnam" in m, timeout=30) is not None
        assert lines.wait_for(lambda line: '"rule": "enumeration"' in line, timeout=30) is not None
    # The locked party's next command is refused (exit 3, one line), another party is untouched.
    locked = cli("directory", "--as", world.party_dir("cnam"), "--server", world.url)
    assert locked.code == 3, str(locked)
    assert "locked" in locked.err
    assert cli("directory", "--as", world.party_dir("ars-11"), "--server", world.url).code == 0
    trail = events(world)
    assert ("party:lock", "detector", None) in trail
    assert any(e == "alert:raise" and r == "enumeration" for e, _, r in trail)
    # One alert per rule and subject per cooldown: 20 more refusals did not flood the receivers.
    assert sum(1 for e, _, r in trail if e == "alert:raise" and r == "enumeration") == 1


@pytest.mark.threat("T18")
def test_unsigned_enumeration_alerts_but_locks_nobody(tmp_path: Path, relay_factory, cli) -> None:
    with webhook() as (hook, posts):
        world = make_world(tmp_path / "w", relay_factory, "--alert-webhook", hook)
        before = head(world)
        for _ in range(PROBES):
            response = httpx.get(f"{world.url}/v1/transfers/{new_id()}/payload", timeout=30)
            assert response.status_code == 401
        found = posts.wait_for(lambda a: a["rule"] == "enumeration", timeout=30)
        assert found is not None
        _, alert = found
        assert alert["subject"] == "remote:127.0.0.1"
        assert alert["locked"] is False
        raised_within(world, alert, refused_probes(world, before, remote="127.0.0.1"))
        assert posts.wait_for(lambda a: a["rule"] == "bad-signatures", timeout=30) is not None
    # A flood of unsigned requests names nobody: no party was locked, everyone still works.
    for name in ("cnam", "ars-11", "lab-paris-01"):
        assert cli("directory", "--as", world.party_dir(name), "--server", world.url).code == 0
    assert not any(e == "party:lock" for e, _, _ in events(world))


@pytest.mark.threat("T18")
def test_a_replayed_request_raises_an_alert(tmp_path: Path, relay_factory) -> None:
    with webhook() as (hook, posts):
        world = make_world(tmp_path / "w", relay_factory, "--alert-webhook", hook)
        url = f"{world.url}/v1/transfers?box=inbox"
        headers: dict[str, str] = {}
        httpsig.sign_request(
            "GET", url, headers, None, keyid="ars-11", key=world.parties["ars-11"].signing_key, now=datetime.now(UTC)
        )
        assert httpx.get(url, headers=headers).status_code == 200
        assert httpx.get(url, headers=headers).status_code == 401  # the same bytes again
        found = posts.wait_for(lambda a: a["rule"] == "replay", timeout=5)
        assert found is not None
        assert found[1]["subject"] == "ars-11"
        assert found[1]["locked"] is False  # replay is not in detect_lock_on by default


@pytest.mark.scaled("the kill switch reaches every replica on the next request")
@pytest.mark.threat("T19")
def test_freeze_stops_the_next_upload_and_download_and_unfreeze_from_the_data_dir(world, cli, batch: Path) -> None:
    admin = world.add("admin-1", Role.ADMIN)
    transfer_id = send_one(world, cli, batch)
    frozen = cli("admin", "freeze", "--as", admin.path, "--server", world.url, "--reason", "incident-1")
    assert frozen.code == 0, str(frozen)
    # The very next upload and download are refused; nothing was written.
    lab = world.party_dir("lab-paris-01")
    upload = cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam", "--again")
    assert upload.code == 1
    assert "frozen" in upload.err
    out = world.root / "out"
    download = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert download.code == 1
    assert "frozen" in download.err
    assert not list(out.glob("*")) if out.exists() else True
    assert signed_get(world, "cnam", f"/v1/transfers/{transfer_id}/payload").status_code == 503
    # Audit reads still work while frozen.
    assert signed_get(world, "cnam", "/v1/audit/checkpoint").status_code == 200
    status = cli("admin", "status", "--as", admin.path, "--server", world.url)
    assert json.loads(status.out)["frozen"] is True
    # The API could be down: the same signed command, applied to the data directory, lifts the freeze.
    thawed = cli("admin", "unfreeze", "--as", admin.path, "--data", world.relay.data)
    assert thawed.code == 0, str(thawed)
    fetched = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert fetched.code == 0, str(fetched)
    trail = events(world)
    assert ("relay:freeze", "admin-1", None) in trail
    assert ("relay:unfreeze", "admin-1", None) in trail
    assert any(e == "relay:refuse" and r == "frozen" for e, _, r in trail)


@pytest.mark.threat("T19")
def test_revoke_refuses_the_next_request_and_quarantines_pending_transfers(world, cli, batch: Path) -> None:
    admin = world.add("admin-1", Role.ADMIN)
    pending = send_one(world, cli, batch, to="cnam")
    result = cli("admin", "revoke", "lab-paris-01", "--as", admin.path, "--server", world.url, "--reason", "stolen")
    assert result.code == 0, str(result)
    assert f"quarantined {pending}" in result.out
    again = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam")
    assert again.code == 3
    assert "revoked" in again.err
    # The quarantined transfer is never served: not listed, not downloadable.
    assert signed_get(world, "cnam", "/v1/transfers?box=inbox").json()["transfers"] == []
    assert signed_get(world, "cnam", f"/v1/transfers/{pending}/payload").status_code == 404
    held = world.db("SELECT quarantined_at FROM transfers WHERE id = :id", id=pending)[0][0]
    assert held is not None
    # A party that is not an administrator cannot use the kill switch, and the refusal is audited.
    denied = cli("admin", "freeze", "--as", world.party_dir("cnam"), "--server", world.url)
    assert denied.code == 3
    assert ("admin:refuse", "cnam", "permission-denied") in events(world)
    # An admin lifts the revocation; the lab works again.
    assert cli("admin", "unlock", "lab-paris-01", "--as", admin.path, "--server", world.url).code == 0
    assert cli("directory", "--as", world.party_dir("lab-paris-01"), "--server", world.url).code == 0


def test_quarantine_one_transfer(world, cli, batch: Path) -> None:
    admin = world.add("admin-1", Role.ADMIN)
    first, second = send_one(world, cli, batch), send_one(world, cli, batch)
    assert cli("admin", "quarantine", first, "--as", admin.path, "--server", world.url).code == 0
    inbox = [t["transfer_id"] for t in signed_get(world, "cnam", "/v1/transfers?box=inbox").json()["transfers"]]
    assert inbox == [second]
    assert ("transfer:quarantine", "admin-1", None) in events(world)


def test_metrics_count_without_naming_anyone(world, cli, batch: Path) -> None:
    send_one(world, cli, batch)
    # Metrics are per process: Prometheus scrapes each replica (its own address, not the balancer's).
    urls = [r.url for r in world.relay.replicas] if isinstance(world.relay, ReplicaSet) else [world.url]
    text = "".join(httpx.get(f"{url}/metrics").text for url in urls)
    assert 'labrelay_http_requests_total{method="POST",route="/v1/transfers",status="201"}' in text
    assert 'labrelay_audit_events_total{event="upload:complete",outcome="ok"}' in text
    assert "labrelay_http_request_seconds_bucket" in text
    # The one exception (docs/audit.md, Metrics): the backlog gauges name recipients, organisations of the public
    # directory; never a sender, a transfer or an address.
    backlog = re.compile(r'labrelay_backlog_[a-z_]+\{recipient="(cnam|ars-11)"\} \S+')
    assert 'labrelay_backlog_transfers{recipient="cnam"} 1.0' in text
    for line in text.splitlines():
        if not backlog.fullmatch(line):
            for name in ("cnam", "ars-11", "lab-paris-01", "127.0.0.1"):
                assert name not in line, line


@pytest.mark.scaled("the worker counts probes that two replicas saw, and its lock holds on both")
@pytest.mark.threat("T18")
def test_probes_spread_over_replicas_add_up_in_the_worker(
    tmp_path: Path, relay_factory, cli, request: pytest.FixtureRequest
) -> None:
    """At scale the leading worker tails the shared audit log: enumeration probes sent through the balancer to two
    replicas count together; the lock it sets holds on every replica; its checkpointer keeps verified heads, and
    sees a history rewritten behind the relay's back."""
    with webhook() as (hook, posts):
        world = make_world(
            tmp_path / "w",
            relay_factory,
            settings={"alert_webhook": f'"{hook}"', "checkpoint_interval": '"1s"'},
            scaled=scaled_backing(request),
        )
        statuses = []
        before = head(world)
        for _ in range(40):
            statuses.append(signed_get(world, "cnam", f"/v1/transfers/{new_id()}/payload").status_code)
        found = posts.wait_for(lambda a: a["rule"] == "enumeration" and a["subject"] == "cnam", timeout=30)
        assert found is not None, "no enumeration alert from the worker"
        raised_within(world, found[1], refused_probes(world, before, actor="cnam"))
        assert found[1]["locked"] is True
        assert world.relay.balancer is not None
        assert min(world.relay.balancer.connections) >= 10, "the probes did not reach both replicas"
        for replica in world.relay.replicas:  # the lock is in the database: every replica refuses
            url = f"{replica.url}/v1/transfers?box=inbox"
            headers: dict[str, str] = {}
            httpsig.sign_request(
                "GET", url, headers, None, keyid="cnam", key=world.parties["cnam"].signing_key, now=datetime.now(UTC)
            )
            assert httpx.get(url, headers=headers, timeout=30).status_code == 403
        assert statuses[:20] == [404] * 20

        # The checkpointer's witness: signed heads it verified, in the format audit verify --checkpoints reads.
        witness = world.relay.data / "witness-checkpoints.json"
        deadline = time.monotonic() + 10
        while not witness.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        verified = cli("audit", "verify", "--data", world.relay.data, "--checkpoints", witness)
        assert verified.code == 0, str(verified)
        # History rewritten in the database: the worker alerts within seconds, without anyone running a check.
        seq = world.db("SELECT min(seq) FROM audit_events WHERE event = 'auth:success'")[0][0]
        rewrite_hashes_from(world, seq)
        tampered = posts.wait_for(lambda a: a["rule"] == "audit-chain", timeout=10)
        assert tampered is not None, "the worker did not see the rewritten history"
        assert "audit verify" in tampered[1]["summary"]


def rewrite_hashes_from(world: World, seq: int) -> None:
    """An operator with database access edits record ``seq`` and re-hashes every record after it (without the
    relay's key the head stays as signed; the worker compares what it witnessed)."""
    rows = world.db("SELECT seq FROM audit_events WHERE seq >= :s ORDER BY seq", s=seq)
    for (n,) in rows:
        world.db("UPDATE audit_events SET hash = :h WHERE seq = :s", h=f"{n:064x}", s=n)
