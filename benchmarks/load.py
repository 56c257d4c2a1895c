"""A pure-Python HTTP/1.1 load generator: keep-alive sockets, several processes of threads.

Each request is a prepared byte string, and a response is read by its Content-Length only,
so a request costs the generator a `sendall` and a `recv` or two: far less than the servers
it drives spend. Processes (not only threads) keep the generator off a single GIL.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Stands in a paced request's body for its send time (unix seconds), replaced just before sending.
MARKER = b"9999999999.999999"


def request_bytes(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """Return a whole POST request, ready to send."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection that sends prepared requests and reads their answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, b""
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; return its status and body. Reconnects once if the server closed."""
        for attempt in (1, 2):
            sock = self.sock or self._connect()
            try:
                sock.sendall(request)
                return self._read(sock)
            except (TimeoutError, ConnectionError, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read(self, sock: socket.socket) -> tuple[int, bytes]:
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        head = buf[:end].lower()
        status = int(head[9:12])
        length = 0
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15 : stop if stop >= 0 else len(head)])
        need = end + 4 + length
        while len(buf) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        body, self.buf = buf[end + 4 : need], buf[need:]
        if b"connection: close" in head:
            self.close()
        return status, body


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def answered(self) -> int:
        """How many requests got an answer (any status)."""
        return sum(self.statuses.values())

    def percentile(self, p: float) -> float:
        """Return the p-th percentile latency in milliseconds."""
        return percentile(self.latencies, p) * 1000


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def _thread_loop(
    port: int,
    requests: list[bytes],
    start: float,
    deadline: float,
    pace: float | None,
    slots: Any,
    out: list[Any],
) -> None:
    conn = Connection(port)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    i = 0
    try:
        conn._connect()
    except OSError:
        out.append(([], {}, 1))
        return
    while time.time() < start:
        time.sleep(0.001)
    while True:
        if slots is not None:
            # Open loop: each slot is a moment at which one request is due.
            try:
                due = slots.get_nowait()
            except queue.Empty:
                break
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
        elif time.time() >= deadline:
            break
        request = requests[i % len(requests)]
        i += 1
        if pace is not None:
            request = request.replace(MARKER, f"{time.time():017.6f}".encode())
        began = time.perf_counter()
        try:
            status, _ = conn.send(request)
        except OSError:
            errors += 1
            continue
        latencies.append(time.perf_counter() - began)
        statuses[status] = statuses.get(status, 0) + 1
    conn.close()
    out.append((latencies, statuses, errors))


def _process_main(
    port: int,
    requests: list[bytes],
    threads: int,
    start: float,
    deadline: float,
    pace: float | None,
    slot_times: list[float] | None,
    results: Any,
) -> None:
    out: list[Any] = []
    slots: queue.Queue[float] | None = None
    if slot_times is not None:
        slots = queue.Queue()
        for moment in slot_times:
            slots.put(moment)
    workers = [
        threading.Thread(
            target=_thread_loop, args=(port, requests, start, deadline, pace, slots, out)
        )
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    for lat, st, err in out:
        latencies.extend(lat)
        errors += err
        for code, n in st.items():
            statuses[code] = statuses.get(code, 0) + n
    results.put((latencies, statuses, errors))


def run_load(
    port: int, requests: list[bytes], connections: int, seconds: float, processes: int = 2
) -> LoadResult:
    """Keep `connections` requests in flight for `seconds`; return rate and latencies."""
    return _run(port, requests, connections, seconds, processes, None)


def run_paced(
    port: int, request_with_marker: bytes, rate: float, seconds: float, connections: int = 8
) -> LoadResult:
    """Send `rate` requests per second for `seconds` (open loop), each stamped with its send
    time in place of MARKER in its body (same length, so Content-Length holds)."""
    return _run(port, [request_with_marker], connections, seconds, 1, rate)


def _run(
    port: int,
    requests: list[bytes],
    connections: int,
    seconds: float,
    processes: int,
    pace: float | None,
) -> LoadResult:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start = time.time() + 0.5
    deadline = start + seconds
    slot_times = None
    if pace is not None:
        slot_times = [start + n / pace for n in range(int(seconds * pace))]
    per = [
        connections // processes + (1 if n < connections % processes else 0)
        for n in range(processes)
    ]
    procs = [
        ctx.Process(
            target=_process_main,
            args=(port, requests, n, start, deadline, pace, slot_times, results),
            daemon=True,
        )
        for n in per
        if n
    ]
    for proc in procs:
        proc.start()
    result = LoadResult(seconds=seconds)
    try:
        for _ in procs:
            latencies, statuses, errors = results.get(timeout=seconds + 120)
            result.latencies.extend(latencies)
            result.errors += errors
            for code, n in statuses.items():
                result.statuses[code] = result.statuses.get(code, 0) + n
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, 9)
                proc.join(5)
    result.requests = len(result.latencies)
    if pace is not None:
        result.seconds = seconds
    return result


def get_json(port: int, path: str) -> Any:
    """GET a JSON document from a server on loopback."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def post_json(
    port: int, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST a JSON document to a server on loopback; return the status and the parsed answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            json.dumps(body).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()
