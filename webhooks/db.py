"""The SQLAlchemy base, the engine of this process, and sessions."""

from __future__ import annotations

import enum
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar, cast

import psycopg
import uuid_utils.compat
from psycopg.rows import namedtuple_row
from sqlalchemy import (
    DateTime,
    Enum,
    ForeignKey,
    Index,
    MetaData,
    create_engine,
    event,
    exc,
    func,
    text,
)
from sqlalchemy.engine import Connection, CursorResult, Engine, Result
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    declared_attr,
    mapped_column,
    sessionmaker,
)

from config import get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class TenantListed:
    """A tenant's resource, which the API lists a page at a time in ID order: its tenant, and
    the (tenant_id, id) index those keyset pages read (services/queries.py). The model names
    its other indexes and constraints in `table_args`."""

    table_args: ClassVar[tuple[Any, ...]] = ()
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )

    @declared_attr.directive
    @classmethod
    def __table_args__(cls) -> tuple[Any, ...]:
        name = cast(str, cls.__tablename__)  # type: ignore[attr-defined]
        return (Index(f"ix_{name}_tenant_id_id", "tenant_id", "id"), *cls.table_args)


def value_enum(cls: type[enum.Enum], length: int = 16) -> Enum:
    """A column type for an enum, stored as its values (what the API shows) in a VARCHAR."""
    return Enum(
        cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index of only the rows for which the SQL condition `where` holds: a scan that wants
    few of a table's rows reads only those. Autogenerate does not compare the condition;
    tests/integration/test_migrations.py checks that each one is partial in the database."""
    return Index(name, *columns, unique=unique, postgresql_where=text(where))


def uuid7() -> uuid.UUID:
    """Return a time-ordered UUID (RFC 9562 version 7), so IDs sort by creation.

    Made by uuid-utils; ids made in SQL come from the database's uuidv7() (services/ingest.py).
    """
    return uuid_utils.compat.uuid7()


_engine: Engine | None = None
_engine_key: tuple[int, str] | None = None
_sessionmaker: sessionmaker[Session] | None = None


def get_engine() -> Engine:
    """Return this process's engine, made anew after a fork so no connection is shared."""
    global _engine, _engine_key, _sessionmaker
    # Keyed by the settings too, so a process whose DATABASE_URL changed (tests) reconnects.
    key = (os.getpid(), get_settings().database_url)
    if _engine is None or _engine_key != key:
        if _engine is not None:
            # Inherited from the parent: drop its pool without closing the parent's sockets.
            _engine.dispose(close=False)
        _engine = _create()
        _engine_key = key
        _sessionmaker = sessionmaker(bind=_engine, expire_on_commit=False)
    return _engine


_state_engine: Engine | None = None
_state_key: tuple[int, str] | None = None


def state_engine() -> Engine:
    """Return this process's connections for delivery state (made anew after a fork).

    Each statement is its own transaction (autocommit), and commits without waiting for the
    WAL flush (synchronous_commit off). An attempt is then two statements, the claim and the
    outcome, instead of eleven round trips (pings, BEGIN, SET, COMMIT). Safe for delivery
    state only: a database crash can lose the last moments of claims and outcomes, which sends
    those deliveries again (at least once, same webhook-id) and never loses one. Ingest keeps
    full durability: its 202 promises the event is stored. See docs/performance.md.

    Its connections are pinged as the API's are (`_create`); one that died in use since is
    found by the statement itself (see services.delivery.attempt, which retries its claim).
    """
    global _state_engine, _state_key
    key = (os.getpid(), get_settings().database_url)
    if _state_engine is None or _state_key != key:
        if _state_engine is not None:
            _state_engine.dispose(close=False)  # the parent's: leave its sockets alone
        _state_engine = _create(isolation_level="AUTOCOMMIT", synchronous_commit=False)
        _state_key = key
    return _state_engine


# How long opening a connection may take (libpq's connect_timeout, whole seconds).
CONNECT_TIMEOUT_SECONDS = 5
# A connection unused for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 1.0


def _note_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Ping a connection that sat idle; a dead one is replaced by the pool (as pre-ping does)."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return  # new, or in use a moment ago
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        # The pool discards this connection and checks out (or opens) another one.
        raise exc.DisconnectionError(str(error)) from error


def _create(isolation_level: str | None = None, synchronous_commit: bool = True) -> Engine:
    """An engine whose pool pings a connection when it is checked out after IDLE_PING_SECONDS
    unused, not on every checkout (as `pool_pre_ping` would): a busy process then pays no
    round trip for it, and a connection that sat idle through a PostgreSQL restart is
    replaced before use."""
    options: dict[str, Any] = {}
    if isolation_level:
        options["isolation_level"] = isolation_level
    # A server that accepts connections and never answers (frozen, partitioned) must not hold
    # a new connection for ever: libpq gives up after this.
    connect_args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        # And a connection whose peer went away (a partition, a failover) fails within about a
        # minute, not when TCP gives up (minutes to hours): a read blocked on it ends then.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if not synchronous_commit:
        connect_args["options"] = "-c synchronous_commit=off"
    options["connect_args"] = connect_args
    settings = get_settings()
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=10,
        pool_recycle=1800,
        **options,
    )
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


