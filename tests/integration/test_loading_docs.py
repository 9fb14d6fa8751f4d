"""docs/loading.md is what recipients load from: its SQL, run by the real ``psql`` on a real PostgreSQL, must load
files made the way ``labrelay fetch --format csv`` makes them.

A synthetic batch (the project's generator; never real data) is validated, routed and minimised by the real
pipeline under the default policy; each destination's records are written by ``RecordSink`` (what the lab
encrypts), then tagged by ``RowTagger`` fed in uneven chunks (what fetch does to the decrypted stream), then loaded
with the doc's ``CREATE TABLE`` and ``\\copy`` lines, and its daily load script. ``HEADER MATCH`` refuses a table
whose columns are not the file's, in order; the column types are compared with the policy's fields; the values
are read back typed.
"""

from __future__ import annotations

import csv
import io
import random  # noqa: TID251 - seeded, reproducible chunk sizes; nothing secret
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psycopg
import pytest

from labrelay.batch.outputs import RecordSink
from labrelay.batch.pipeline import RejectionReport, ReviewFile, Summary, open_reader, run
from labrelay.batch.route import Router
from labrelay.batch.validate import Validator
from labrelay.client.formats import DATE_COLUMNS, INTEGER_COLUMNS, TAG_COLUMNS, RowTagger
from labrelay.client.policy import default_policy_text
from labrelay.domain.policy import parse_policy
from labrelay.refdata import communes, department_regions
from labrelay.synthetic.generator import write_csv_file
from tests.support.pgserver import PostgresServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "loading.md"
TODAY = date(2026, 1, 15)
RECORDS = 1500
SENDER = "lab-paris-01"
PSEUDONYM_KEY = "5f" * 32  # any 64-hex key: the pseudonyms are only compared with themselves
SHAPES = {"cnam": "cnam_results", "ars-11": "ars_results", "spf": "spf_results"}
"""A recipient of each rule of the default policy, and the doc's table for it."""


# ------------------------------------------------------------------ the doc


