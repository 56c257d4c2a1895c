"""The event-type catalogue: names, descriptions, JSON Schemas; and checking events by it.

Ingest checks each event against its type's schema before anything is stored. The catalogue
of a tenant is read from PostgreSQL at most every CACHE_SECONDS per process and its validators
are built once per schema version, so a tenant publishing many events pays neither a query nor
a schema compilation per event. A change made here is seen at once by this process, and by the
others within CACHE_SECONDS.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing.exceptions import Unresolvable
from sqlalchemy import select
from sqlalchemy.orm import Session

from config import get_settings
from webhooks.canonical import canonical_json
from webhooks.db import uuid7
from webhooks.models import EventType
from webhooks.models.event import OPERATIONAL_TYPES
from webhooks.services import Conflict, Invalid, NotFound, add_unique
from webhooks.services.paging import Page, keyset

CACHE_SECONDS = 5.0
# The most time checking one event against its type's schema may take. A tenant's schema runs
# in the API's request threads, shared by every tenant: a pattern that backtracks without end
# (`^(a|aa)+$`) or references that fan out at each level (`anyOf` of two `$ref`s to the level
# below, 2^n checks) must not hold a thread for hours. Ordinary schemas take microseconds.
CHECK_BUDGET_SECONDS = 0.5

_deadline: ContextVar[float] = ContextVar("schema_check_deadline", default=float("inf"))


class _OverBudget(Exception):
    pass


def _budgeted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    """A keyword of the validator that first checks the check's deadline: every subschema the
    check descends into passes here, so a fan-out of references stops at the deadline."""

    def checked(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if time.monotonic() > _deadline.get():
            raise _OverBudget
        return keyword(validator, value, instance, schema)

    return checked


def _search(pattern: str, text: str) -> bool:
    """`re.search` as jsonschema does it, on the `regex` engine, which can stop at a deadline."""
    remaining = _deadline.get() - time.monotonic()
    if remaining <= 0:
        raise _OverBudget
    try:
        return regex.search(pattern, text, timeout=min(remaining, 3600.0)) is not None
    except TimeoutError:
        raise _OverBudget from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _unique_items(validator: Any, unique: bool, instance: Any, schema: Any) -> Iterator[Any]:
    """`uniqueItems` in one pass over canonical forms, under the deadline: jsonschema's own
    compares every pair in one keyword call (4,000 objects: 40 s)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[str] = set()
    for i, item in enumerate(instance):
        if i % 256 == 0 and time.monotonic() > _deadline.get():
            raise _OverBudget
        key = canonical_json(item)
        if key in seen:
            yield ValidationError(f"has non-unique elements (item {i} repeats an earlier one)")
            return
        seen.add(key)


_Validator = validators.extend(
    Draft202012Validator,
    {
        name: _budgeted(keyword)
        for name, keyword in {
            **Draft202012Validator.VALIDATORS,
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "uniqueItems": _unique_items,
        }.items()
    },
)


@dataclass
class _Entry:
    archived: bool
    schema: Any
    version: datetime
    validator: Any = field(default=None, repr=False)

    def check(self, payload: Any) -> tuple[str, str] | None:
        """Return (JSON pointer, message) of the payload's most relevant error, or None."""
        if self.schema is None:
            return None
        if self.validator is None:
            self.validator = _Validator(self.schema)
        started = _deadline.set(time.monotonic() + CHECK_BUDGET_SECONDS)
        try:
            error = best_match(self.validator.iter_errors(payload))
        except _OverBudget:
            return "", (
                "checking this payload against the schema of its event type took more than "
                f"{CHECK_BUDGET_SECONDS} s; simplify the schema's patterns and references"
            )
        except (Unresolvable, RecursionError, OverflowError, regex.error) as exc:
            # OverflowError: multipleOf with a number too large for a float.
            return "", f"the schema of this event type cannot be applied: {exc}"
        finally:
            _deadline.reset(started)
        if error is None:
            return None
        pointer = "".join(
            "/" + str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path
        )
        return pointer, error.message


_cache: dict[uuid.UUID, tuple[float, dict[str, _Entry]]] = {}
_lock = threading.Lock()


