"""The client-only install (docs/deployment.md, "Installing from the wheel"): the wheel as ./dev wheel builds it,
installed with ``--no-deps`` into a fresh venv that sees the runtime lock's distributions and nothing else.

Installing requirements.lock for real downloads about 150 MB and takes 40 s or more (the walk in the docs, timed
by hand); here the fresh venv gets those very distributions, at the very versions, from the test venv by symlinks
(a .pth file naming a directory of them), which takes no network and a second. What it proves is the same: the
wheel carries everything it needs (data, templates, the pages' bundle, its entry point), declares dependencies the
runtime lock satisfies (``pip check``), and runs with no test, lint or build tool installed."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.world import REPO

DEV_TOOLS = ["pytest", "ruff", "mypy", "hatchling", "playwright", "moto", "hypothesis"]
LOCK_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*(?:\[[^\]]*\])?==[^ \\;]+(?: *;[^\\]*)?)", re.MULTILINE)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ./dev wheel runs, into a temporary directory."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("labrelay-*.whl")
    return built


def runtime_lock() -> list[Requirement]:
    """requirements.lock's pins that apply to this platform."""
    text = (REPO / "requirements.lock").read_text(encoding="utf-8")
    pins = [Requirement(entry) for entry in LOCK_ENTRY.findall(text)]
    assert len(pins) > 20, "requirements.lock read"
    return [pin for pin in pins if pin.marker is None or pin.marker.evaluate()]


def _runtime_site(into: Path) -> Path:
    """A directory of symlinks to exactly the runtime lock's distributions, as installed in this venv (the dev
    lock pins them at the same versions: checked)."""
    into.mkdir()
    for pin in runtime_lock():
        dist = importlib.metadata.distribution(pin.name)
        assert pin.specifier.contains(dist.version), f"{pin.name} {dist.version} here, {pin} in requirements.lock"
        for top in {f.parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            link = into / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))))
    return into


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages), the runtime lock beside it, the wheel installed into it."""
    base = tmp_path_factory.mktemp("client")
    env = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=60)
    python = env / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "runtime-lock.pth").write_text(f"{_runtime_site(base / 'runtime')}\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", str(wheel)], check=True, timeout=120)
    return env


def _run(env: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": f"{env / 'bin'}:/usr/bin:/bin", "LABRELAY_QUIET": "1"},
        timeout=120,
        check=False,
    )


def test_the_wheel_holds_the_package_and_its_files_and_nothing_else(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source = REPO / "src"
    shipped = {
        str(p.relative_to(source))
        for p in (source / "labrelay").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert {n for n in names if not n.startswith("labrelay-")} == shipped
    for needed in [
        "labrelay/http/web/static/app.js",  # the pages' bundle, which the relay serves with Python alone
        "labrelay/http/web/templates/page.html",
        "labrelay/data/default-policy.toml",
        "labrelay/breach/templates/letter.html.j2",
        "labrelay/storage/migrations/script.py.mako",
    ]:
        assert needed in names
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "labrelay = labrelay.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_runtime_lock_satisfies_the_wheel_and_no_dev_tool_is_there(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    check = _run(venv, sys.executable, "-m", "pip", "--python", python, "check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    for tool in DEV_TOOLS:
        found = _run(
            venv, python, "-c", f"import importlib.util as u; print(u.find_spec({tool!r}) is None)", cwd=tmp_path
        )
        assert found.stdout.strip() == "True", f"{tool} is importable in the client venv"
    where = _run(venv, python, "-c", "import labrelay; print(labrelay.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), "labrelay from the wheel, not from src/"


def test_the_installed_client_runs(venv: Path, tmp_path: Path) -> None:
    labrelay = venv / "bin" / "labrelay"
    version = _run(venv, labrelay, "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, "labrelay 0.1.0"), version.stderr
    for args in [
        ("authority", "init", "auth"),
        ("party", "new", "lab-paris", "--role", "lab", "--authority", "auth/authority.pub", "--out", "parties"),
        ("synth", "50", "--out", "results.csv"),
        ("validate", "results.csv", "--json"),
    ]:
        done = _run(venv, labrelay, *args, cwd=tmp_path)
        assert done.returncode == 0, f"labrelay {' '.join(args)}\n{done.stdout}{done.stderr}"
    assert (tmp_path / "parties" / "lab-paris").is_dir()
    summary = json.loads(done.stdout)["summary"]
    assert (summary["read"], summary["accepted"], summary["reconciled"]) == (50, 50, True)
