"""One harness for the tests, the benchmarks and the chaos run: child processes, a recording
HTTP receiver, and waiting on a condition.

Every child starts in its own session (process group), so a stop or a kill -9 takes its pool
children too, and its output goes to a log file that the waits read. Every wait loop checks
`STOP`, which a signal handler sets: some client libraries swallow the KeyboardInterrupt raised
inside them (a Celery control ping does), so a Ctrl-C must be seen by the loop itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STOP = threading.Event()


def interrupt(signum: int, frame: object) -> None:
    """Signal handler: stop the run, whatever it is waiting on."""
    STOP.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


# Waiting -----------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Return the first truthy value of `predicate()`; raise AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        check_stop()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)


def http_status(url: str, method: str = "GET", timeout: float = 2) -> int:
    """The status this URL answers with, or 0 when nothing answers."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=timeout
        )
        try:
            conn.request(method, parts.path or "/")
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()
    except OSError:
        return 0


# Processes ---------------------------------------------------------------------------------


class Process:
    """A child process in its own process group, with its output appended to a log file."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        ready: str | None = None,
        name: str | None = None,
        timeout: float = 90,
    ):
        self.args = args
        self.env = env
        self.log = log
        self.name = name or log.stem
        # Where this run's output starts in the log (a restart appends to the same file).
        self._offset = log.stat().st_size if log.exists() else 0
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop() or kill()
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if ready:
            self.wait_for_log(ready, timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """This run's output so far."""
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            check_stop()
            if text in self.output():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} not ready in {timeout:g} s (looked for {text!r}):\n"
            f"{self.output()[-3000:]}"
        )

    def children(self) -> list[int]:
        return _children(self.pid)

    def tree_rss(self) -> int:
        """The resident memory of this process and all its descendants, in bytes."""
        return sum(_rss(pid) for pid in [self.pid, *_descendants(self.pid)])

    def kill(self) -> None:
        """kill -9 the whole process group, as a crash of the machine would."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        # Whatever is left of the group: pool children of a killed parent, a hung shutdown.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._out.close()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _descendants(pid: int) -> list[int]:
    children = _children(pid)
    return children + [g for c in children for g in _descendants(c)]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def procfile_line(name: str) -> str:
    """The Procfile's command line for `name`, as written (for `sh -c`, as honcho runs it)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return command.strip()
    raise KeyError(name)


def procfile_command(name: str) -> list[str]:
    """The Procfile's command for `name`, split, with the environment expanded. Leading
    NAME=value words set the environment (the worker's metrics folder): callers set theirs."""
    words = shlex.split(os.path.expandvars(procfile_line(name)))
    while words and "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)
    return words


def worker_concurrency() -> int:
    """`WORKER_CONCURRENCY` if set, else the default the Procfile's worker line gives it."""
    if os.environ.get("WORKER_CONCURRENCY"):
        return int(os.environ["WORKER_CONCURRENCY"])
    match = re.search(r"\$\{WORKER_CONCURRENCY:-(\d+)\}", procfile_line("worker"))
    if match is None:
        raise ValueError("the Procfile's worker line has no ${WORKER_CONCURRENCY:-N}")
    return int(match.group(1))


WORKER_READY = "ready."


def celery(
    kind: str,
    env: dict[str, str],
    log: Path,
    *extra: str,
    ready: str | None = None,
    wait: bool = True,
) -> Process:
    """Start `celery -A tasks worker|beat` and (unless `wait` is false) wait until it is ready.

    At INFO a worker logs "ready." once it consumes; at WARNING only its banner's queue list
    shows that it started, so pass `ready="[queues]"` with `--loglevel=WARNING`.
    """
    if ready is None:
        ready = WORKER_READY if kind == "worker" else "beat: Starting..."
    if kind == "worker" and "PROMETHEUS_MULTIPROC_DIR" not in env:
        # A folder of its own for its pool processes' metric samples, set before celery
        # starts, as the Procfile's worker line does.
        metrics = tempfile.mkdtemp(prefix="celery-", dir=log.parent)
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": metrics}
    levels = [a for a in extra if a.startswith("--loglevel")]
    args = [str(BIN / "celery"), "-A", "tasks", kind, *(levels or ["--loglevel=INFO"])]
    args += [a for a in extra if not a.startswith("--loglevel")]
    return Process(args, env, log, ready if wait else None)


