"""The relay's edge (labrelay.http.edge) in isolation: how requests declare bodies, framing refusals, per-address
connection counting, and the cap on limit reports. The same rules, from outside against a relay process:
tests/integration/test_relay_limits.py."""

from __future__ import annotations

import pytest

from labrelay.domain.names import parse_address
from labrelay.http.edge import (
    BUSY_RETRY_AFTER,
    MAX_REPORTS,
    EdgeLimits,
    EdgeState,
    _declares_body,
    _framing_refusal,
)


class FakeTransport:
    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


@pytest.mark.threat("T29")
def test_a_body_declared_by_any_header_is_timed_and_mixed_framing_is_refused() -> None:
    """``Content-Length: 0`` before ``Transfer-Encoding: chunked`` once let a body skip its timeout: h11 reads the
    chunked body, the edge believed there was none."""
    assert _declares_body([(b"content-length", b"0"), (b"transfer-encoding", b"chunked")])
    assert _declares_body([(b"transfer-encoding", b"chunked")])
    assert _declares_body([(b"content-length", b"12")])
    assert not _declares_body([(b"content-length", b"0")])
    assert not _declares_body([(b"host", b"relay")])
    assert _framing_refusal([(b"content-length", b"0"), (b"transfer-encoding", b"chunked")]) is not None
    assert _framing_refusal([(b"content-length", b"5")]) is None


@pytest.mark.threat("T29")
def test_an_ipv6_host_is_capped_by_its_64_and_limit_reports_are_capped() -> None:
    state = EdgeState(EdgeLimits(max_connections_per_address=3))
    state.per_address = True
    admitted = [state.admit((f"2001:db8:1:2::{i:x}", 40000 + i), FakeTransport()) for i in range(5)]  # type: ignore[arg-type]
    assert admitted == [True, True, True, False, False]
    assert state.admit(("2001:db8:1:3::1", 40000), FakeTransport())  # type: ignore[arg-type]  # another /64
    state.release(("2001:db8:1:2::0", 40000))
    assert state.admit(("2001:db8:1:2::99", 41000), FakeTransport())  # type: ignore[arg-type]

    state = EdgeState(EdgeLimits())
    reports: list[tuple[str, str | None, str | None]] = []
    state.on_limit = lambda limit, party, remote: reports.append((limit, party, remote))
    for i in range(MAX_REPORTS * 5):
        state.report("connections-per-address", None, f"198.51.100.{i % 250}")
    assert len(reports) == MAX_REPORTS
    assert state.suppressed == MAX_REPORTS * 5 - MAX_REPORTS


def test_a_forwarded_value_is_an_address_or_nothing() -> None:
    assert parse_address("203.0.113.9") == "203.0.113.9"
    assert parse_address("[2001:db8::1]:443") == "2001:db8::1"
    assert parse_address("203.0.113.9:8080") == "203.0.113.9"
    for junk in ("fe80::1%<img src=x onerror=1> evil", "<script>", "", "1.2.3", "relay.example"):
        assert parse_address(junk) is None, junk


@pytest.mark.threat("T28")
def test_a_partys_own_slots_ask_for_a_long_wait_the_processs_for_a_short_one() -> None:
    """A party at its own limit has uploads of its own in progress, perhaps stalled: it waits a sixth of the body
    timeout. The process's slots are everyone's and free as chunks complete: a burst of labs waits one second, so
    that the relay is not left idle while they wait (200 labs at once: 11 transfers a second with five)."""
    state = EdgeState(EdgeLimits(max_uploads=3, max_uploads_per_party=2, body_timeout=30.0))
    with state.upload_slot("lab-a"), state.upload_slot("lab-a"):
        own = state.upload_refusal("lab-a")
        assert own is not None
        assert own.retry_after == 5
        assert state.upload_refusal("lab-b") is None
        with state.upload_slot("lab-b"):
            busy = state.upload_refusal("lab-c")
            assert busy is not None
            assert busy.retry_after == BUSY_RETRY_AFTER == 1
            assert "3 uploads in progress" in busy.message
            with pytest.raises(type(busy)), state.upload_slot("lab-c"):
                pass
    assert state.upload_refusal("lab-c") is None  # every slot released
