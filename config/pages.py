"""Settings of the operator console and the consumer portal, from the environment.

Kept beside the service's settings (config/__init__.py), read when the app is built so that a
bad value stops the web process at start, and read again on each use, so they are never stale.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from marshmallow import validate

from config import ConfigError, Reader, get_settings

_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}\Z")
# A CSP source: a scheme and host (with an optional port and wildcard), or a keyword.
_FRAME_SOURCE = re.compile(r"^('self'|'none'|https?://(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?)\Z")


@dataclass(frozen=True)
class PageSettings:
    """The console's and portal's settings; each default is written once, below."""

    session_key: bytes = field(repr=False)
    # Keys derived from WEBHOOKS_PREVIOUS_SECRET_KEYS: links and cookies they signed are still
    # accepted while WEBHOOKS_SECRET_KEY is rotated (new ones are signed with session_key).
    previous_session_keys: tuple[bytes, ...] = field(repr=False)
    session_seconds: int
    signin_limit: str
    portal_link_seconds: int
    portal_frame_ancestors: str
    portal_title: str
    portal_logo_url: str
    portal_accent: str
    public_url: str


def _derived_key(raw: str | None) -> bytes:
    if raw:
        if len(raw) < 32:
            raise ConfigError("WEBHOOKS_CONSOLE_SECRET_KEY must be at least 32 characters")
        return raw.encode()
    return _derive(get_settings().secret_key)


def _derive(secret_key: bytes) -> bytes:
    # A key of its own for cookies and links: one derived from the encryption key, never that
    # key itself, so a leaked session key reveals nothing about the secrets at rest.
    return hmac.new(secret_key, b"webhooks pages v1", hashlib.sha256).digest()


def _previous_keys(raw: str | None) -> tuple[bytes, ...]:
    if raw:  # a key of its own, which WEBHOOKS_SECRET_KEY's rotation does not touch
        return ()
    return tuple(_derive(key) for key in get_settings().previous_secret_keys)


def get_page_settings() -> PageSettings:
    """Read the console and portal settings; raise ConfigError on a bad value."""
    from webhooks.ratelimit import parse_limit  # the API's own limits: one syntax

    read = Reader()
    key = read.text("WEBHOOKS_CONSOLE_SECRET_KEY", None)
    session_seconds = read.whole("WEBHOOKS_CONSOLE_SESSION_SECONDS", 8 * 3600, minimum=60)
    link_seconds = read.whole("WEBHOOKS_PORTAL_LINK_SECONDS", 3600, minimum=60)
    limit = read.text("WEBHOOKS_CONSOLE_SIGNIN_LIMIT", "10/minute")
    accent = read.text(
        "WEBHOOKS_PORTAL_ACCENT_COLOUR",
        "#2563eb",
        validate=validate.Regexp(_COLOUR, error="must look like #1a2b3c"),
    )
    ancestors = read.text("WEBHOOKS_PORTAL_FRAME_ANCESTORS", "'self'")
    title = read.text("WEBHOOKS_PORTAL_TITLE", "Webhooks")
    logo = read.text("WEBHOOKS_PORTAL_LOGO_URL", "")
    public_url = read.text("WEBHOOKS_PUBLIC_URL", "").rstrip("/")
    read.check()
    parse_limit("WEBHOOKS_CONSOLE_SIGNIN_LIMIT", limit)  # raises ConfigError
    for source in ancestors.split():
        if not _FRAME_SOURCE.match(source):
            raise ConfigError(
                "WEBHOOKS_PORTAL_FRAME_ANCESTORS must be space-separated origins "
                f"(https://app.example.com) or 'self' or 'none', got {source!r}"
            )
    for name, url in (("WEBHOOKS_PORTAL_LOGO_URL", logo), ("WEBHOOKS_PUBLIC_URL", public_url)):
        parts = urlsplit(url)
        if url and (parts.scheme not in {"http", "https"} or not parts.netloc):
            raise ConfigError(f"{name} must be an http(s) URL, got {url!r}")
    return PageSettings(
        session_key=_derived_key(key),
        previous_session_keys=_previous_keys(key),
        session_seconds=session_seconds,
        signin_limit=limit,
        portal_link_seconds=link_seconds,
        portal_frame_ancestors=" ".join(ancestors.split()),
        portal_title=title,
        portal_logo_url=logo,
        portal_accent=accent,
        public_url=public_url,
    )
