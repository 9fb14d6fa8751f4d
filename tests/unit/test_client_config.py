"""The client's labrelay.toml: where it is found, what it may say, and that flags and the environment override it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from labrelay.cli.app import build_app
from labrelay.cli.config_file import config_for, default_map
from labrelay.client.config import CLIENT_KEYS, ClientConfig, find_config
from labrelay.client.keystore import Authority, Party
from labrelay.clock import SystemClock
from labrelay.domain.parties import Role
from labrelay.errors import UsageError
from tests.support.world import REPO, call_cli


def organisation(tmp_path: Path, text: str) -> Path:
    """An organisation's directory: one lab party and a labrelay.toml beside it."""
    auth = Authority.init(tmp_path / "auth")
    org = tmp_path / "org"
    Party.create(org, "lab-a", Role.LAB, None, auth.path / "authority.pub", SystemClock().now())
    (org / "labrelay.toml").write_text(text, encoding="utf-8")
    return org


def unreachable(result_err: str) -> str:
    """The relay URL a failed run tried (the proof of which setting won)."""
    match = re.search(r"relay (\S+) unreachable", result_err)
    assert match, result_err
    return match.group(1)


def test_relative_paths_are_the_files_own(tmp_path: Path) -> None:
    (tmp_path / "labrelay.toml").write_text('server = "https://r"\ncacert = "ca.pem"\nparty = "p"\n[agent]\nx = 1\n')
    config = ClientConfig.read(tmp_path / "labrelay.toml")
    assert config.server == "https://r"
    assert config.cacert == tmp_path.resolve() / "ca.pem"
    assert config.party == tmp_path.resolve() / "p"
    assert config.agent == {"x": 1}
    assert config.resolve("inbox") == tmp_path.resolve() / "inbox"
    assert config.resolve("../outbox") == tmp_path.resolve().parent / "outbox"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('sever = "https://r"\n', "unknown setting(s) sever"),
        ('server = ""\n', "'server' must be a non-empty string"),
        ("party = 3\n", "'party' must be a non-empty string"),
        ('agent = "on"\n', "'agent' must be a table"),
        ("server = https://r\n", "not valid TOML"),
    ],
)
def test_mistakes_are_usage_errors(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "labrelay.toml").write_text(text)
    with pytest.raises(UsageError, match=re.escape(says)):
        ClientConfig.read(tmp_path / "labrelay.toml")


def test_found_beside_the_party_or_named(tmp_path: Path) -> None:
    org = organisation(tmp_path, 'server = "https://beside"\n')
    other = tmp_path / "other.toml"
    other.write_text('server = "https://named"\n')
    beside = find_config(None, org / "lab-a")
    named = find_config(other, org / "lab-a")
    assert beside is not None
    assert beside.server == "https://beside"
    assert named is not None
    assert named.server == "https://named"
    assert find_config(None, tmp_path / "nowhere" / "lab-a") is None
    with pytest.raises(UsageError, match="not found"):
        find_config(tmp_path / "missing.toml", None)


def test_root_config_is_read_before_the_command_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABRELAY_CONFIG", raising=False)
    org = organisation(tmp_path, 'server = "https://beside"\n')
    other = tmp_path / "other.toml"
    other.write_text('server = "https://named"\n')
    named = config_for(["--retries", "0", "--config", str(other), "directory", "--as", str(org / "lab-a")])
    beside = config_for(["directory", f"--as={org / 'lab-a'}"])
    assert named is not None
    assert named.server == "https://named"
    assert beside is not None
    assert beside.server == "https://beside"
    assert config_for(["agent", "--config", str(other)]) is None  # the agent's own option, read by the agent
    monkeypatch.setenv("LABRELAY_CONFIG", str(other))
    from_env = config_for(["directory"])
    assert from_env is not None
    assert from_env.server == "https://named"


def test_fills_what_commands_require_never_what_they_leave_optional(tmp_path: Path) -> None:
    config = ClientConfig(tmp_path / "labrelay.toml", server="https://r", cacert=tmp_path / "ca", party=tmp_path / "p")
    defaults = default_map(typer.main.get_command(build_app()), config)
    assert defaults["send"] == {"server": "https://r", "cacert": str(tmp_path / "ca"), "as_": str(tmp_path / "p")}
    assert defaults["party"]["enroll"]["server"] == "https://r"
    assert "as_" not in defaults["validate"]
    assert "server" not in defaults["validate"]
    assert defaults["synth"] == {}


def test_flags_and_environment_override_the_file(tmp_path: Path) -> None:
    org = organisation(tmp_path, 'server = "http://127.0.0.1:9"\nparty = "lab-a"\n')
    toml = org / "labrelay.toml"
    from_file = call_cli("--retries", "0", "--config", toml, "directory")
    from_flag = call_cli("--retries", "0", "--config", toml, "directory", "--server", "http://127.0.0.1:7")
    from_env = call_cli(
        "--retries", "0", "directory", "--as", org / "lab-a", env={"LABRELAY_SERVER": "http://127.0.0.1:6"}
    )
    beside = call_cli("--retries", "0", "directory", "--as", org / "lab-a")
    assert unreachable(from_file.err) == "http://127.0.0.1:9"
    assert unreachable(from_flag.err) == "http://127.0.0.1:7"
    assert unreachable(from_env.err) == "http://127.0.0.1:6"
    assert unreachable(beside.err) == "http://127.0.0.1:9"


def test_a_bad_file_stops_the_run_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('sever = "https://r"\n')
    result = call_cli("--config", tmp_path / "bad.toml", "directory")
    assert result.code == 2
    assert "unknown setting(s) sever" in result.err
    assert call_cli("--config", tmp_path / "missing.toml", "directory").code == 2


def test_every_key_documented() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("# Client configuration", 1)[1]
    for key in CLIENT_KEYS:
        assert f"| `{key}` |" in section, f"docs/configuration.md does not describe {key}"
