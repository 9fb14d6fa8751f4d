"""The demo's search of the relay's files for the batch's plaintext: every identifying value, one pass per file.

A value counts when it stands in a file as a value, not run into ASCII letters or digits on either side
(:func:`holds_value`). That rule is what makes one pass enough: wherever a value stands as a value, each maximal run
of letters and digits inside it (one of its *runs*) is also a maximal run of the file, since what borders it, in the
value or past its ends, is not a letter or a digit. So each file is cut once into its runs (a regular expression,
in C), and

- a value that is one run (a NIR, a phone number, most names) stands in the file exactly when it is one of the
  file's runs: a set lookup;
- a value of several runs (an e-mail address, a hyphenated or accented name, a first and last name) can stand in
  the file only if its longest run is one of the file's runs; those few candidates are confirmed by
  :func:`holds_value` itself;
- a value without any letter or digit (possible with ``--input``) is searched by :func:`holds_value`.

The result is exactly the set of values for which :func:`holds_value` holds (tests/unit/test_demo_scan.py checks
it against random data with values planted at the edges), for every value of the batch, where the demo used to
search a sample of 20,000 of them, each through every file (about 100 s at 20,000 records).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

_RUN = re.compile(rb"[A-Za-z0-9]+")


def holds_value(data: bytes, value: bytes) -> bool:
    """Whether ``value`` stands in ``data`` as a value: not run into letters or digits on either side. Plaintext
    leaks as text (CSV, JSON, a log line), where a value is delimited; the relay's files also hold megabytes of
    random base64 and hex (nonces, signatures, keys, digests, rewritten many times over in SQLite's WAL), in which a
    six-letter name turns up by chance now and then, inside a longer token."""
    start = data.find(value)
    while start >= 0:
        end = start + len(value)
        if not (data[start - 1 : start].isalnum() or data[end : end + 1].isalnum()):
            return True
        start = data.find(value, start + 1)
    return False


class NeedleSet:
    """Values to search files for, indexed once by their runs of ASCII letters and digits."""

    def __init__(self, values: Iterable[bytes]) -> None:
        self.values = frozenset(values)
        self.whole: set[bytes] = set()  # one run each: found when the file has that run
        self.by_run: dict[bytes, list[bytes]] = {}  # several runs: their longest run → the values
        self.bare: list[bytes] = []  # no letter or digit (or empty): searched one by one
        for value in self.values:
            runs = _RUN.findall(value)
            if not runs:
                self.bare.append(value)
            elif runs[0] == value:
                self.whole.add(value)
            else:
                self.by_run.setdefault(max(runs, key=len), []).append(value)
        keys = [*self.whole, *self.by_run]
        # Only runs as long as the shortest key can matter: the file's shorter runs are not collected at all.
        self._runs_of_file = re.compile(rb"[A-Za-z0-9]{%d,}" % min((len(k) for k in keys), default=1))

    def __len__(self) -> int:
        return len(self.values)

    def found_in(self, data: bytes) -> set[bytes]:
        """The values that stand in ``data`` as values (exactly those for which :func:`holds_value` holds)."""
        if not self.values:
            return set()
        runs = set(self._runs_of_file.findall(data))
        found = self.whole & runs
        for run in runs.intersection(self.by_run):
            found.update(v for v in self.by_run[run] if holds_value(data, v))
        found.update(v for v in self.bare if holds_value(data, v))
        return found


@dataclass
class ScanReport:
    """What one scan of a directory found: the files holding a value (relative paths), and what it read."""

    hits: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    values: int = 0


def scan_tree(root: Path, needles: NeedleSet) -> ScanReport:
    """Every file under ``root`` read once and searched for every value of ``needles``."""
    report = ScanReport(values=len(needles))
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        report.files += 1
        report.bytes += len(data)
        if needles.found_in(data):
            report.hits.append(str(path.relative_to(root)))
    report.hits.sort()
    return report
