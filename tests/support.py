"""Real processes for the tests: a recording HTTP receiver, Celery workers and beat."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


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


class Receiver:
    """An HTTP server on loopback that records every POST and answers as planned per path."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._plans: dict[str, list[Reply]] = {}
        self._defaults: dict[str, Reply | Callable[[Received], Reply]] = {}
        self._lock = threading.Lock()
        # Requests being answered now, and the most at once, per path.
        self._active: dict[str, int] = {}
        self.max_active: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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
                with receiver._lock:
                    receiver.received.append(item)
                item.ended = time.time()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    self.wfile.flush()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(
        self, path: str, *replies: Reply, then: Reply | Callable[[Received], Reply] | None = None
    ) -> None:
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
            default = self._defaults.get(path, Reply())
        return default(item) if callable(default) else default

    def active(self, *paths: str) -> int:
        """Requests to these paths being answered right now."""
        with self._lock:
            return sum(self._active.get(p, 0) for p in paths)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.split("?", 1)[0] == path]

    def wait_for(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{path}: expected {count} requests, got {len(self.at(path))}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Process:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: str | None):
        self.args = args
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if ready:
            self.wait_for_log(ready)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[:3]} exited early:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.args[:3]} not ready in {timeout}s:\n{self.output()[-3000:]}")

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> None:
        """kill -9 the whole process group, as a crash of the machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        # Pool children left behind by a kill -9 of their parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._out.close()


def celery(kind: str, env: dict[str, str], log: Path, *extra: str) -> Process:
    """Start `celery -A tasks worker|beat` as the Procfile does, and wait until it is ready."""
    if kind == "worker":
        # A folder of its own for its pool processes' metric samples, set before celery starts.
        metrics = tempfile.mkdtemp(prefix="celery-", dir=log.parent)
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": metrics}
    args = [str(VENV_BIN / "celery"), "-A", "tasks", kind, "--loglevel=INFO", *extra]
    ready = "ready." if kind == "worker" else "beat: Starting..."
    return Process(args, env, log, ready)


def procfile_command(name: str) -> str:
    """Return a process's command line as the Procfile has it (for `sh -c`, as honcho runs it)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in the Procfile")


def gunicorn(env: dict[str, str], log: Path) -> Process:
    """Start the API as the Procfile's `web` runs it; return once a worker has booted."""
    args = [str(VENV_BIN / "gunicorn"), "--config", "config/gunicorn.py", "webhooks.wsgi:app"]
    return Process(args, env, log, ready="Booting worker")


def answers(url: str) -> bool:
    """Tell whether anything answers HTTP at this URL (whatever the status)."""
    import requests

    try:
        requests.get(url, timeout=2)
    except requests.RequestException:
        return False
    return True


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30,
    interval: float = 0.1,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)


def assert_uuid7(value: uuid.UUID, not_before_ms: int, not_after_ms: int) -> None:
    """Check an id's RFC 9562 version 7 layout: version, variant, and a 48-bit prefix of unix
    milliseconds within the given window."""
    assert value.version == 7, value
    assert value.variant == uuid.RFC_4122, value
    assert not_before_ms <= value.int >> 80 <= not_after_ms, (value, not_before_ms, not_after_ms)
