"""Relay settings: defaults, overrides, refusal of unknown keys, and every setting documented."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from labrelay.config import SETTING_NAMES, RelaySettings, load_settings, render_config
from labrelay.errors import UsageError
from tests.support.world import REPO


def write(tmp_path: Path, settings: RelaySettings | None = None, extra: str = "") -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "relay.toml").write_text(render_config(settings or RelaySettings(tmp_path)) + extra)
    return tmp_path


def test_written_defaults_read_back(tmp_path: Path) -> None:
    loaded = load_settings(write(tmp_path), environ={})
    assert loaded == RelaySettings(tmp_path.resolve())
    assert loaded.max_ttl == timedelta(days=30)


def test_environment_overrides_one_run(tmp_path: Path) -> None:
    loaded = load_settings(write(tmp_path), environ={"LABRELAY_MAX_TTL": "3d", "LABRELAY_CLOCK_SKEW": "10s"})
    assert loaded.max_ttl == timedelta(days=3)
    assert loaded.clock_skew == timedelta(seconds=10)


@pytest.mark.parametrize(
    ("extra", "env"),
    [('surprise = "x"\n', {}), ("", {"LABRELAY_MAX_TTL": "forever"}), ("", {"LABRELAY_MAX_PAYLOAD_BYTES": "-5"})],
)
def test_unknown_or_invalid_settings_refused(tmp_path: Path, extra: str, env: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        load_settings(write(tmp_path, extra=extra), environ=env)


def test_not_a_data_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a relay data directory"):
        load_settings(tmp_path, environ={})


def test_every_setting_is_documented() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in SETTING_NAMES:
        assert f"| `{name}` |" in text, f"docs/configuration.md does not describe {name}"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LABRELAY_PAYLOAD_STORE": "ftp"}, "payload_store"),
        ({"LABRELAY_PAYLOAD_STORE": "s3"}, "s3_endpoint and s3_bucket"),  # no endpoint: never a default AWS guess
        (
            {"LABRELAY_PAYLOAD_STORE": "s3", "LABRELAY_S3_BUCKET": "b", "LABRELAY_S3_ENDPOINT": "http://s3.example"},
            "loopback",
        ),  # credentials and payloads in clear across a network
        ({"LABRELAY_S3_ENDPOINT": "ftp://127.0.0.1:9000"}, "s3_endpoint"),
        ({"LABRELAY_BACKGROUND": "cron"}, "background"),
    ],
)
def test_scaled_settings_fail_closed(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        load_settings(write(tmp_path), environ=env)


def test_s3_over_https_or_loopback_http_is_accepted(tmp_path: Path) -> None:
    for endpoint in ("https://s3.example", "http://127.0.0.1:9000"):
        env = {"LABRELAY_PAYLOAD_STORE": "s3", "LABRELAY_S3_BUCKET": "b", "LABRELAY_S3_ENDPOINT": endpoint}
        assert load_settings(write(tmp_path), environ=env).s3_endpoint == endpoint
