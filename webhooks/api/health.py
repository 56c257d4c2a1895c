from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields
from sqlalchemy import text

from webhooks.api.common import Blueprint
from webhooks.bounded import SingleFlight
from webhooks.db import get_engine
from webhooks.redis_client import get_redis

# A readiness probe answers within this, whatever the database does (probes usually time out
# after a few seconds, and a probe that hangs holds a request thread).
READY_TIMEOUT_SECONDS = 2.0
_database_check: SingleFlight[None] = SingleFlight("readiness-database")

bp = Blueprint("health", __name__, auth=False, description="Liveness and readiness")


class LivenessSchema(Schema):
    status = fields.String(required=True)


class ReadinessChecksSchema(Schema):
    database = fields.String(required=True)
    redis = fields.String(required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ready", "unavailable"]})
    checks = fields.Nested(ReadinessChecksSchema, required=True)


@bp.get("/healthz", tags=["operations"])
@bp.doc(security=[])
@bp.response(200, LivenessSchema)
def healthz() -> Any:
    """Liveness"""
    return {"status": "ok"}


@bp.get("/readyz", tags=["operations"])
@bp.doc(security=[])
@bp.response(200, ReadinessSchema)
@bp.alt_response(503, schema=ReadinessSchema, description="Not ready")
def readyz() -> Any:
    """Readiness: database and Redis reachable"""
    checks: dict[str, str] = {}
    try:
        _database_check.call(_ping_database, READY_TIMEOUT_SECONDS)
        checks["database"] = "ok"
    except TimeoutError:
        checks["database"] = f"unavailable: no answer within {READY_TIMEOUT_SECONDS:g} s"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503


def _ping_database() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
