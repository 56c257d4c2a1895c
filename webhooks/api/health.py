from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields
from sqlalchemy import text

from webhooks.api.common import Blueprint
from webhooks.db import get_engine
from webhooks.redis_client import get_redis

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
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503
