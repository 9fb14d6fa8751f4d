"""Fixtures: real relay processes on port 0, enrolled parties on each deployment, the CLI as a child process,
synthetic batches. The machinery lives in tests/support/; the services (PostgreSQL, S3, a browser) are plugins, one
of each per xdist worker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.support")

from labrelay.synthetic.generator import write_csv_file  # noqa: E402
from tests.support.world import (  # noqa: E402
    CliResult,
    RelayFactory,
    Scaled,
    World,
    call_cli,
    make_world,
    scaled_backing,
)

pytest_plugins = ["tests.support.pgserver", "tests.support.s3server", "tests.support.browser", "tests.support.order"]


@pytest.fixture
def cli(tmp_path: Path):
    """``labrelay ARGS`` in this process (``call_cli``), from ``tmp_path``; tests of the process boundary (exit codes
    and output of a real process: tests/integration/test_cli_flow.py) take ``run_cli`` instead."""

    def go(*args: str | Path, **kwargs) -> CliResult:
        kwargs.setdefault("cwd", tmp_path)
        kwargs.pop("timeout", None)
        return call_cli(*args, **kwargs)

    return go


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    factory = RelayFactory()
    yield factory
    factory.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes a ``world`` (or the ``deployment`` fixture) runs on the embedded default (SQLite, a local
    directory, one process). It runs on the scaled configuration too (PostgreSQL, S3, two replicas behind a balancer,
    one worker) only when it is marked ``@pytest.mark.scaled("what it proves there")``: most tests exercise the
    client or the HTTP edge, which are the same on both storages."""
    if "deployment" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("scaled")
    if marker is not None and not (marker.args and isinstance(marker.args[0], str) and marker.args[0].strip()):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.scaled needs a reason (what it proves)")
    metafunc.parametrize("deployment", ["embedded", "scaled"] if marker else ["embedded"], indirect=True)


@pytest.fixture
def deployment(request: pytest.FixtureRequest) -> Scaled | None:
    """The relay's storage for one test: None on the embedded default, or a fresh database and bucket on the
    worker's PostgreSQL cluster and S3 server (parametrized by ``pytest_generate_tests``)."""
    if request.param == "embedded":
        return None
    return scaled_backing(request)


@pytest.fixture
def world(tmp_path: Path, relay_factory, deployment: Scaled | None) -> World:
    """An authority, a running relay, a lab and two recipients, all enrolled; on each deployment."""
    return make_world(tmp_path / "world", relay_factory, scaled=deployment)


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """A synthetic batch of 300 lab results (CSV template)."""
    path = tmp_path / "results.csv"
    write_csv_file(path, 300, seed=7, today=date.today())  # noqa: DTZ011 - a calendar day
    return path
