"""Portal links: a tenant's app asks for one and hands it to its customer (or an iframe)."""

from __future__ import annotations

from typing import Any

from flask import request, url_for

from config.pages import get_page_settings
from webhooks.api.common import Blueprint, db, tenant
from webhooks.schemas.portal import PortalLinkSchema
from webhooks.services import portal

bp = Blueprint("portal_links", __name__, url_prefix="/v1/consumers")


@bp.post("/<uid>/portal-links", tags=["consumers"])
@bp.response(201, PortalLinkSchema)
def create(uid: str) -> Any:
    """Make a link that signs this consumer into the portal

    The URL opens the consumer portal for this one consumer: its endpoints, secrets,
    deliveries and test events. It works until `expires_at` (WEBHOOKS_PORTAL_LINK_SECONDS after
    now) and may be embedded in an iframe of the origins in WEBHOOKS_PORTAL_FRAME_ANCESTORS.
    Hand it to the consumer's browser only.
    """
    token, expires_at = portal.issue_link(db(), tenant(), uid)
    base = get_page_settings().public_url or request.host_url.rstrip("/")
    url = base + url_for("portal.endpoints", token=token)
    return {"url": url, "expires_at": expires_at}
