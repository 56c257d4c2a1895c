"""`make run`: embedded PostgreSQL and Redis unless URLs are given, migrations, a dev tenant,
then the Procfile's web, worker, beat and flower processes under honcho. Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from config import VAR_DIR
from scripts.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def create_tenant(env: dict[str, str], name: str) -> str:
    """Create a tenant with the CLI, as an operator would; return its API key (the last line)."""
    out = subprocess.run(
        [str(BIN / "flask"), "--app", "webhooks", "create-tenant", name],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def _dev_key(env: dict[str, str], var: Path) -> str:
    """Return the dev tenant's API key, creating the tenant on first run."""
    path = var / "dev_api_key"
    check = (
        "import sys\n"
        "from webhooks.db import session_scope\n"
        "from webhooks.services.tenants import authenticate\n"
        "with session_scope() as s:\n"
        "    sys.exit(0 if authenticate(s, sys.argv[1]) else 1)\n"
    )
    if path.exists():
        key = path.read_text().strip()
        if subprocess.run([sys.executable, "-c", check, key], env=env, cwd=ROOT).returncode == 0:
            return key
    key = create_tenant(env, "dev")
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (an orchestrator, `timeout`) ends the run like Ctrl-C: children and servers stop.
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    var = VAR_DIR.resolve()
    var.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WEBHOOKS_VAR_DIR=str(var))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    pg = redis = None
    try:
        if not env.get("DATABASE_URL"):
            pg = EmbeddedPostgres(var / "postgres")
            pg.start()
            env["DATABASE_URL"] = pg.create_database("webhooks")
            print(f"embedded PostgreSQL: {env['DATABASE_URL']} (data in {var / 'postgres'})")
        if not env.get("REDIS_URL"):
            redis = EmbeddedRedis(var / "redis", persistent=True)
            env["REDIS_URL"] = redis.start()
            print(f"embedded Redis:      {env['REDIS_URL']} (data in {var / 'redis'})")
        # Development defaults: loopback receivers are allowed, as in a local test set-up; a
        # secret key is generated into ./var and Flower runs without credentials if none are set.
        env.setdefault("WEBHOOKS_ENV", "development")
        env.setdefault("WEBHOOKS_ALLOW_PRIVATE_TARGETS", "true")
        env.setdefault("PORT", "8000")
        env.setdefault("FLOWER_PORT", "5555")
        for name in ("PORT", "FLOWER_PORT", "WEBHOOKS_WORKER_METRICS_PORT"):
            if name in env and _busy(int(env[name])):
                env[name] = str(free_port())
        env.setdefault(
            "WEBHOOKS_WORKER_METRICS_PORT", "9808" if not _busy(9808) else str(free_port())
        )

        subprocess.run([str(BIN / "alembic"), "upgrade", "head"], env=env, cwd=ROOT, check=True)
        key = _dev_key(env, var)
        print(
            "\n"
            f"  API:             http://127.0.0.1:{env['PORT']}"
            "  (OpenAPI: /openapi.json, docs: /docs)\n"
            f"  API metrics:     http://127.0.0.1:{env['PORT']}/metrics\n"
            f"  Worker metrics:  http://127.0.0.1:{env['WEBHOOKS_WORKER_METRICS_PORT']}/metrics\n"
            f"  Flower:          http://127.0.0.1:{env['FLOWER_PORT']}\n"
            f"  Console:         http://127.0.0.1:{env['PORT']}/console/"
            "  (sign in with the dev API key below)\n"
            f"  Dev API key:     {key}\n"
            f"  export API_KEY={key}\n",
            flush=True,
        )
        procfile = ROOT / "Procfile"
        cmd = [
            str(BIN / "honcho"),
            "--procfile",
            str(procfile),
            "--app-root",
            str(ROOT),
            "start",
            "web",
            "worker",
            "beat",
            "flower",
        ]
        honcho = subprocess.Popen(cmd, env=env, cwd=ROOT)
        try:
            return honcho.wait()
        except KeyboardInterrupt:
            honcho.send_signal(signal.SIGTERM)
            try:
                honcho.wait(30)
            except subprocess.TimeoutExpired:
                honcho.kill()
            return 0
    finally:
        if redis is not None:
            redis.stop()
        if pg is not None:
            pg.stop()


def _busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
