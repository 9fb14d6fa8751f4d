"""The systemd units under deploy/systemd (docs/deployment.md, "Running it as a service").

``systemd-analyze verify`` reads each unit as systemd would and fails on anything it complains about, warnings
included (it exits 0 on an unknown key or a misspelt section, so its output must be empty too). It also refuses a
unit whose ``ExecStart=`` binary does not exist: it runs with ``--root`` on a throwaway tree that holds systemd's
own units and an executable at /opt/labrelay/bin/labrelay, where the wheel is installed. ``systemd-analyze
security --offline`` scores each service's sandbox. Skipped where systemd-analyze is missing, except in CI
(``LABRELAY_CI=1``), where ./dev installs it (Debian's ``systemd``). The rest reads the units as text: the sandbox
every service shares, the exit codes they do not restart on, the timers and the commands they run."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labrelay.cli import ui
from tests.support.world import REPO, call_cli

UNITS = REPO / "deploy" / "systemd"
BINARY = "/opt/labrelay/bin/labrelay"
MAX_EXPOSURE = 20  # in tenths (--threshold's unit) of systemd-analyze security's 0 (confined) to 10; ours: 1.1-1.2

# Every service's sandbox: what `systemd-analyze security` asks for, minus what the process needs (its network,
# its state directory). PrivateUsers= is on the relay's side only: the agent shares its outbox with the lab's
# information system through a group, which a private user namespace would hide.
SANDBOX = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "ProtectHostname": "yes",
    "ProtectClock": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RemoveIPC": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "UMask": "0077",
}
SYSCALLS = ["@system-service", "~@privileged @resources"]
RELAY_SIDE = {"labrelay-relay", "labrelay-worker", "labrelay-retention-check", "labrelay-audit-verify"}

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections of key -> every value given (systemd keys may repeat); no continuation lines in our units."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: keep each setting on one line"
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        assert section is not None, f"{path.name}:{number}: a setting before any section"
        assert "=" in line, f"{path.name}:{number}: not a setting: {line}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def _units(suffix: str) -> list[Path]:
    return sorted(UNITS.glob(f"*{suffix}"))


SERVICES = _units(".service")
TIMERS = _units(".timer")
ALL = SERVICES + TIMERS


def _one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times"
    return values[0]


def _long_running(unit: Unit) -> bool:
    return _one(unit, "Service", "Type") != "oneshot"


# ------------------------------------------------------------------ systemd-analyze


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("LABRELAY_CI"):
            pytest.fail("systemd-analyze is missing (Debian: apt-get install systemd); ./dev test installs it")
        pytest.skip("systemd-analyze is not installed")
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A filesystem tree for ``--root``: systemd's own units (the targets ours are ordered after), ours where an
    administrator installs them, and an executable where the wheel's venv puts ``labrelay``."""
    _systemd_analyze()
    tree = tmp_path_factory.mktemp("root")
    system = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    assert system is not None, "systemd-analyze without systemd's units"
    shutil.copytree(system, tree / "usr/lib/systemd/system", symlinks=True)
    (tree / "lib").symlink_to("usr/lib")
    installed = tree / "etc/systemd/system"
    installed.mkdir(parents=True)
    for path in ALL:
        shutil.copy(path, installed / path.name)
    binary = tree / BINARY.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    return tree


def _analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_systemd_analyze(), *args, f"--root={root}"], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_systemd_analyze_verify_finds_nothing_to_say(root: Path, path: Path) -> None:
    done = _analyze(root, "verify", "--man=no", str(root / "etc/systemd/system" / path.name))
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), f"systemd-analyze verify {path.name}"


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_every_service_scores_low_in_systemd_analyze_security(root: Path, path: Path) -> None:
    done = _analyze(root, "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", "--no-pager", path.name)
    assert done.returncode == 0, f"{path.name}: exposure above {MAX_EXPOSURE / 10}\n{done.stdout}{done.stderr}"
    assert "Overall exposure level" in done.stdout


# ------------------------------------------------------------------ the units as text


def test_the_units_are_the_ones_the_docs_name() -> None:
    names = {p.name for p in ALL}
    assert {
        "labrelay-relay.service",
        "labrelay-worker.service",
        "labrelay-agent.service",
        "labrelay-agent@.service",
        "labrelay-retention-check.timer",
        "labrelay-audit-verify.timer",
        "labrelay-audit-check.timer",
    } <= names
    guide = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert [n for n in sorted(names) if n not in guide] == [], "docs/deployment.md names every unit"


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_every_service_runs_the_wheel_as_its_own_user_in_the_sandbox(path: Path) -> None:
    unit = parse_unit(path)
    service = unit["Service"]
    assert all(cmd.startswith(BINARY + " ") for cmd in service["ExecStart"]), "the wheel's venv: /opt/labrelay"
    user = _one(unit, "Service", "User")
    assert user.startswith("labrelay"), "a dedicated user, never root"
    assert _one(unit, "Service", "Group") == user
    assert "DynamicUser" not in service, "static users: they own keys an operator creates before the first start"
    assert {k: _one(unit, "Service", k) for k in SANDBOX} == SANDBOX
    assert service["SystemCallFilter"] == SYSCALLS
    assert _one(unit, "Service", "StateDirectoryMode") == "0700"
    private_users = service.get("PrivateUsers") == ["yes"]
    assert private_users == (path.stem in RELAY_SIDE), "PrivateUsers= on the relay's side only"
    writable = service["StateDirectory"] + service.get("ReadWritePaths", [])
    assert writable, "ProtectSystem=strict: the unit says where the process writes"


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_a_usage_error_or_a_security_refusal_is_not_restarted_in_a_loop(path: Path) -> None:
    unit = parse_unit(path)
    if not _long_running(unit):
        assert "Restart" not in unit["Service"]
        return
    assert _one(unit, "Service", "Restart") == "on-failure"
    assert _one(unit, "Service", "RestartPreventExitStatus").split() == [str(ui.EXIT_USAGE), str(ui.EXIT_SECURITY)]
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"


def test_every_check_has_a_timer_and_every_timer_a_check() -> None:
    oneshots = {p.stem for p in SERVICES if not _long_running(parse_unit(p))}
    assert oneshots == {p.stem for p in TIMERS}
    for path in TIMERS:
        timer = parse_unit(path)
        assert _one(timer, "Timer", "Persistent") == "yes", f"{path.name}: a run missed while off is caught up"
        assert _one(timer, "Install", "WantedBy") == "timers.target"


def _cases() -> Iterator[object]:
    for path in SERVICES:
        for command in parse_unit(path)["Service"]["ExecStart"]:
            yield pytest.param(command, id=path.name)


@pytest.mark.parametrize("command", list(_cases()))
def test_every_command_a_unit_runs_is_one_the_cli_knows(command: str, tmp_path: Path) -> None:
    """Its words and options as the CLI parses them (``--help`` at the end: nothing runs). A ``--config`` file is
    replaced by one written here, since /etc/labrelay is the target machine's."""
    args = command.split()[1:]
    if "--config" in args:
        config = tmp_path / "labrelay.toml"
        config.write_text('server = "https://relay.example.fr"\nparty = "lab-paris"\n[agent]\n')
        args[args.index("--config") + 1] = str(config)
    result = call_cli(*args, "--help", cwd=tmp_path)
    assert result.code == 0, str(result)
