"""Naming the affected persons from the DPO-sealed persons indexes, on small data: every person whose data was
readable named once, with their contact details and categories, the counts reconciling; and the block-wise,
bucketed path (bounded memory at any size) writing exactly the list one block would."""

from __future__ import annotations

import gzip
import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from labrelay.breach.blocks import read_blocks
from labrelay.breach.scope import AFFECTED_COLUMNS, LedgerReader, Scope, name_persons
from labrelay.crypto import age_stream
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.breach import Exposure, Finding, Incident, TransferFacts
from labrelay.errors import IntegrityError

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
COLUMNS = (
    "kind", "person", "nom", "prenom", "date_naissance", "adresse", "code_postal", "commune", "telephone", "email",
    "transfers",
)  # fmt: skip
PATIENT_CATS = ("contact", "health", "identity", "pseudonym")
TRANSFERS = {  # transfer id: (recipient, categories, exposure)
    "t-ars": ("ars-11", (*PATIENT_CATS, "professional"), Exposure.READABLE),
    "t-spf": ("spf", ("health", "place"), Exposure.READABLE),
    "t-cnam": ("cnam", (*PATIENT_CATS, "nir"), Exposure.CIPHERTEXT),
    "t-old": ("ars-84", PATIENT_CATS, Exposure.NONE),
}


def patient(person: str, nom: str, transfers: str, *, adresse: str = "1 rue A", email: str = "") -> dict[str, str]:
    return {
        "kind": "patient", "person": person, "nom": nom, "prenom": "Jo", "date_naissance": "1980-01-02",
        "adresse": adresse, "code_postal": "75001", "commune": "PARIS", "telephone": "0600000000", "email": email,
        "transfers": transfers,
    }  # fmt: skip


def prescriber(rpps: str, nom: str, transfers: str) -> dict[str, str]:
    return {**dict.fromkeys(COLUMNS, ""), "kind": "professional", "person": rpps, "nom": nom, "telephone": "01",
            "transfers": transfers}  # fmt: skip


LEDGER_1 = [
    patient("ps-a", "ALPHA", "t-ars;t-cnam", email="a@example.org"),
    patient("ps-b", "BRAVO", "t-cnam"),  # ciphertext only
    patient("ps-c", "CHARLIE", "t-old"),  # not exposed
    patient("", "DELTA", "t-spf", adresse='3 "bis", rue B\nbâtiment C'),  # no pseudonym; quotes and a newline
    patient("ps-a", "ALPHA-AGAIN", "t-spf"),  # a second record of A: details of the first, categories merged
    prescriber("10000000001", "Dr Un", "t-ars"),
    prescriber("10000000002", "Dr Deux", "t-spf"),  # spf carries no professional field: not concerned
    patient("ps-e", "ECHO", "t-ars", adresse=""),  # no address: an e-mail or a call
]
LEDGER_2 = [
    patient("ps-b", "BRAVO", "t-cnam;t-spf"),  # now readable through spf
    patient("ps-f", "FOXTROT", "t-ars"),
    patient("ps-a", "ALPHA", "t-cnam"),  # exposed again, as ciphertext: counted once
    prescriber("10000000001", "Dr Un", "t-ars"),
]


def seal(rows: list[dict[str, str]], identity: AgeIdentity, path: Path, *, members: int = 2) -> None:
    """The persons index as the sender writes it: gzip'd CSV (here in several gzip members), sealed with age."""
    text = pl.DataFrame(rows, schema=dict.fromkeys(COLUMNS, pl.String)).write_csv().encode()
    cut = len(text) // members
    parts = [text[i * cut : (i + 1) * cut if i < members - 1 else len(text)] for i in range(members)]
    compressed = b"".join(gzip.compress(p) for p in parts)
    with path.open("wb") as fh:
        age_stream.encrypt(io.BytesIO(compressed), fh, [identity.recipient])


def ledger(folder: Path, name: str, rows: list[dict[str, str]], identity: AgeIdentity) -> LedgerReader:
    seal(rows, identity, folder / f"{name}.persons.age")
    meta = {
        "batch_id": name,
        "sender": "lab",
        "persons_file": f"{name}.persons.age",
        "patients": sum(r["kind"] == "patient" for r in rows),
        "professionals": sum(r["kind"] == "professional" for r in rows),
        "created": "2026-11-27T09:00:00Z",
        "transfers": [{"transfer_id": t} for t in TRANSFERS],
    }
    return LedgerReader(folder, meta)


def a_scope() -> Scope:
    findings = [
        (TransferFacts(tid, "lab", recipient, 1, T0 + timedelta(days=7), cats), Finding(tid, exposure, "test"))
        for tid, (recipient, cats, exposure) in TRANSFERS.items()
    ]
    return Scope(Incident(compromised={"ars-11": T0}), findings)


@pytest.fixture(scope="module")
def identity() -> AgeIdentity:
    return AgeIdentity.generate(classic=True)


@pytest.fixture
def ledgers(tmp_path: Path, identity: AgeIdentity) -> list[LedgerReader]:
    folder = tmp_path / "ledger"
    folder.mkdir()
    return [ledger(folder, "b1", LEDGER_1, identity), ledger(folder, "b2", LEDGER_2, identity)]


