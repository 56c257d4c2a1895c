"""The one keyset pagination of the service: the API (which decodes its cursors first), the
console and the portal all page through `keyset`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")
MAX_PAGE = 500


@dataclass
class Page(Generic[T]):
    items: list[T]
    # The key of the last item when more follow (the API encodes it as its cursor), else None.
    next_key: Any = None

    @property
    def next_cursor(self) -> str | None:
        """The next page's key as text (the pages pass it back as `after`), or None."""
        return None if self.next_key is None else str(self.next_key)


def keyset(
    session: Session,
    query: Select[Any] | Any,
    key: InstrumentedAttribute[Any],
    after: Any,
    limit: int,
    *,
    parse: Callable[[str], Any] = uuid.UUID,
    ascending: bool = False,
) -> Page[Any]:
    """Return one page of `query` after the key `after` (None: the first page), newest key
    first unless `ascending`.

    A text `after` (a page's link) is
    read with `parse`; one it cannot read starts from the beginning. `query` selects one entity
    (or one row shape); its order is set here.
    """
    limit = max(1, min(limit, MAX_PAGE))
    if isinstance(after, str):
        after = _parse(after, parse)
    if after is not None:
        query = query.where(key > after if ascending else key < after)
    order = key.asc() if ascending else key.desc()
    rows = list(session.execute(query.order_by(order).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    items = [row[0] if len(row) == 1 else row for row in rows]
    # The key is a column of the first entity selected.
    return Page(items, getattr(rows[-1][0], key.key) if more and rows else None)


def bigint(text: str) -> int:
    """Read a bigint key (an attempt's ID) from a page link; ValueError beyond its range."""
    value = int(text)
    if not 0 <= value < 1 << 63:
        raise ValueError(f"{text[:40]} is not a key")
    return value


def _parse(text: str, parse: Callable[[str], Any]) -> Any:
    with contextlib.suppress(ValueError):
        return parse(text) if text else None
    return None
