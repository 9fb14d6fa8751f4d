"""Crash safety: the relay (and, at scale, its replicas and worker) is killed with SIGKILL while labs upload, a
recipient downloads and sends receipts, and the reaper expires short-lived transfers; then restarted and checked.

The kills follow a schedule (tests/support/crash.py): each phase of a transfer's life in turn, on a signal from the
driver that it is there (half of an upload chunk on the wire; the last byte of the last chunk sent; a receipt being
sent; a deadline just passed, within a reaper pass), then random moments. So the closing assertions hold by design,
not by luck: ten kills cover each phase twice. After every restart: no partial payload is visible, no acknowledged
byte or receipt is lost, nothing past its deadline is served, and the audit chain verifies (incrementally).

``LABRELAY_CRASH_KILLS`` sets the number of kills (10 by default); ``./dev bench crash`` runs 50 random ones per
configuration and prints where they landed.
"""

from __future__ import annotations

import os
import random  # noqa: TID251 - seeded, reproducible kill moments; nothing secret
from pathlib import Path

import pytest

from tests.support.crash import PHASES, REAPER_INTERVAL, Crasher, schedule
from tests.support.world import Scaled, make_world

KILLS = int(os.environ.get("LABRELAY_CRASH_KILLS", "10"))


@pytest.mark.scaled("replicas, the worker or all of them killed; PostgreSQL and S3 keep what was acknowledged")
@pytest.mark.timeout(900)
@pytest.mark.threat("T21")
def test_kill_in_each_phase_and_at_random_moments(tmp_path: Path, relay_factory, deployment: Scaled | None) -> None:
    settings = {"reaper_interval": f'"{REAPER_INTERVAL:.0f}s"', "detect_lock_on": '"none"'}
    world = make_world(tmp_path / "world", relay_factory, settings=settings, scaled=deployment)
    work = tmp_path / "work"
    work.mkdir()
    rng = random.Random(20261129)
    crasher = Crasher(world, rng, work)
    planned = schedule(KILLS, rng)
    landed = [crasher.cycle(phase) for phase in planned]
    print(crasher.summary())
    # Each scheduled kill landed in its phase (the crasher checked that phase's own outcome after the restart).
    for phase in PHASES:
        assert landed.count(phase) == planned.count(phase), (phase, landed)
    if len(PHASES) * 2 <= KILLS:
        assert all(planned.count(phase) >= 2 for phase in PHASES), planned
    acknowledged = crasher.acknowledged
    assert acknowledged.receipted, crasher.summary()
    assert acknowledged.short_lived, crasher.summary()
    assert acknowledged.complete, crasher.summary()
    assert crasher.audit_seq > 0, "the audit chain was never walked"
