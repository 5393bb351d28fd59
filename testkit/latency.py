"""A TCP proxy on 127.0.0.1 that holds each HTTP request back ``delay`` seconds before passing
it on: an S3-compatible server on this machine answering like one a region away (20-50 ms a
round trip). It counts the requests it passes, by method and by (method, path). For
benchmarks/scale.py and tests. ``strip``: request headers it removes (``CONDITIONAL``: an
S3-compatible server that ignores conditional writes, as older MinIO and some gateways do).
``hold``: a predicate on a request's first line (``GET /bucket?list-type=2&prefix=... HTTP/1.1``):
such a request waits while it holds (checked every 50 ms), to order events in another process
against it without a guess at seconds. ``log``: a list the proxy appends (time.time(), first line)
to as it passes each request on.

Requests are told apart by their first line (``GET /bucket?list-type=2 HTTP/1.1``) at the start
of what the client sends; each connection is delayed on its own, so concurrent requests overlap
their delays as they would over a network.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter

from . import HANG

REQUEST = re.compile(rb"^(GET|PUT|HEAD|POST|DELETE) ([^ ?]*)")
CONDITIONAL = ("If-Match", "If-None-Match")


def strip_headers(data: bytes, names: tuple[str, ...]) -> bytes:
    """``data`` (the start of a request: its line, headers, maybe some body) without the
    header lines ``names`` (matched without case)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    wanted = {n.lower().encode() for n in names}
    lines = [line for line in head.split(b"\r\n")
             if line.split(b":", 1)[0].strip().lower() not in wanted]
    return b"\r\n".join(lines) + sep + rest


class LatencyProxy:
    def __init__(self, target_port: int, delay: float = 0.05, strip: tuple[str, ...] = (),
                 hold=None, log: list | None = None):
        self.target_port, self.delay, self.strip = target_port, delay, strip
        self.hold, self.log = hold, log
        self.stripped = 0  # requests it removed a header from
        self.requests: Counter = Counter()  # method -> requests
        self.paths: Counter = Counter()  # (method, path without its query) -> requests
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        if not self._ready.wait(HANG / 10):
            raise RuntimeError("the latency proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def total(self) -> int:
        return sum(self.requests.values())

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # stopped: close what is still open (a client's pooled connections) inside the loop,
        # then the loop, so no transport is left to a garbage collector with its loop gone
        server.close()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _connection(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def upstream():
            while data := await reader.read(1 << 16):
                if m := REQUEST.match(data):
                    self.requests[m.group(1).decode()] += 1
                    self.paths[m.group(1).decode(), m.group(2).decode()] += 1
                    if self.strip:
                        kept = strip_headers(data, self.strip)
                        self.stripped += kept != data
                        data = kept
                    await asyncio.sleep(self.delay)
                    line = data.split(b"\r\n", 1)[0]
                    while self.hold is not None and self.hold(line):
                        await asyncio.sleep(0.05)
                    if self.log is not None:
                        self.log.append((time.time(), line))
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream():
            while data := await up_reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            up_writer.close()
