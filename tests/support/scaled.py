"""The scaled configuration for the tests: one PostgreSQL database, one S3 bucket, two relay replicas and one
worker, behind a round-robin TCP balancer, as an operator deploys labrelay at scale (docs/deployment.md).

The balancer works per connection, like an L4 load balancer: each new client connection goes to the next replica,
so a CLI run that uploads and the next that fetches land on different replicas, and concurrent clients spread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.processes import RelayProcess, WorkerProcess


class Balancer:
    """Round-robin TCP proxy on a free loopback port, in a thread with its own event loop."""

    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        self.backends = list(backends)
        self._next = itertools.cycle(range(len(self.backends)))
        self.connections = [0] * len(self.backends)
        self.cut = False  # a network partition: new connections are reset, open ones dropped
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("balancer did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def partition(self) -> None:
        """Cut the network: every open connection is dropped and new ones are reset, until ``heal``."""
        self.cut = True

        def drop() -> None:
            for w in list(self._open):
                w.transport.abort()

        self._loop.call_soon_threadsafe(drop)

    def heal(self) -> None:
        self.cut = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        index = next(self._next)
        self.connections[index] += 1
        host, port = self.backends[index]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()  # the replica is down: the client sees a reset and retries, as behind a real LB
            return

        self._open.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()
                self._open.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        """Close the listener, drop every open connection and finish their tasks before the loop stops: left to
        the garbage collector, they warn (unclosed transport, a task destroyed pending) in whatever test runs
        next, and warnings are errors in this suite."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._open):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


def _hostport(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1]
    host, _, port = rest.rpartition(":")
    return host, int(port)


class ReplicaSet:
    """Two (or more) ``labrelay serve`` replicas and a ``labrelay worker`` on one data directory whose relay.toml
    points at PostgreSQL and S3; quacks like the embedded fixture's single relay (``url``, ``data``, ``stop``)."""

    def __init__(self, data: Path, replicas: int = 2, workers: int = 1) -> None:
        self.data = data
        self.replicas = [
            RelayProcess(data, data.parent / f"{data.name}-r{i}.log", name=f"{data.name}-r{i}") for i in range(replicas)
        ]
        self.workers = [WorkerProcess(data, data.parent / f"{data.name}-w{i}.log") for i in range(workers)]
        self.balancer: Balancer | None = None
        self.url = ""

    @property
    def log(self) -> Path:
        return self.replicas[0].log

    def logs(self) -> Iterator[Path]:
        for proc in [*self.replicas, *self.workers]:
            yield proc.log

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs() if p.exists())

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        for replica in self.replicas:  # all at once: each takes a second or more to import and open its stores
            replica.launch()
        for replica in self.replicas:
            replica.wait_ready()
        if self.balancer is None:
            self.balancer = Balancer([_hostport(r.url) for r in self.replicas])
            self.balancer.start()
            self.url = f"http://127.0.0.1:{self.balancer.port}"
        else:
            self.rebalance()

    def rebalance(self) -> None:
        """Point the balancer at the replicas' current ports (a restarted replica listens on a new one)."""
        assert self.balancer is not None
        self.balancer.backends = [_hostport(r.url) for r in self.replicas]

    def stop(self) -> None:
        for proc in [*self.replicas, *self.workers]:
            proc.stop()

    def kill(self) -> None:
        for proc in [*self.replicas, *self.workers]:
            proc.kill()

    def close(self) -> None:
        self.stop()
        if self.balancer is not None:
            self.balancer.stop()
