"""``python -m bench NAME [ARGS]`` (or ``./dev bench NAME``)."""

from __future__ import annotations

import sys

from bench import abuse, breach, compare, crash, demo, load, memory, pq, validate

BENCHES = {
    "abuse": abuse.main,
    "breach": breach.main,
    "compare": compare.main,
    "crash": crash.main,
    "demo": demo.main,
    "load": load.main,
    "memory": memory.main,
    "pq": pq.main,
    "validate": validate.main,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        sys.exit(f"usage: python -m bench {{{'|'.join(BENCHES)}}} [ARGS]")
    BENCHES[sys.argv[1]](sys.argv[2:])


main()