def test_every_person_with_readable_data_is_named_once_with_contact_and_categories(
    tmp_path: Path, ledgers: list[LedgerReader], identity: AgeIdentity
) -> None:
    scope = a_scope()
    path = name_persons(scope, ledgers, [identity], tmp_path / "out")
    assert path.stat().st_mode & 0o077 == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["affected.csv"]  # no temporary file left
    assert scope.affected_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    affected = pl.read_csv(path, infer_schema=False)
    assert tuple(affected.columns) == AFFECTED_COLUMNS
    got = {row["nom"]: row for row in affected.iter_rows(named=True)}
    # In order of first appearance; B is named from ledger 2, where spf read it; C never readable; Dr Deux's
    # transfer carried no professional field.
    assert list(got) == ["ALPHA", "DELTA", "Dr Un", "ECHO", "BRAVO", "FOXTROT"]
    assert got["ALPHA"]["transfers"] == "t-ars;t-spf"
    assert got["ALPHA"]["categories"] == "contact;health;identity;place;pseudonym"
    assert got["ALPHA"]["email"] == "a@example.org"
    assert got["DELTA"]["adresse"] == '3 "bis", rue B\nbâtiment C'
    assert got["DELTA"]["categories"] == "health;place"
    assert got["BRAVO"]["transfers"] == "t-spf"
    assert (got["Dr Un"]["person"], got["Dr Un"]["categories"]) == ("10000000001", "professional")
    assert not got["ECHO"]["adresse"]
    # A, B, D, E, F readable; A, B (and C: no) exposed as ciphertext too: no one is ciphertext-only.
    assert scope.persons == {"readable_patients": 5, "readable_professionals": 1, "ciphertext_only_patients": 0}


def test_a_copy_exposing_ciphertext_only_names_no_one_and_counts_each_patient_once(
    tmp_path: Path, ledgers: list[LedgerReader], identity: AgeIdentity
) -> None:
    scope = a_scope()
    scope.findings = [(f, Finding(f.transfer_id, Exposure.CIPHERTEXT, "copy")) for f, _ in scope.findings]
    path = name_persons(scope, ledgers, [identity], tmp_path / "out", block_bytes=64, bucket_rows=2)
    assert path.read_text() == ",".join(AFFECTED_COLUMNS) + "\n"
    # A, B, C, D, E, F: six patients; the prescribers are not patients.
    assert scope.persons == {"readable_patients": 0, "readable_professionals": 0, "ciphertext_only_patients": 6}


@pytest.mark.parametrize(("block_bytes", "bucket_rows"), [(1, 1), (64, 2), (200, 3), (1 << 20, 1)])
def test_blocks_and_buckets_write_exactly_what_one_block_does(
    tmp_path: Path, ledgers: list[LedgerReader], identity: AgeIdentity, block_bytes: int, bucket_rows: int
) -> None:
    whole, parts = a_scope(), a_scope()
    one = name_persons(whole, ledgers, [identity], tmp_path / "one", block_bytes=1 << 30, bucket_rows=1 << 30)
    many = name_persons(parts, ledgers, [identity], tmp_path / "many", block_bytes=block_bytes, bucket_rows=bucket_rows)
    assert many.read_bytes() == one.read_bytes()
    assert (parts.persons, parts.affected_sha256) == (whole.persons, whole.affected_sha256)


def test_a_persons_index_cut_short_or_not_one_is_refused_and_nothing_is_written(
    tmp_path: Path, ledgers: list[LedgerReader], identity: AgeIdentity
) -> None:
    sealed = ledgers[1].persons_file
    good = sealed.read_bytes()
    sealed.write_bytes(good[:-20])  # age authenticates the end of the stream
    with pytest.raises(IntegrityError, match="cannot be opened"):
        name_persons(a_scope(), ledgers, [identity], tmp_path / "out", block_bytes=64)
    assert list((tmp_path / "out").iterdir()) == []  # neither affected.csv nor the spilled blocks
    # Sealed properly, but cut inside its gzip stream by the sender: refused too.
    plain = gzip.compress(pl.DataFrame(LEDGER_2).write_csv().encode())[:-30]
    with sealed.open("wb") as fh:
        age_stream.encrypt(io.BytesIO(plain), fh, [identity.recipient])
    with pytest.raises(IntegrityError, match="not a persons index"):
        name_persons(a_scope(), ledgers, [identity], tmp_path / "out")
    plain = gzip.compress(pl.DataFrame(LEDGER_2).rename({"email": "courriel"}).write_csv().encode())
    with sealed.open("wb") as fh:  # another header
        age_stream.encrypt(io.BytesIO(plain), fh, [identity.recipient])
    with pytest.raises(IntegrityError, match="header"):
        name_persons(a_scope(), ledgers, [identity], tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_csv_blocks_are_cut_between_records_only() -> None:
    rows = pl.DataFrame({"a": ['x\n"y"', "plain", "", 'z,\n\n"'] * 25, "b": [str(i) for i in range(100)]})
    text = rows.write_csv().encode()
    for size in (1, 7, 64, len(text)):
        frames = list(read_blocks(io.BytesIO(text), ("a", "b"), block_bytes=size))
        assert pl.concat(frames).equals(pl.read_csv(io.BytesIO(text), infer_schema=False))
    with pytest.raises(IntegrityError, match="quoted field"):
        list(read_blocks(io.BytesIO(text[:-3] + b'"x\n'), ("a", "b"), block_bytes=7))
