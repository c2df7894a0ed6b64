"""A small loopback TCP balancer, as a Kubernetes Service sends traffic to Pods: new connections go round-robin to
the replicas whose readiness probe (`/readyz`) answered 200 at its last poll (every 0.1 s); a connection stays with
the replica it went to. It runs its own event loop in a thread."""

from __future__ import annotations

import asyncio
import itertools
import threading

from support.servers import free_port


class Balancer:
    def __init__(self, poll_s: float = 0.1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.poll_s = poll_s
        self.upstreams: dict[str, int] = {}   # name -> port
        self.ready: dict[str, bool] = {}
        self.connections: dict[str, int] = {}  # name -> connections sent there
        self.refused = 0  # connections a ready replica refused (a Service would pass that on to the client)
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def set_upstream(self, name: str, port: int | None) -> None:
        """Add or move a replica (None: remove it)."""
        def change() -> None:
            if port is None:
                self.upstreams.pop(name, None)
                self.ready.pop(name, None)
            else:
                self.upstreams[name] = port
                self.ready[name] = False  # until its readiness probe says so
        self._loop.call_soon_threadsafe(change)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, backlog=512)
        poller = asyncio.create_task(self._poll())
        self._started.set()
        await self._stop.wait()
        poller.cancel()
        server.close()

    async def _poll(self) -> None:
        while True:
            for name, port in list(self.upstreams.items()):
                ok = await self._probe(port)
                if self.upstreams.get(name) == port:
                    self.ready[name] = ok
            await asyncio.sleep(self.poll_s)

    @staticmethod
    async def _probe(port: int) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"GET /readyz HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), 2)
            return line.startswith(b"HTTP/1.1 200")
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()

    async def _accept(self, client_reader, client_writer) -> None:
        names = [name for name, ok in self.ready.items() if ok]
        start = next(self._turn)
        upstream = None
        for i in range(len(names)):  # the next ready one; another when it refuses the connection
            name = names[(start + i) % len(names)]
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.upstreams[name]), 2)
                self.connections[name] = self.connections.get(name, 0) + 1
                break
            except (OSError, asyncio.TimeoutError, KeyError):
                self.refused += 1
                continue
        if upstream is None:
            client_writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(self._pipe(client_reader, up_writer), self._pipe(up_reader, client_writer))

    @staticmethod
    async def _pipe(reader, writer) -> None:
        """Copy one direction. Where the end arrives with the last bytes, both are passed on in one step: a
        balancer in the kernel (a Service's NAT) passes a FIN on at once, and a client that saw the last bytes of
        an answer before the FIN behind them would send its next request into a closed connection."""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                if reader.at_eof():
                    break
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except OSError:
                pass

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
