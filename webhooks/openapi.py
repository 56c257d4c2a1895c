"""The OpenAPI description of the API at /openapi.json."""

from __future__ import annotations

from typing import Any

from flask import Flask


def register_openapi(app: Flask) -> None:
    @app.get("/openapi.json")
    def _openapi() -> Any:
        return {"openapi": "3.0.3", "info": {"title": "webhooks", "version": "0.1.0"}, "paths": {}}
