"""Flower's settings: `celery -A tasks flower --conf=config/flower.py` (the Procfile's line).

Flower runs this file and takes each top-level name that is one of its options. Credentials
come from the environment only (FLOWER_BASIC_AUTH=user:password, which Flower reads itself), so
they never show in the process list. Outside development Flower refuses to start without them:
its pages show task arguments and tracebacks.
"""

import os
import sys

_development = os.environ.get("WEBHOOKS_ENV") == "development"
if not os.environ.get("FLOWER_BASIC_AUTH") and not _development:
    sys.exit(
        "FLOWER_BASIC_AUTH is not set: Flower shows task arguments and tracebacks, so outside "
        "development (WEBHOOKS_ENV=development) it needs credentials, as user:password in the "
        "environment (never on the command line)."
    )

# Without credentials (development only), listen on loopback alone. FLOWER_ADDRESS decides
# otherwise (Flower reads the environment before this file, which would override it).
address = os.environ.get("FLOWER_ADDRESS") or (
    "" if os.environ.get("FLOWER_BASIC_AUTH") else "127.0.0.1"
)
