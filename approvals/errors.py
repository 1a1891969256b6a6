"""Errors the domain raises; adapters turn each kind into a response (HTTP status, CLI exit code)."""

from __future__ import annotations


class DomainError(Exception):
    """A refusal the caller can understand: a stable code, a plain message, and the field at fault."""

    kind = "invalid"

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class InvalidInput(DomainError):
    """The input breaks a rule (HTTP 422)."""

    kind = "invalid"


class Unauthenticated(DomainError):
    """No valid credential (HTTP 401)."""

    kind = "unauthenticated"


class Forbidden(DomainError):
    """A valid credential that may not do this (HTTP 403)."""

    kind = "forbidden"


class NotFound(DomainError):
    """Nothing the caller may see goes by that id (HTTP 404)."""

    kind = "not_found"


class Conflict(DomainError):
    """The thing is not in a state that allows this (HTTP 409)."""

    kind = "conflict"
