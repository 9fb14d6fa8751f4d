"""``labrelay server init`` and the relay's settings file: no database password is ever written to relay.toml or
read from it, and relay.toml is the relay user's alone (0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from labrelay.client.keystore import Authority
from labrelay.config import load_settings
from labrelay.errors import UsageError

SECRET = "s3cret-Pa55"
WITH_PASSWORD = [
    f"postgresql+psycopg://labrelay:{SECRET}@127.0.0.1:5432/labrelay",
    f"postgresql+psycopg://labrelay@127.0.0.1:5432/labrelay?sslmode=require&password={SECRET}",
    f"postgresql+psycopg://labrelay:{SECRET}@/labrelay?host=/run/postgresql",
]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def refused_for_its_password(out: str, err: str) -> None:
    assert "PGPASSWORD" in err, err
    assert ".pgpass" in err, err
    assert SECRET not in out + err  # the refusal does not echo the secret either


@pytest.mark.threat("T38")
@pytest.mark.parametrize("url", WITH_PASSWORD)
def test_server_init_refuses_a_database_password_and_writes_relay_toml_0600(tmp_path: Path, cli, url: str) -> None:
    authority = Authority.init(tmp_path / "auth")
    data = tmp_path / "relay"
    with umask(0o022):  # the usual umask, under which a plain write is 0644
        refused = cli("server", "init", data, "--authority", authority.path / "authority.pub", "--database-url", url)
        assert refused.code == 2, str(refused)  # a usage error
        refused_for_its_password(refused.out, refused.err)
        assert not data.exists()  # refused before anything was written
        assert not any(SECRET in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())

        made = cli("server", "init", data, "--authority", authority.path / "authority.pub")
    assert made.code == 0, str(made)
    assert stat.S_IMODE((data / "relay.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


@pytest.mark.threat("T38")
def test_a_relay_toml_carrying_a_database_password_is_refused_at_load(tmp_path: Path, cli) -> None:
    """A relay.toml edited by hand to carry a password (or an environment that does): every command that reads
    the settings fails closed with the hint, and the secret is never printed."""
    authority = Authority.init(tmp_path / "auth")
    data = tmp_path / "relay"
    assert cli("server", "init", data, "--authority", authority.path / "authority.pub").code == 0
    config = data / "relay.toml"
    clean = config.read_text()
    assert 'database_url = ""' in clean
    for url in WITH_PASSWORD:
        config.write_text(clean.replace('database_url = ""', f'database_url = "{url}"'))
        for command in (["server", "upgrade", "--data", data], ["serve", "--data", data, "--port", "0"]):
            refused = cli(*command)
            assert refused.code == 2, str(refused)
            refused_for_its_password(refused.out, refused.err)
        with pytest.raises(UsageError, match="database_url") as raised:
            load_settings(data, environ={})
        refused_for_its_password("", raised.value.diagnostics())
    config.write_text(clean)
    with pytest.raises(UsageError, match="database_url") as raised:
        load_settings(data, environ={"LABRELAY_DATABASE_URL": WITH_PASSWORD[0]})
    refused_for_its_password("", raised.value.diagnostics())
    assert load_settings(data, environ={}).database_url == ""


def test_server_upgrade_says_when_no_routing_policy_is_in_force(tmp_path: Path, cli) -> None:
    """After an upgrade that leaves no policy in force (policies signed before they carried an issue, or none yet),
    the operator learns it from the upgrade, not from tonight's failed sends."""
    authority = Authority.init(tmp_path / "auth")
    assert cli("server", "init", tmp_path / "relay", "--authority", authority.path / "authority.pub").code == 0
    upgraded = cli("server", "upgrade", "--data", tmp_path / "relay")
    assert upgraded.code == 0, str(upgraded)
    assert "schema at" in upgraded.out
    assert "no routing policy is registered" in upgraded.err
    assert "labrelay authority publish-policy" in upgraded.err
