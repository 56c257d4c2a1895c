"""Operations that change state; views and tasks call these, never the tables directly."""


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
