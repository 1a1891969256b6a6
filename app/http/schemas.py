"""The agent API's request bodies: strict types, no unknown fields, bounded sizes."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from approvals.errors import InvalidInput

MAX_PARAMS_DEPTH = 32
MAX_LIFETIME_SECONDS = 366 * 24 * 3600


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def check_http_url(value: str) -> str:
    """An absolute http(s) URL with a host and no whitespace or control characters."""
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a port that is out of range or not a number
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


Url = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(check_http_url)]


# Which forms are accepted, and why, is approvals.requests.principals's (NewRequest.identity, at intake).
RequesterText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=320,
        description=(
            "Who the action is for: an email address (name@example.com; no display name, mailto: or "
            "invisible characters) or a Slack user ID (U01ABCDEF). That person may not approve it: "
            "case, full-width letters and a +tag sub-address make no difference."
        ),
    ),
]


class CreateRequestBody(BaseModel):
    """POST /v1/requests."""

    model_config = ConfigDict(extra="forbid", strict=True)

    action: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(default="", max_length=4000)
    params: dict[str, Any] = Field(default_factory=dict)
    on_behalf_of: RequesterText
    links: list[Url] = Field(default_factory=list, max_length=20)
    callback_url: Url | None = None
    expires_in: int | None = Field(default=None, gt=0, le=MAX_LIFETIME_SECONDS)

    @field_validator("params")
    @classmethod
    def _not_too_deep(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _depth(value) > MAX_PARAMS_DEPTH:
            raise ValueError(f"must not nest deeper than {MAX_PARAMS_DEPTH} levels")
        return value


class OutcomeBody(BaseModel):
    """POST /v1/requests/{id}/outcome."""

    model_config = ConfigDict(extra="forbid", strict=True)

    status: Literal["succeeded", "failed"]
    detail: str = Field(default="", max_length=4000)
    external_ref: str | None = Field(default=None, min_length=1, max_length=500)


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    """Validate a body; the first problem becomes an InvalidInput naming the field (dotted path)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        code = {
            "extra_forbidden": "unknown_field",
            "missing": "missing_field",
        }.get(error["type"], "invalid_field")
        message = error["msg"].removeprefix("Value error, ")
        if code == "unknown_field":
            message = f"unknown field {field!r}"
        elif code == "missing_field":
            message = f"field {field!r} is required"
        else:
            message = f"{field}: {message}"
        raise InvalidInput(code, message, field) from None
