"""Portal links: a tenant's app asks for one and hands it to its customer (or an iframe)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for

from config.pages import get_page_settings
from webhooks.api.common import db, require_tenant
from webhooks.schemas.portal import PortalLinkSchema
from webhooks.services import portal

bp = Blueprint("portal_links", __name__, url_prefix="/v1/consumers")

link_schema = PortalLinkSchema()


@bp.post("/<uid>/portal-links")
def create(uid: str) -> Any:
    tenant_id = require_tenant()
    token, expires_at = portal.issue_link(db(), tenant_id, uid)
    base = get_page_settings().public_url or request.host_url.rstrip("/")
    url = base + url_for("portal.endpoints", token=token)
    return link_schema.dump({"url": url, "expires_at": expires_at}), 201
