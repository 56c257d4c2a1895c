"""One JSON object per log line, with the context fields passed in `extra`."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from config import get_settings

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging() -> None:
    """Send JSON lines to stderr at WEBHOOKS_LOG_LEVEL (default INFO), once per process."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(get_settings().log_level)
    # The lines never hold the caller's file and line, nor thread IDs: skip gathering them for
    # every record (the logging HOWTO's "Optimization"), which took about a third of the API's
    # access-log call. The process ID and name stay: gunicorn's and Celery's own formats show
    # them (without the ID, each gunicorn worker line was a "Logging error" traceback).
    logging._srcfile = None
    logging.logThreads = False