def sql_blocks() -> list[str]:
    return re.findall(r"^```sql\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)


def create_table(table: str) -> str:
    """The doc's block that creates ``table`` (with its indexes)."""
    found = [b for b in sql_blocks() if re.search(rf"^CREATE TABLE {table} \(", b, flags=re.MULTILINE)]
    assert len(found) == 1, f"docs/loading.md: one ```sql block must create {table}"
    return found[0]


def copy_line(table: str) -> str:
    """The doc's one-off ``\\copy`` line for ``table``."""
    lines = [ln for b in sql_blocks() for ln in b.splitlines() if ln.startswith(f"\\copy {table} FROM '")]
    assert len(lines) == 1, f"docs/loading.md: one \\copy line must load {table}"
    return lines[0]


def load_script() -> str:
    found = [b for b in sql_blocks() if "FROM pstdin" in b]
    assert len(found) == 1, "docs/loading.md: one load script reading its standard input"
    return found[0]


def with_file(line: str, path: Path) -> str:
    return re.sub(r"FROM '[^']*'", lambda _: f"FROM '{path}'", line, count=1)


# ------------------------------------------------------------------ psql


@dataclass
class Database:
    server: PostgresServer
    name: str
    scripts: Path

    def psql(
        self, script: str, *, stdin: bytes = b"", variables: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``script`` with the real psql client, stopping at the first error, as the doc tells recipients to;
        ``stdin`` is psql's standard input (the load script reads the file from it)."""
        binary = self.server.bindir / "psql"
        client = str(binary) if binary.exists() else shutil.which("psql")
        assert client, "psql is not installed"
        path = self.scripts / f"{uuid.uuid4().hex}.sql"
        path.write_text(script, encoding="utf-8")
        args = [client, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.server.port)]
        for key, value in (variables or {}).items():
            args += ["-v", f"{key}={value}"]
        args += ["-U", "postgres", "-d", self.name, "-f", str(path)]
        return subprocess.run(args, input=stdin, capture_output=True, timeout=120, check=False)

    def query(self, sql: str, *params: object) -> list[tuple]:
        conninfo = f"host=127.0.0.1 port={self.server.port} user=postgres dbname={self.name}"
        with psycopg.connect(conninfo) as conn:
            return conn.execute(sql, params).fetchall()


def ok(result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, result.stderr.decode(errors="replace")


@pytest.fixture
def db(postgres: PostgresServer, tmp_path: Path) -> Database:
    return Database(postgres, postgres.create_database().rsplit("/", 1)[1], tmp_path)


# ------------------------------------------------------------------ files as fetch writes them


@dataclass(frozen=True)
class Fetched:
    recipient: str
    fields: tuple[str, ...]
    path: Path
    batch_id: str
    records: int
    payload: bytes  # as RecordSink wrote it, before fetch's columns

    def rows(self) -> list[dict[str, str]]:
        with self.path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fetched]:
    """For each shape of recipient, the file ``fetch --format csv`` would write from this batch."""
    work = tmp_path_factory.mktemp("loading")
    source = work / "batch.csv"
    write_csv_file(source, RECORDS, seed=7, today=TODAY)
    policy = parse_policy(default_policy_text())
    regions = set(department_regions().values())
    router = Router(policy, regions, {"cnam", "spf", *(f"ars-{r}" for r in regions)}, pseudonym_key=PSEUDONYM_KEY)
    validator = Validator(
        today=TODAY,
        loinc=policy.loinc,
        communes=[c.insee for c in communes()],
        department_regions=department_regions(),
    )
    buffers = {d.name: io.BytesIO() for d in router.destinations}
    sinks = {d.name: RecordSink(buffers[d.name], d.rule.fields, d.rule.format) for d in router.destinations}
    _, reader = open_reader(source, "csv")
    summary = run(
        reader,
        validator,
        summary=Summary("csv"),
        report=RejectionReport(None),
        review=ReviewFile(None),
        router=router,
        sinks=sinks,
    )
    assert summary.reconciled
    assert summary.accepted > RECORDS * 0.9
    rng = random.Random(3)
    out: dict[str, Fetched] = {}
    for recipient in SHAPES:
        payload = buffers[recipient].getvalue()
        batch_id = str(uuid.uuid4())
        tagged = io.BytesIO()
        tagger = RowTagger(tagged, batch_id, SENDER)
        at = 0
        while at < len(payload):  # as the decryptor hands it over: chunks cut anywhere
            step = rng.randint(1, 9000)
            tagger.write(payload[at : at + step])
            at += step
        tagger.finish()
        path = work / f"{recipient}.csv"
        path.write_bytes(tagged.getvalue())
        sink = sinks[recipient]
        assert sink.records > 20, f"too few records for {recipient} in the synthetic batch"
        out[recipient] = Fetched(recipient, sink.fields, path, batch_id, sink.records, payload)
    return out


def expected_type(column: str) -> str:
    """What the policy's field is, as a PostgreSQL type."""
    if column in DATE_COLUMNS:
        return "date"
    if column in INTEGER_COLUMNS:
        return "smallint"
    return "uuid" if column == "batch_id" else "text"


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("recipient", list(SHAPES))
def test_the_docs_table_and_copy_line_load_what_fetch_writes(
    db: Database, fetched: dict[str, Fetched], recipient: str
) -> None:
    table = SHAPES[recipient]
    got = fetched[recipient]
    ok(db.psql(create_table(table)))
    columns = db.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
        table,
    )
    wanted = [*got.fields, *TAG_COLUMNS]
    assert [name for name, _ in columns] == wanted, "the table's columns must be the policy's fields, then the tags"
    assert dict(columns) == {c: expected_type(c) for c in wanted}

    ok(db.psql(with_file(copy_line(table), got.path)))

    assert db.query(f"SELECT count(*) FROM {table}") == [(got.records,)]  # noqa: S608 - the doc's table names
    assert db.query(f"SELECT DISTINCT batch_id::text, sender FROM {table}") == [(got.batch_id, SENDER)]  # noqa: S608
    rows = got.rows()
    assert len(rows) == got.records
    first = rows[0]
    key = "pseudonyme" if "pseudonyme" in first else "nom"
    loaded = db.query(
        f"SELECT date_prelevement, date_validation FROM {table} WHERE {key} = %s",  # noqa: S608
        first[key],
    )
    assert (date.fromisoformat(first["date_prelevement"]), date.fromisoformat(first["date_validation"])) in loaded
    # Text identifiers keep their leading zeros and letters (2A, 2B): the same values, as text.
    identifiers = [c for c in ("nir", "code_postal", "telephone", "code_commune_insee") if c in got.fields]
    for column in identifiers:
        in_file = sorted({r[column] for r in rows if r[column]})
        sql = f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL"  # noqa: S608
        assert sorted(v for (v,) in db.query(sql)) == in_file
    assert any(r[c].startswith("0") for r in rows for c in identifiers), "no leading zero to check in the batch"
    if "nir" in got.fields:  # a NIR whole, its leading sex and year digits included
        assert db.query(f"SELECT nir FROM {table} WHERE nir = %s", first["nir"])[0] == (first["nir"],)  # noqa: S608
    if "date_naissance" in got.fields:
        births = sorted(date.fromisoformat(r["date_naissance"]) for r in rows)
        sql = f"SELECT min(date_naissance), max(date_naissance) FROM {table}"  # noqa: S608
        assert db.query(sql) == [(births[0], births[-1])]
    if "age" in got.fields:
        assert db.query("SELECT sum(age)::int, pg_typeof(min(age))::text FROM spf_results") == [
            (sum(int(r["age"]) for r in rows), "smallint")
        ]


