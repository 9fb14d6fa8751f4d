"""The client's edges without a relay: files that cannot be redirected or left half-written, the party lock, the
lab's batch index and its clean-up, record counting whatever the field sizes, thresholds."""

from __future__ import annotations

import errno
import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.batches import SEALED, SEALING, BatchEntry, BatchIndex, digest
from labrelay.client.fetch import CsvRows
from labrelay.client.files import TEMP_PREFIX, SafeDir, sweep_temporaries
from labrelay.client.keystore import Authority, Party
from labrelay.client.lock import party_lock
from labrelay.client.send import RejectLimit, keep_manifest, pending, tidy
from labrelay.domain.names import new_id
from labrelay.domain.parties import Role
from labrelay.domain.transfers import Manifest
from labrelay.errors import PartyBusy, UnsafeOutput, UsageError

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def lab(tmp_path: Path) -> Party:
    authority = Authority.init(tmp_path / "authority")
    return Party.create(tmp_path / "parties", "lab-x", Role.LAB, None, authority.path / "authority.pub", NOW)


def sealed(lab: Party, batch_id: str, source_sha256: str | None) -> Path:
    manifest = Manifest(
        transfer_id=new_id(),
        batch_id=batch_id,
        sender=lab.name,
        recipient="cnam",
        recipient_key=lab.age_recipient,
        size=10,
        sha256="0" * 64,
        record_count=None,
        media_type="text/csv",
        created=NOW,
        deadline=NOW + timedelta(days=1),
        source_sha256=source_sha256,
    )
    state = keep_manifest(lab, manifest)
    state.with_suffix(".age").write_bytes(b"ciphertext")
    return state


def test_tidy_drops_what_a_run_killed_while_naming_left_and_nothing_else(lab: Party) -> None:
    index = BatchIndex(lab.path)
    killed = BatchEntry(new_id(), "a" * 64, "killed.csv", "routed", "2026-12-04T12:00:00Z", state=SEALING)
    fine = BatchEntry(new_id(), "b" * 64, "fine.csv", "routed", "2026-12-04T12:00:00Z", state=SEALED)
    index.save(killed)
    index.save(fine)
    half = sealed(lab, killed.batch_id, killed.source_sha256)
    waiting = sealed(lab, fine.batch_id, fine.source_sha256)
    legacy = sealed(lab, new_id(), None)  # sealed by an older client or the API: no batch on record
    orphan = lab.ensure_outbox() / f"{new_id()}.age"  # a spool whose manifest was never written
    orphan.write_bytes(b"x")
    (lab.ensure_outbox() / f"{TEMP_PREFIX}1234").write_bytes(b"x")
    assert tidy(lab) == [killed.batch_id]
    assert pending(lab) == sorted([waiting, legacy])
    assert not half.exists()
    assert not half.with_suffix(".age").exists()
    assert not orphan.exists()
    assert [p.name for p in lab.ensure_outbox().iterdir() if p.name.startswith(TEMP_PREFIX)] == []
    assert index.of_source(killed.source_sha256) == []
    assert [b.batch_id for b in index.of_source(fine.source_sha256)] == [fine.batch_id]


def test_a_batch_is_found_by_its_id_prefix(lab: Party) -> None:
    index = BatchIndex(lab.path)
    record = BatchEntry(new_id(), "c" * 64, "x.csv", "routed", "2026-12-04T12:00:00Z")
    index.save(record)
    assert index.by_id(record.batch_id[:8]).batch_id == record.batch_id
    with pytest.raises(UsageError, match="too short"):
        index.by_id(record.batch_id[:4])
    with pytest.raises(UsageError, match="no batch"):
        index.by_id("ffffffff")


def test_the_source_digest_hashes_and_counts_lines(tmp_path: Path) -> None:
    source = tmp_path / "s.csv"
    source.write_bytes(b"a,b\n1,2\n3,4\n")
    found = digest(source)
    assert found.lines == 3
    assert found.size == 12
    assert found.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()


@pytest.mark.parametrize("step", [1, 2, 3, 7, 4096])
def test_csv_rows_are_counted_whatever_the_chunks_and_field_sizes(step: int) -> None:
    data = b'a,b\n1,"' + b"x" * 200_000 + b'"\n2,"two\nlines"\n3,"quote "" inside"\n4,last'
    counter = CsvRows()
    for i in range(0, len(data), step):
        counter.feed(data[i : i + step])
    assert counter.records == 4
    header_only = CsvRows()
    header_only.feed(b"a,b\n")
    assert header_only.records == 0


@pytest.mark.parametrize(
    ("text", "rejected", "read", "crossed"),
    [("5", 5, 100, False), ("5", 6, 100, True), ("2%", 2, 100, False), ("2%", 3, 100, True), ("0", 1, 10, True)],
)
def test_reject_limits(text: str, rejected: int, read: int, crossed: bool) -> None:
    assert RejectLimit.parse(text).crossed(rejected, read) is crossed


@pytest.mark.parametrize("text", ["-1", "lots", "101%", "2.5"])
def test_reject_limits_that_mean_nothing_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="--max-rejected"):
        RejectLimit.parse(text)


def test_the_party_lock_names_its_holder_and_can_be_waited_for(lab: Party) -> None:
    busy = rf"another fetch for lab-x is running \(pid {os.getpid()}\)"
    with party_lock(lab.path, lab.name, "fetch"):
        with pytest.raises(PartyBusy, match=busy), party_lock(lab.path, lab.name, "send"):
            pass
        with pytest.raises(PartyBusy), party_lock(lab.path, lab.name, "send", wait=0.3):
            pass
    with party_lock(lab.path, lab.name, "send"):  # released: free again
        pass


def test_outputs_are_never_written_through_a_link_nor_over_a_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    with SafeDir.open(out) as folder:
        (out / "planted.csv").symlink_to(victim)
        (out / "there.csv").write_text("earlier")
        for name in ("planted.csv", "there.csv"):
            file = folder.temp()
            file.handle.write(b"new")
            with pytest.raises(UnsafeOutput, match="exists already"):
                file.publish(name)
        with pytest.raises(UnsafeOutput, match="plain file name"):
            folder.temp().publish("../escape.csv")
    assert victim.read_text() == "keep"
    assert (out / "there.csv").read_text() == "earlier"
    assert sorted(p.name for p in out.iterdir()) == ["planted.csv", "there.csv"]


def test_an_output_directory_others_could_redirect_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(UnsafeOutput, match="may be written by other users") as refused:
        SafeDir.open(shared)
    assert "chmod go-w" in refused.value.diagnostics()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UnsafeOutput, match="symbolic link"):
        SafeDir.open(link)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(UnsafeOutput, match="another user"):
            SafeDir.open(theirs)


def test_without_o_tmpfile_a_hidden_temporary_is_used_and_swept(tmp_path: Path, monkeypatch) -> None:
    real_open = os.open

    def no_tmpfile(path, flags, *args, **kwargs):  # a file system without O_TMPFILE
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_tmpfile)
    with SafeDir.open(tmp_path / "out") as folder:
        file = folder.temp()
        file.handle.write(b"data")
        assert file.temp_name is not None
        assert (tmp_path / "out" / file.temp_name).exists()
        file.publish("done.csv")
        left = folder.temp()  # a run killed here leaves this hidden file behind…
        left.handle.write(b"partial")
        left.handle.close()  # (the kill: the descriptors close, nobody removes the file)
        os.close(left.fd)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["done.csv", left.temp_name])
    assert sweep_temporaries(tmp_path / "out") == 1  # … which the next run removes
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["done.csv"]
    assert (tmp_path / "out" / "done.csv").read_bytes() == b"data"