def gunicorn(env: dict[str, str], log: Path, app: str = "webhooks.wsgi:app") -> Process:
    """Start the API as the Procfile's `web` runs it; return once a worker has booted."""
    args = [str(BIN / "gunicorn"), "--config", "config/gunicorn.py", app]
    return Process(args, env, log, ready="Booting worker")


def wait_http(url: str, proc: Process, timeout: float = 60) -> None:
    """Wait until `url` answers HTTP (any status), or fail with the log of `proc`."""

    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
        return http_status(url) != 0

    try:
        wait_until(up, timeout, 0.05, f"{proc.name} to answer at {url}")
    except AssertionError as exc:
        raise RuntimeError(f"{exc}:\n{proc.output()[-3000:]}") from None


# The recording receiver --------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # The status the receiver answered with (set once the reply is chosen).
    status: int = 0
    # When its answer began to go out (0 until then): the sender cannot act on it earlier.
    ended: float = 0.0

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Reply:
    status: int = 204
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Answer = Reply | Callable[[Received], Reply]


class Receiver:
    """An HTTP server on loopback that answers every POST as planned per path.

    It records what it received unless `record` is false (a long run that counts by itself
    in the `default` answer). `on_get` answers GET requests, e.g. with statistics.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        default: Answer | None = None,
        record: bool = True,
        on_get: Callable[[str], Reply] | None = None,
        backlog: int = 5,
    ) -> None:
        self.received: list[Received] = []
        self._plans: dict[str, list[Reply]] = {}
        self._defaults: dict[str, Answer] = {}
        self._default: Answer = default or Reply()
        self._record = record
        self._lock = threading.Lock()
        # Requests being answered now, and the most at once, per path.
        self._active: dict[str, int] = {}
        self.max_active: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self._send(on_get(self.path) if on_get else Reply(404))

            def do_POST(self) -> None:
                path = self.path.split("?", 1)[0]
                with receiver._lock:
                    now = receiver._active.get(path, 0) + 1
                    receiver._active[path] = now
                    receiver.max_active[path] = max(receiver.max_active.get(path, 0), now)
                try:
                    self._answer()
                finally:
                    with receiver._lock:
                        receiver._active[path] -= 1

            def _answer(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                item = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                reply = receiver._reply_for(item)
                item.status = reply.status
                if reply.delay:
                    time.sleep(reply.delay)
                if receiver._record:
                    with receiver._lock:
                        receiver.received.append(item)
                item.ended = time.time()
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = backlog

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        # serve_forever checks for shutdown() every poll_interval: 0.5 s by default, which
        # every stop() would wait for.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, *replies: Reply, then: Answer | None = None) -> None:
        """Answer the next requests to `path` with `replies` in order, then with `then`."""
        with self._lock:
            self._plans[path] = list(replies)
            if then is not None:
                self._defaults[path] = then

    def _reply_for(self, item: Received) -> Reply:
        path = item.path.split("?", 1)[0]
        with self._lock:
            queue = self._plans.get(path)
            if queue:
                return queue.pop(0)
            default = self._defaults.get(path, self._default)
        return default(item) if callable(default) else default

    def active(self, *paths: str) -> int:
        """Requests to these paths being answered right now."""
        with self._lock:
            return sum(self._active.get(p, 0) for p in paths)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.split("?", 1)[0] == path]

    def wait_for(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        def enough() -> list[Received] | None:
            got = self.at(path)
            return got if len(got) >= count else None

        try:
            return wait_until(enough, timeout)  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(
                f"{path}: expected {count} requests, got {len(self.at(path))}"
            ) from None

    def serve_forever(self) -> None:
        """Block until the process is stopped (a receiver run as its own process)."""
        self._thread.join()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
