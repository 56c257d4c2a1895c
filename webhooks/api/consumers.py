from __future__ import annotations

from typing import Any

from flask import Response

from webhooks.api.common import Blueprint, db, named_views, tenant
from webhooks.schemas.consumers import ConsumerCreateSchema, ConsumerSchema, ConsumerUpdateSchema
from webhooks.services import consumers as service

bp = Blueprint("consumers", __name__, url_prefix="/v1/consumers", description="Your own customers")


named_views(
    bp,
    service,
    key="uid",
    schemas=(ConsumerCreateSchema, ConsumerSchema, ConsumerUpdateSchema),
    docs={
        "create": """Create a consumer

        A consumer is one of your own customers, named by your `uid` for it. Its subscriptions get
        only the events that name it (`consumer`); 409 if the uid is taken.
        """,
        "list_": "List consumers",
        "get": "Get a consumer",
        "patch": """Change a consumer

        Only the given fields change; the uid stays.
        """,
    },
)


@bp.delete("/<uid>")
@bp.response(204)
def delete(uid: str) -> Any:
    """Delete a consumer and its subscriptions

    Each of its subscriptions is deleted as DELETE /v1/subscriptions/{id} would: unfinished
    deliveries end as failed, history stays readable. Its uid may be used again.
    """
    service.delete(db(), tenant(), uid)
    return Response(status=204)
