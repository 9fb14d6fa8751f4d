"""A JSON document kept in a file, written whole or not at all: what a party's client and the relay's worker both
keep beside them (checkpoints, reports, state). Standard library only, so every layer may use it."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, doc: Mapping[str, Any], mode: int = 0o600, *, dir_fd: int | None = None) -> None:
    """Write through a hidden temporary name (``mode``, never through a link, fsync'd), then rename over ``path``
    (with ``dir_fd``: a name in that open directory, so that a swapped path cannot redirect the write)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def read_json(path: Path) -> dict[str, Any]:
    """A file's JSON object (``ValueError`` if it holds anything else)."""
    with path.open(encoding="utf-8") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    return doc
