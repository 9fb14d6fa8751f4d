"""The order the tests run in: the long ones first, spread over the pytest-xdist workers.

``./dev test`` runs two workers with work stealing: xdist hands each worker an equal share of the collected tests,
in collection order, and a worker that runs out steals the tail of another's queue. Left in file order, the long
tests (the nightly soak, the crash test, the benchmark comparison, the browser pages) could all land in one share
and run one after another while the other worker idles at the end. So each worker's share starts with its part of
the long tests, shared out longest first to the worker with the least expected work, and the short tests fill the
shares behind them, in file order (module fixtures stay together), to equal counts.

The expected seconds are measured on the 2-core machine (``pytest --durations=40``); a test not listed costs its
kind's default. They only order the run: no test depends on them, and a wrong figure costs minutes, not results.
"""

from __future__ import annotations

import pytest

# Node id prefix → expected seconds (the long ones, measured with two workers; refresh with --durations).
EXPECTED = {
    "tests/integration/test_crash.py::test_kill_in_each_phase_and_at_random_moments[scaled]": 110.0,
    "tests/integration/test_nightly.py": 120.0,
    "tests/integration/test_crash.py::test_kill_in_each_phase_and_at_random_moments[embedded]": 80.0,
    "tests/integration/test_web.py::test_lab_page": 75.0,
    "tests/integration/test_bench_compare.py": 80.0,
    "tests/integration/test_bench_pq.py": 100.0,
    "tests/integration/test_api_fuzz.py::test_signed": 40.0,
    "tests/integration/test_demo.py": 36.0,
    "tests/integration/test_routed_send.py": 25.0,
    "tests/integration/test_retention_flow.py::test_killed_mid_reaper": 28.0,
    "tests/integration/test_faults.py": 26.0,
    "tests/integration/test_api_fuzz.py": 24.0,
    "tests/integration/test_unattended.py": 12.0,
    "tests/integration/test_post_quantum.py": 14.0,
    "tests/integration/test_age_interop.py": 2.0,
    "tests/integration/test_web.py": 10.0,
    "tests/integration/test_detection.py": 10.0,
}
SCALED = 9.0  # a test on the scaled deployment: a database, a bucket, two replicas, a worker, a balancer
INTEGRATION = 3.0  # a relay process, parties enrolled, a few CLI runs
UNIT = 0.3


def expected_seconds(item: pytest.Item) -> float:
    for prefix, seconds in EXPECTED.items():
        if item.nodeid.startswith(prefix):
            return seconds
    if item.nodeid.endswith("[scaled]"):
        return SCALED
    return INTEGRATION if "/integration/" in item.nodeid else UNIT


def spread(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """``items`` reordered as ``workers`` equal shares (the last takes the remainder, as xdist cuts them), each
    starting with its long tests."""
    if workers <= 1:
        return sorted(items, key=lambda i: -expected_seconds(i) if expected_seconds(i) > INTEGRATION else 0.0)
    sizes = [len(items) // workers] * workers
    sizes[-1] += len(items) - sum(sizes)
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    long_first = sorted((i for i in items if expected_seconds(i) > INTEGRATION), key=lambda i: -expected_seconds(i))
    for item in long_first:
        k = min((k for k in range(workers) if len(shares[k]) < sizes[k]), key=lambda k: load[k])
        shares[k].append(item)
        load[k] += expected_seconds(item)
    chosen = {id(i) for i in long_first}
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        if id(item) not in chosen:
            modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    leftover: list[pytest.Item] = []
    for group in modules.values():  # a module whole where it fits (its module-scoped fixtures are set up once)
        fits = [k for k in range(workers) if sizes[k] - len(shares[k]) >= len(group)]
        if not fits:
            leftover.extend(group)
            continue
        k = min(fits, key=lambda k: load[k])
        shares[k].extend(group)
        load[k] += sum(expected_seconds(i) for i in group)
    for k in range(workers):  # what did not fit whole fills the shares to their counts, in file order
        room = sizes[k] - len(shares[k])
        shares[k].extend(leftover[:room])
        del leftover[:room]
    return [item for share in shares for item in share]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    workers = int(workerinput["workercount"]) if workerinput else 1
    items[:] = spread(items, workers)
