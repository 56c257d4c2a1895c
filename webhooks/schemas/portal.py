from __future__ import annotations

from marshmallow import Schema, fields


class PortalLinkSchema(Schema):
    url = fields.String(
        required=True, metadata={"description": "open it to manage this consumer's endpoints"}
    )
    expires_at = fields.DateTime(
        required=True, metadata={"description": "after this the link signs nobody in"}
    )
