"""Operations that change state; views and tasks call these, never the tables directly."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session


class ServiceError(Exception):
    """An operation refused for a reason the caller can act on."""

    status = 422
    code = "invalid"

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Invalid(ServiceError):
    status = 422
    code = "validation_error"


def add_unique(session: Session, row: object, taken: Conflict) -> None:
    """Add a row and commit; roll back and raise `taken` if its unique key is already used."""
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise taken from None