def new_session() -> Session:
    """Open a session on this process's engine."""
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker()


@contextmanager
def session_scope() -> Iterator[Session]:
    """Yield a session that commits on success, rolls back on error, and always closes."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def locking(query: Any, entity: Any, lock: str | None) -> Any:
    """`query` locking the rows of `entity` it reads until the transaction ends, and reading
    them afresh (not from the session's identity map): "share" (FOR SHARE) for work that must
    not race a change of them; "update" (FOR NO KEY UPDATE) for a change, which waits for
    "share" but not for inserts that only reference the rows (FOR KEY SHARE, foreign keys)."""
    if lock is None:
        return query
    share = lock == "share"
    return query.with_for_update(read=share, key_share=not share, of=entity).execution_options(
        populate_existing=True
    )


def affected(result: Result[Any]) -> int:
    """Return how many rows an UPDATE or DELETE changed."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def run_raw(conn: Connection, sql: str, params: dict[str, Any]) -> Any:
    """Run one statement of the attempt's hot path on the connection's psycopg connection
    itself, with a cursor whose rows have attributes; return the cursor (`fetchone`,
    `rowcount`). SQLAlchemy's execution around psycopg (its result metadata, the compiled
    statement's cache) cost more CPU than the statement's own round trip; the pool, pings and
    transactions stay SQLAlchemy's. psycopg prepares the statement after a few uses.

    A connection that PostgreSQL dropped raises `Disconnected`, after the Connection is
    invalidated, so that its next use checks out a new one. Its pool's other connections are
    dropped too, as SQLAlchemy does on a disconnect it sees itself: a restart killed them all,
    and one used a moment ago would be handed out again unpinged."""
    raw = conn.connection.driver_connection
    cursor = raw.cursor(row_factory=namedtuple_row)  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
    except psycopg.OperationalError as error:
        if raw.closed or raw.broken:  # type: ignore[union-attr]
            conn.invalidate()
            # A fresh pool; the idle ones are closed (connections in use elsewhere are not).
            conn.engine.dispose()
            raise Disconnected(str(error)) from error
        raise
    return cursor


class Disconnected(Exception):
    """The database connection was lost under a statement (see `run_raw`)."""


@contextmanager
def atomic(db: Session | Connection) -> Iterator[None]:
    """Make the statements inside one transaction on an autocommit connection (the delivery
    state's, `state_engine`), a savepoint inside one already open. A Session, or a connection
    that is not autocommit, is in its caller's transaction already: nothing to do."""
    if isinstance(db, Connection) and getattr(db.connection.dbapi_connection, "autocommit", False):
        with db.connection.driver_connection.transaction():  # type: ignore[union-attr]
            yield
    else:
        yield


def committed(db: Session | Connection) -> bool:
    """Whether what `db` wrote is committed now: an autocommit connection outside a block."""
    if isinstance(db, Session):
        return False
    raw = db.connection.dbapi_connection
    in_block = raw.info.transaction_status  # type: ignore[union-attr]  # psycopg: 0 is idle
    return bool(getattr(raw, "autocommit", False)) and not in_block
