"""The ingest ceiling: a Flask app that only parses the JSON body and answers 202.

Served by gunicorn with config/gunicorn.py, exactly like the real app, so the difference
between the two is the work the service does per request.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

app = Flask(__name__)


@app.post("/v1/events")
@app.post("/v1/events/batch")
def accept() -> Any:
    body = request.get_json()
    return {"ok": isinstance(body, dict)}, 202
