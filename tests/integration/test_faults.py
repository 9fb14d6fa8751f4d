"""Faults of the services under the relay: a full disk, S3 unreachable, PostgreSQL restarted. Each time the client
gets a clear error it can retry, nothing is lost or visible in part, and service resumes by itself (no restart of
the relay, no operator step) once the fault is gone."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labrelay.client.keystore import Authority
from labrelay.clock import SystemClock
from labrelay.operations import audit_summary, audit_verify, init_data_dir
from tests.support.scaled import Balancer
from tests.support.world import CI, Scaled, World, make_world, sent_ids


def ok(result):
    assert result.code == 0, str(result)
    return result


def fetched_csv(out: Path) -> set[bytes]:
    return {p.read_bytes() for p in out.glob("*.csv")}


def another(batch: Path) -> Path:
    """A second document for CNAM (the only recipient the policy lets receive documents sent as they are)."""
    other = batch.with_name("other.csv")
    other.write_bytes(batch.read_bytes().replace(b"\n", b"\r\n"))
    return other


def outbox_states(world: World) -> dict[str, str]:
    with world.client("lab-paris-01") as client:
        return {t["transfer_id"]: t["state"] for t in client.transfers("outbox")}


def inbox_ids(world: World, name: str) -> list[str]:
    with world.client(name) as client:
        return [t["transfer_id"] for t in client.transfers("inbox")]


def unavailable(result, *words: str) -> None:
    """A retryable operational failure (exit 1) that says what to do, and no traceback."""
    assert result.code == 1, str(result)
    assert "retry" in result.err.lower(), result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word in result.err.lower(), result.err


# ------------------------------------------------------------------ S3 unreachable


@pytest.fixture
def s3_behind_a_cable(postgres, s3_server) -> Iterator[tuple[Scaled, Balancer]]:
    """The scaled configuration whose S3 traffic goes through a proxy the test can cut (a network partition)."""
    s3_server.start()
    cable = Balancer([("127.0.0.1", s3_server.port)])
    cable.start()
    try:
        yield (
            Scaled(
                postgres.create_database(migrated=True),
                f"http://127.0.0.1:{cable.port}",
                s3_server.create_bucket(),
                postgres,
                s3_server,
            ),
            cable,
        )
    finally:
        cable.stop()


@pytest.mark.scaled("S3 cut off and back, with metadata still in PostgreSQL")
@pytest.mark.threat("T21")
def test_s3_unreachable_then_back(tmp_path: Path, relay_factory, cli, batch: Path, s3_behind_a_cable) -> None:
    scaled, cable = s3_behind_a_cable
    world = make_world(tmp_path / "world", relay_factory, scaled=scaled)
    lab = world.party_dir("lab-paris-01")
    stored = sent_ids(ok(cli("send", batch, "--as-is", "--as", lab, "--server", world.url, "--to", "cnam")).out)

    cable.partition()
    other = another(batch)
    failed = cli("send", other, "--as-is", "--as", lab, "--server", world.url, "--to", "cnam")
    unavailable(failed, "payload storage")
    fetch_cut = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", tmp_path / "cut")
    unavailable(fetch_cut)
    assert not list((tmp_path / "cut").glob("*.csv"))
    # Metadata lives in PostgreSQL: the relay still answers what it can, and shows nothing it cannot serve whole.
    states = outbox_states(world)
    assert states[stored["cnam"]] == "available"
    assert all(state in ("uploading", "available") for state in states.values())
    assert inbox_ids(world, "cnam") == [stored["cnam"]]

    cable.heal()  # no restart of anything: the next requests go through
    ok(cli("resume", "--as", lab, "--server", world.url))
    out = tmp_path / "cnam"
    ok(cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out))
    assert fetched_csv(out) == {batch.read_bytes(), other.read_bytes()}
    assert set(outbox_states(world).values()) == {"delivered"}
    assert audit_verify(world.relay.data, SystemClock()).ok


# ------------------------------------------------------------------ PostgreSQL restarted


@pytest.mark.scaled("a PostgreSQL restart under replicas and the worker")
@pytest.mark.threat("T21")
def test_postgres_restart_is_ridden_out(tmp_path: Path, relay_factory, cli, batch: Path, postgres, s3_server) -> None:
    s3_server.start()
    scaled = Scaled(
        postgres.create_database(migrated=True), s3_server.endpoint, s3_server.create_bucket(), postgres, s3_server
    )
    world = make_world(tmp_path / "world", relay_factory, scaled=scaled)
    lab = world.party_dir("lab-paris-01")
    wait_for_leads(world, 1)
    sent = sent_ids(ok(cli("send", batch, "--as-is", "--as", lab, "--server", world.url, "--to", "cnam")).out)

    postgres.stop()
    try:
        down = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", tmp_path / "down")
        unavailable(down, "database")
        assert not list((tmp_path / "down").glob("*.csv"))
        send_down = cli("send", another(batch), "--as-is", "--as", lab, "--server", world.url, "--to", "cnam")
        assert send_down.code == 1, str(send_down)
        assert "Traceback" not in send_down.err
    finally:
        postgres.start()
    postgres.wait()

    out = tmp_path / "cnam"
    ok(cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out))
    assert fetched_csv(out) == {batch.read_bytes()}
    ok(cli("send", another(batch), "--as-is", "--as", lab, "--server", world.url, "--to", "cnam"))
    assert outbox_states(world)[sent["cnam"]] == "delivered"
    assert all(r.running() for r in world.relay.replicas), "a replica died instead of riding the restart out"
    # The worker lost its leadership with its connection, and took it back by itself.
    wait_for_leads(world, 2)
    assert audit_verify(world.relay.data, SystemClock()).ok


def wait_for_leads(world: World, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        leads = audit_summary(world.relay.data)["by_event"].get("worker:lead", 0)
        if leads >= count:
            return
        assert time.monotonic() < deadline, f"the worker led {leads} times, expected {count}"
        time.sleep(0.3)


# ------------------------------------------------------------------ disk full


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` mounted over ``path`` (root only)."""
    if os.geteuid() != 0:
        if CI:
            pytest.fail("the disk-full test needs root to mount a small tmpfs; CI runs as root")
        pytest.skip("needs root to mount a small tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Fill the file system under ``path`` until ``leave`` bytes are free."""
    filler = path / "filler"
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.threat("T21")
def test_disk_full_then_freed(tmp_path: Path, relay_factory, cli, batch: Path) -> None:
    root = tmp_path / "world"
    authority = Authority.init(root / "authority")
    data = root / "relay"
    init_data_dir(data, authority.path / "authority.pub")
    with small_disk(data / "payloads", 4096) as payloads:
        world = make_world_on(root, data, authority, relay_factory)
        lab = world.party_dir("lab-paris-01")
        filler = fill(payloads, 64 * 1024)  # less than the payload below
        big = tmp_path / "scan.bin"
        big.write_bytes(os.urandom(512 * 1024))
        failed = cli("send", big, "--as-is", "--to", "cnam", "--as", lab, "--server", world.url)
        assert failed.code == 1, str(failed)
        assert "no space left" in failed.err.lower(), failed.err
        assert "retry" in failed.err.lower(), failed.err
        assert "labrelay resume" in failed.err, failed.err
        assert "Traceback" not in failed.err
        assert inbox_ids(world, "cnam") == []  # nothing visible in part
        assert set(outbox_states(world).values()) == {"uploading"}

        filler.unlink()  # space is back: the same relay process goes on
        ok(cli("resume", "--as", lab, "--server", world.url))
        out = tmp_path / "cnam"
        ok(cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out))
        [received] = list(out.glob("*.bin"))
        assert received.read_bytes() == big.read_bytes()
        assert audit_verify(world.relay.data, SystemClock()).ok
        world.relay.stop()


def make_world_on(root: Path, data: Path, authority, relay_factory) -> World:
    """``make_world`` on a data directory already initialised (here: with a small disk mounted in it)."""
    return make_world(root, relay_factory, existing=(data, authority))