def test_the_daily_load_script_loads_each_batch_once(db: Database, fetched: dict[str, Fetched]) -> None:
    ok(db.psql(create_table("labrelay_loads")))
    for recipient, table in SHAPES.items():
        ok(db.psql(create_table(table)))
        got = fetched[recipient]
        data = got.path.read_bytes()
        ok(db.psql(load_script(), stdin=data, variables={"target": table}))
        again = db.psql(load_script(), stdin=data, variables={"target": table})
        assert again.returncode == 3, again.stderr.decode(errors="replace")  # psql: error in the script
        assert b"duplicate key" in again.stderr
        assert db.query(f"SELECT count(*) FROM {table}") == [(got.records,)]  # noqa: S608
        assert db.query("SELECT batch_id::text, sender, row_count FROM labrelay_loads WHERE target = %s", table) == [
            (got.batch_id, SENDER, got.records)
        ]


def test_header_match_refuses_a_table_whose_columns_are_in_another_order(
    db: Database, fetched: dict[str, Fetched]
) -> None:
    """The check the doc relies on can fail: the CNAM table with two columns swapped refuses the file."""
    swapped = create_table("cnam_results")
    nom = next(ln for ln in swapped.splitlines() if ln.strip().startswith("nom "))
    prenom = next(ln for ln in swapped.splitlines() if ln.strip().startswith("prenom "))
    swapped = swapped.replace(nom, "\0").replace(prenom, nom).replace("\0", prenom)
    ok(db.psql(swapped))
    result = db.psql(with_file(copy_line("cnam_results"), fetched["cnam"].path))
    assert result.returncode != 0
    assert b"header" in result.stderr.lower()
    assert db.query("SELECT count(*) FROM cnam_results") == [(0,)]


def test_an_untagged_payload_is_refused(db: Database, fetched: dict[str, Fetched], tmp_path: Path) -> None:
    """A payload as the lab wrote it, without fetch's two columns, does not load into the doc's table."""
    untagged = tmp_path / "untagged.csv"
    untagged.write_bytes(fetched["spf"].payload)
    ok(db.psql(create_table("spf_results")))
    result = db.psql(with_file(copy_line("spf_results"), untagged))
    assert result.returncode != 0
    assert b"header" in result.stderr.lower()
