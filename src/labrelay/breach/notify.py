"""``labrelay breach notify``: the GDPR art. 33 notification draft (Markdown and JSON, in French) and, for every
person whose data was readable, the art. 34 communication — e-mails (mbox files) and printable PDF letters
(WeasyPrint), in batches.

The controller's details (organisation, DPO, awareness time, measures) come from a TOML file the DPO fills in
(``docs/breach.md`` has the template). Texts are Jinja2 templates in ``templates/``; every personal value is
HTML-escaped in letters (autoescape), and e-mails are plain text without links.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.header import Header
from email.utils import formatdate
from pathlib import Path
from typing import Any

import polars as pl
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from labrelay.domain.breach import CATEGORY_LABELS_FR
from labrelay.domain.timeutil import from_rfc3339, to_rfc3339
from labrelay.errors import Unreadable, UsageError

REQUIRED = ("organisme", "adresse", "representant", "dpo_nom", "dpo_email", "dpo_telephone", "decouverte")
DEADLINE = timedelta(hours=72)


@dataclass(frozen=True)
class Controller:
    doc: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Controller:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise Unreadable(f"{path}: {exc}") from None
        missing = [k for k in REQUIRED if not doc.get(k)]
        if missing:
            raise UsageError(f"{path}: missing {', '.join(missing)}", hint="docs/breach.md has the template")
        aware = doc["decouverte"]
        try:
            if isinstance(aware, datetime):  # a TOML date-time, unquoted
                if aware.tzinfo is None:
                    raise ValueError("no time zone")
                doc["decouverte"] = to_rfc3339(aware)
            from_rfc3339(str(doc["decouverte"]))
        except ValueError:
            raise UsageError(
                f"{path}: decouverte must be an instant with its zone, e.g. 2026-11-28T09:00:00Z"
            ) from None
        doc.setdefault("siren", "")
        doc.setdefault("ville", "")
        doc.setdefault("motif_retard", "")
        doc.setdefault("mesures_prises", [])
        doc.setdefault("mesures_envisagees", [])
        return cls(doc)

    @property
    def aware_at(self) -> datetime:
        return from_rfc3339(str(self.doc["decouverte"]))


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("labrelay.breach", "templates"),
        autoescape=select_autoescape(["html", "html.j2"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def art33(scope: dict[str, Any], controller: Controller, now: datetime) -> tuple[str, dict[str, Any]]:
    """The notification draft, as Markdown and as JSON (the same facts)."""
    persons = scope.get("persons")
    readable_persons = bool(persons and (persons["readable_patients"] or persons["readable_professionals"]))
    if persons is None and scope["transfers"]["readable"]:
        readable_persons = True  # without the DPO key, readable transfers mean readable persons
    labels = {k: CATEGORY_LABELS_FR[k] for k in CATEGORY_LABELS_FR}
    keys_compromised = bool(scope["incident"]["compromised"])
    facts = {
        "keys_compromised": keys_compromised,
        "now": to_rfc3339(now),
        "phase": "initiale",
        "late": now - controller.aware_at > DEADLINE,
        "c": controller.doc,
        "incident": scope["incident"]["description"],
        "t": scope["transfers"],
        "r": scope["records"],
        "persons": persons,
        "readable_persons": readable_persons,
        "readable_categories": [labels[c] for c in scope["categories"]["readable"]],
        "ciphertext_categories": [labels[c] for c in scope["categories"]["ciphertext"]],
    }
    markdown = _env().get_template("art33.md.j2").render(**facts)
    doc = {
        "type": "labrelay.gdpr-art33-draft.v1",
        "drafted_at": facts["now"],
        "late": facts["late"],
        "controller": {k: controller.doc[k] for k in (*REQUIRED, "siren")},
        "nature": {"incident": facts["incident"], "readable_data": readable_persons},
        "approximate_numbers": {"transfers": scope["transfers"], "records": scope["records"], "persons": persons},
        "categories": scope["categories"],
        "likely_consequences": "risque élevé : données de santé et d'identification lisibles"
        if readable_persons
        else "aucune donnée lisible : seules des données chiffrées de bout en bout ont été exposées",
        "late_reason": controller.doc["motif_retard"] if facts["late"] else None,
        "recipient_side_transfers": scope["transfers"]["recipient-side"],
        "measures": {"taken": controller.doc["mesures_prises"], "proposed": controller.doc["mesures_envisagees"]},
        "art34": {
            "owed": readable_persons,
            "exemption": None
            if readable_persons
            else "art. 34(3)(a) : données incompréhensibles pour toute personne non autorisée (chiffrement)",
        },
    }
    return markdown, doc


def _people(affected: pl.DataFrame | Iterable[pl.DataFrame]) -> Iterator[dict[str, str]]:
    for frame in [affected] if isinstance(affected, pl.DataFrame) else affected:
        yield from _rows(frame)


def _rows(frame: pl.DataFrame) -> Iterator[dict[str, str]]:
    for row in frame.iter_rows(named=True):
        cats = [c for c in str(row.get("categories") or "").split(";") if c]
        yield {
            **{k: str(v or "") for k, v in row.items()},
            "categories_fr": "; ".join(CATEGORY_LABELS_FR.get(c, c) for c in cats) or "données d'identification",
        }


@dataclass
class Letters:
    letters: int = 0
    emails: int = 0
    to_call: int = 0  # persons with neither postal address nor e-mail (prescribers): a phone list
    files: int = 0
    persons: int = 0  # every person of the list, handled once


_TO_CALL = ("kind", "person", "nom", "telephone", "categories_fr")


class _Art34Writer:
    """Letters and e-mails, in batch files, as persons come."""

    def __init__(self, controller: Controller, common: dict[str, Any], out: Path, batch_size: int, pdf: bool) -> None:
        env = _env()
        self.letter_t, self.email_t = env.get_template("letter.html.j2"), env.get_template("email.txt.j2")
        self.controller, self.common, self.out = controller, common, out
        self.batch_size, self.pdf = batch_size, pdf
        self.result = Letters()
        self.mbox_files = 0
        sender = str(controller.doc["dpo_email"])
        if any(c in sender for c in "\r\n<>,;"):
            raise UsageError("dpo_email is not a plain e-mail address")
        subject = Header(f"{controller.doc['organisme']} : incident de sécurité concernant vos données", "utf-8")
        self._envelope_line = f"From {sender} {time.asctime(time.gmtime())}\n".encode()
        self._headers = (
            f"From: {sender}\nSubject: {subject.encode()}\nDate: {formatdate(usegmt=True)}\nMIME-Version: 1.0\n"
            'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: 8bit\n\n'
        ).encode()
        self.letters: list[dict[str, str]] = []
        self.mails: list[dict[str, str]] = []
        self.to_call: list[dict[str, str]] = []  # written to a-appeler.csv by batches
        for sub in ("lettres", "courriels"):
            folder = out / sub
            if folder.exists() and any(folder.iterdir()):
                raise UsageError(
                    f"{folder} already holds letters or e-mails from an earlier run",
                    hint="write to a new directory with --out, so that no batch is mixed with another",
                )
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def add(self, person: dict[str, str]) -> None:
        if person.get("adresse"):
            self.letters.append(person)
            if len(self.letters) >= self.batch_size:
                self.flush_letters()
        email = person.get("email", "")
        writable = bool(email) and "@" in email and not any(c in email for c in '\r\n,;<>" ')
        if writable:
            self.mails.append(person)
            if len(self.mails) >= self.batch_size:
                self.flush_mails()
        if not person.get("adresse") and not writable:
            self.to_call.append(person)  # neither a letter nor an e-mail can reach them
            if len(self.to_call) >= self.batch_size:
                self.flush_to_call()

    def flush_letters(self) -> None:
        if not self.letters:
            return
        self.result.files += 1
        html = self.letter_t.render(people=self.letters, **self.common)
        target = self.out / "lettres" / f"lettres-{self.result.files:05d}"
        if self.pdf:
            from weasyprint import HTML  # noqa: PLC0415 - heavy; only when letters are printed

            written = target.with_suffix(".pdf")
            HTML(string=html).write_pdf(str(written))
        else:
            written = target.with_suffix(".html")
            written.write_text(html, encoding="utf-8")
        written.chmod(0o600)  # letters name persons and say what was exposed
        self.result.letters += len(self.letters)
        self.letters.clear()

    def flush_mails(self) -> None:
        """One mbox file per batch, written directly: the ``email`` package's objects cost about 3 ms a message,
        which at a million persons is most of an hour. Headers are fixed but for the recipient; the body is UTF-8
        text (8bit); lines starting with "From " are quoted as mbox requires."""
        if not self.mails:
            return
        self.mbox_files += 1
        path = self.out / "courriels" / f"courriels-{self.mbox_files:05d}.mbox"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            for person in self.mails:
                address = person["email"]
                if any(c in address for c in '\r\n,;<>"') or "@" not in address:
                    self.to_call.append(person)  # not an address we can write to safely
                    continue
                body = self.email_t.render(p=person, **self.common)
                body = "\n".join(">" + line if line.startswith("From ") else line for line in body.splitlines())
                fh.write(self._envelope_line)
                fh.write(f"To: {address}\n".encode())
                fh.write(f"Message-ID: <{uuid.uuid4()}@labrelay.invalid>\n".encode())
                fh.write(self._headers)
                fh.write(body.encode("utf-8") + b"\n\n")
                self.result.emails += 1
        self.mails.clear()

    def flush_to_call(self) -> None:
        """Append the persons to call to ``a-appeler.csv`` (0600), created, with its header, by the first batch."""
        if not self.to_call:
            return
        path = self.out / "a-appeler.csv"
        first = self.result.to_call == 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if first else os.O_APPEND), 0o600)
        with os.fdopen(fd, "wb") as fh:
            frame = pl.DataFrame(self.to_call).select(_TO_CALL)
            fh.write(frame.write_csv(include_header=first).encode())
        self.result.to_call += len(self.to_call)
        self.to_call.clear()

    def finish(self) -> Letters:
        self.flush_letters()
        self.flush_mails()  # may add to the persons to call
        self.flush_to_call()
        return self.result


def art34(
    affected: pl.DataFrame | Iterable[pl.DataFrame],
    controller: Controller,
    nature: str,
    measures: str,
    out: Path,
    now: datetime,
    *,
    batch_size: int = 1000,
    pdf: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> Letters:
    """Letters (PDF, ``batch_size`` per file) for persons with a postal address, e-mails (mbox, ``batch_size``
    per file) for those with an e-mail address, and a call list (``a-appeler.csv``) for the others.
    ``affected`` is the list, or its blocks as read (``labrelay.breach.blocks.read_blocks``): only a block and a
    batch of each kind is held at a time. ``on_progress(n)`` is told of every ``n`` persons handled."""
    common = {"c": controller.doc, "nature": nature, "measures": measures, "today": f"{now:%d/%m/%Y}"}
    writer = _Art34Writer(controller, common, out, batch_size, pdf)
    done = 0
    for person in _people(affected):
        writer.add(person)
        done += 1
        if on_progress is not None and done % 100 == 0:
            on_progress(100)
    result = writer.finish()
    result.persons = done
    if on_progress is not None and done % 100:
        on_progress(done % 100)
    return result


def nature_text(scope: dict[str, Any]) -> str:
    parts = scope["incident"]["description"]
    return (
        "Des données transmises par notre laboratoire ont pu être lues par un tiers non autorisé ("
        + "; ".join(parts)
        + ")."
    )


def measures_text(controller: Controller) -> str:
    taken = controller.doc["mesures_prises"]
    return " ".join(str(m).rstrip(".") + "." for m in taken) if taken else "Les accès concernés ont été révoqués."


def write_art33(out: Path, markdown: str, doc: dict[str, Any]) -> None:
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    (out / "notification-cnil.md").write_text(markdown, encoding="utf-8")
    (out / "notification-cnil.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
