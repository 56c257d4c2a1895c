"""A fast webhook receiver for the benchmarks: asyncio, keep-alive, answers 204 at once.

Run as its own process (`python -m benchmarks.receiver PORT`) so it never shares a GIL with
the load generator. It counts requests and distinct `webhook-id`s per path, remembers the
first and last arrival, and for paths under /lat records arrival minus the `t` (unix seconds)
found in the event's data: the ingest-to-delivered latency. Paths under /hang are never
answered: the connection is held until the sender gives up and closes it.

Control: GET /_stats answers the counters as JSON (with the latencies when asked: ?lat=1);
POST /_reset clears them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PathStats:
    count: int = 0
    ids: set[bytes] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0
    latencies: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def summary(self, with_latencies: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": self.count,
            "unique": len(self.ids),
            "first": self.first,
            "last": self.last,
        }
        if with_latencies:
            out["latencies"] = self.latencies
            out["arrivals"] = self.arrivals
        return out


STATS: dict[str, PathStats] = {}
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


def _record(path: str, webhook_id: bytes, body: bytes) -> None:
    now = time.time()
    stats = STATS.get(path)
    if stats is None:
        stats = STATS[path] = PathStats(first=now)
    stats.count += 1
    stats.last = now
    stats.arrivals.append(now)
    if webhook_id:
        stats.ids.add(webhook_id)
    if path.startswith("/lat"):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            stats.latencies.append(now - float(json.loads(body)["data"]["t"]))


def _json(status: str, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            _method, target, _ = lines[0].split(b" ", 2)
            length = 0
            webhook_id = b""
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"webhook-id":
                    webhook_id = value.strip()
            body = await reader.readexactly(length) if length else b""
            path, _, query = target.decode().partition("?")
            if path == "/_stats":
                lat = "lat=1" in query
                writer.write(_json("200 OK", {p: s.summary(lat) for p, s in STATS.items()}))
            elif path == "/_reset":
                STATS.clear()
                writer.write(_json("200 OK", {}))
            elif path.startswith("/hang"):
                _record(path, webhook_id, b"")
                await reader.read()  # until the sender closes: never answered
                return
            else:
                _record(path, webhook_id, body)
                writer.write(NO_CONTENT)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("receiver ready", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