def _catalogue(session: Session, tenant_id: uuid.UUID) -> dict[str, _Entry]:
    now = time.monotonic()
    with _lock:
        cached = _cache.get(tenant_id)
    if cached is not None and now - cached[0] < CACHE_SECONDS:
        return cached[1]
    previous = cached[1] if cached else {}
    entries: dict[str, _Entry] = {}
    for name, archived, schema, version in session.execute(
        select(EventType.name, EventType.archived, EventType.schema, EventType.updated_at).where(
            EventType.tenant_id == tenant_id
        )
    ):
        old = previous.get(name)
        if old is not None and old.version == version:
            entries[name] = old  # keeps its compiled validator
        else:
            entries[name] = _Entry(archived, schema, version)
    with _lock:
        _cache[tenant_id] = (now, entries)
    return entries


def forget(tenant_id: uuid.UUID | None = None) -> None:
    """Drop the cached catalogue of one tenant (or of all)."""
    with _lock:
        if tenant_id is None:
            _cache.clear()
        else:
            _cache.pop(tenant_id, None)


def check_events(
    session: Session,
    tenant_id: uuid.UUID,
    events: Sequence[tuple[int, str, Any]],
    batch: bool,
) -> None:
    """Raise a 422 for the first event (index, type, payload) its catalogue entry refuses: a
    payload not matching the type's schema, or under WEBHOOKS_STRICT_EVENT_TYPES an unknown or
    archived type."""
    strict = get_settings().strict_event_types
    catalogue = _catalogue(session, tenant_id)
    if not catalogue and not strict:
        return
    for index, event_type, payload in events:
        entry = catalogue.get(event_type)
        details: dict[str, Any] = {"event_type": event_type}
        if strict and (entry is None or entry.archived):
            name = "event_type"
            state = "unknown" if entry is None else "archived"
            text = f"{state} event type (strict event types are on)"
        elif entry is not None and (failed := entry.check(payload)) is not None:
            name = "payload"
            details["pointer"] = failed[0]
            text = f"{failed[0] or '/'}: {failed[1]}"
        else:
            continue
        if batch:
            details["index"] = index
            details["fields"] = {"events": {str(index): {name: [text]}}}
            raise Invalid(f"events[{index}].{name}: {text}", details)
        details["fields"] = {name: [text]}
        raise Invalid(f"{name}: {text}", details)


def check_subscribable(session: Session, tenant_id: uuid.UUID, names: Iterable[str]) -> None:
    """Under WEBHOOKS_STRICT_EVENT_TYPES, raise a 422 naming each type a subscription lists
    that is not a known, unarchived type (`*` and the service's own types always are)."""
    if not get_settings().strict_event_types:
        return
    catalogue = _catalogue(session, tenant_id)
    problems = {}
    for name in names:
        if name == "*" or name in OPERATIONAL_TYPES:
            continue
        entry = catalogue.get(name)
        if entry is None or entry.archived:
            problems[name] = "unknown event type" if entry is None else "archived event type"
    if problems:
        raise Invalid(
            "strict event types are on: subscribe to known, unarchived types",
            {"fields": {"event_types": [f"{n}: {why}" for n, why in sorted(problems.items())]}},
        )


def create(session: Session, tenant_id: uuid.UUID, data: dict[str, Any]) -> EventType:
    """Add a type to the catalogue; 409 if the name is taken."""
    event_type = EventType(
        id=uuid7(),
        tenant_id=tenant_id,
        name=data["name"],
        description=data.get("description"),
        schema=data.get("schema"),
        archived=bool(data.get("archived", False)),
    )
    add_unique(session, event_type, Conflict("this event type exists", {"name": data["name"]}))
    forget(tenant_id)
    return event_type


def get(session: Session, tenant_id: uuid.UUID, name: str) -> EventType:
    """Return the tenant's type of this name, or raise NotFound."""
    found = session.scalar(
        select(EventType).where(EventType.tenant_id == tenant_id, EventType.name == name)
    )
    if found is None:
        raise NotFound("no such event type", {"name": name})
    return found


def list_(
    session: Session,
    tenant_id: uuid.UUID,
    limit: int,
    after: uuid.UUID | None = None,
    include_archived: bool = True,
) -> Page[EventType]:
    """Return a page of types, newest first, after the ID `after`."""
    query = select(EventType).where(EventType.tenant_id == tenant_id)
    if not include_archived:
        query = query.where(EventType.archived.is_(False))
    return keyset(session, query, EventType.id, after, limit)


def update(session: Session, tenant_id: uuid.UUID, name: str, data: dict[str, Any]) -> EventType:
    """Change the given fields (`description`, `schema`, `archived`)."""
    event_type = get(session, tenant_id, name)
    for key in ("description", "schema", "archived"):
        if key in data:
            setattr(event_type, key, data[key])
    session.commit()
    forget(tenant_id)
    return event_type
