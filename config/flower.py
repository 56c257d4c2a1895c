"""Flower's settings: `celery -A tasks flower --conf=config/flower.py` (the Procfile's line).

Flower runs this file and takes each top-level name that is one of its options. Credentials
come from the environment only (FLOWER_BASIC_AUTH=user:password, which Flower reads itself), so
they never show in the process list. Outside development Flower refuses to start without them:
its pages show task arguments and tracebacks.
"""

import sys

from config import Reader

_read = Reader()
_development = _read.text("WEBHOOKS_ENV", "production") == "development"
_credentials = _read.text("FLOWER_BASIC_AUTH", None)
_address = _read.text("FLOWER_ADDRESS", None)
_read.check()
if not _credentials and not _development:
    sys.exit(
        "FLOWER_BASIC_AUTH is not set: Flower shows task arguments and tracebacks, so outside "
        "development (WEBHOOKS_ENV=development) it needs credentials, as user:password in the "
        "environment (never on the command line)."
    )

# Without credentials (development only), listen on loopback alone. FLOWER_ADDRESS decides
# otherwise (Flower reads the environment before this file, which would override it).
address = _address or ("" if _credentials else "127.0.0.1")
