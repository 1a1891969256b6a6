"""Settings: every environment variable the service reads, validated once at start (DESIGN section 7)."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MAX_BODY_BYTES = 1024 * 1024


class Settings(BaseSettings):
    """Slack's settings keep Slack's names; the rest carry the APPROVALS_ prefix."""

    model_config = SettingsConfigDict(
        env_prefix="APPROVALS_", env_file=".env", extra="ignore", populate_by_name=True, frozen=True
    )

    # None: the embedded PostgreSQL server, its data in embedded_database_dir (app/embedded_postgres.py).
    database_url: str | None = None
    embedded_database_dir: Path = Path("var/postgres")
    policies: Path = Path("policies.yml")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    # Per pool; a process on PostgreSQL has two (transactions, single statements): mind max_connections.
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_max_overflow: int = Field(default=0, ge=0, le=200)
    auto_migrate: bool | None = None  # None: on for the embedded server, off for APPROVALS_DATABASE_URL
    callback_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    idempotency_retention_hours: int = Field(default=48, ge=24, le=24 * 90)
    retention_days: int = Field(default=400, ge=365)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    scheduler_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # Longest one SQL statement of the agent API, Slack and step-up may run on PostgreSQL; 0: no limit.
    statement_timeout_seconds: float = Field(default=10.0, ge=0, le=3600)
    # How long an outbox row claimed by one process stays invisible to the others; a row whose process
    # died mid-delivery is retried once it runs out. It must exceed the longest delivery (Slack and
    # callback timeouts are 10 s): a lease that runs out while its delivery is in flight lets another
    # replica deliver the same row again. Tests shorten it to retake a killed process's rows quickly.
    outbox_lease_seconds: float = Field(default=60.0, gt=0, le=3600)

    checkpoint_key: SecretStr | None = None  # base64 Ed25519 seed; else the key file below
    checkpoint_key_file: Path = Path("var/checkpoint.key")
    checkpoint_interval_seconds: float = Field(default=300, ge=1, le=86400)
    # Witnesses: copies of every checkpoint outside the database (see app/witnesses.py). The file is
    # on by default, beside the key file; "off" (or an empty value) turns it off.
    checkpoint_witness_file: str | None = None
    checkpoint_witness_url: str | None = None
    checkpoint_witness_secret: SecretStr | None = None  # signs the POSTs, as callbacks are signed
    checkpoint_witness_slack_channel: str | None = None

    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_acr_values: str | None = None  # sent when a policy lists no acr of its own (space-separated)
    oidc_jwks_refetch_seconds: float = Field(default=60, ge=0, le=3600)  # least gap between refetches

    slack_bot_token: SecretStr | None = Field(default=None, validation_alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, validation_alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, validation_alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(default="https://slack.com/api/", validation_alias="SLACK_API_URL")

    @field_validator("callback_allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # set but empty: the embedded server, as when unset
        if value.startswith("sqlite"):
            raise ValueError(
                "SQLite is not supported (PostgreSQL only): unset it to use the embedded PostgreSQL server "
                "(its data under var/postgres), or give a postgresql:// URL"
            )
        if not value.startswith(("postgresql", "postgres://")):
            raise ValueError("must be a postgresql:// URL (or unset, for the embedded server)")
        return value

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be the IdP's issuer URL, e.g. https://login.example.com")
        return value

    @field_validator("checkpoint_witness_url")
    @classmethod
    def _witness_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("checkpoint_witness_secret")
    @classmethod
    def _witness_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # The Standard Webhooks form agents' secrets have too; the message never quotes the secret.
        if value is None:
            return value
        text = value.get_secret_value()
        try:
            key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            key = b""
        if not text.startswith("whsec_") or len(key) < 24:
            raise ValueError("must be whsec_ followed by at least 24 random bytes in base64")
        return value

    @field_validator("checkpoint_witness_slack_channel")
    @classmethod
    def _witness_channel(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[CG][A-Z0-9]{2,}", value):
            raise ValueError("must be a Slack channel ID such as C0AUDIT (not a #name)")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _api_base(cls, value: str) -> str:
        # slack_sdk joins method names onto the base URL: it must end in "/".
        return value if value.endswith("/") else value + "/"

    @field_validator("public_url", "slack_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _slack_pairs(self) -> Settings:
        if self.slack_bot_token and not (self.slack_signing_secret or self.slack_app_token):
            raise ValueError("SLACK_SIGNING_SECRET: required when SLACK_BOT_TOKEN is set (HTTP mode)")
        if (self.slack_signing_secret or self.slack_app_token) and not self.slack_bot_token:
            raise ValueError("SLACK_BOT_TOKEN: required when Slack is configured")
        return self

    @model_validator(mode="after")
    def _oidc_pairs(self) -> Settings:
        if self.oidc_issuer and not self.oidc_client_id:
            raise ValueError("APPROVALS_OIDC_CLIENT_ID: required when APPROVALS_OIDC_ISSUER is set")
        if self.oidc_client_id and not self.oidc_issuer:
            raise ValueError("APPROVALS_OIDC_ISSUER: required when APPROVALS_OIDC_CLIENT_ID is set")
        return self

    @model_validator(mode="after")
    def _witness_pairs(self) -> Settings:
        if self.checkpoint_witness_url and self.checkpoint_witness_secret is None:
            raise ValueError(
                "APPROVALS_CHECKPOINT_WITNESS_SECRET: required when APPROVALS_CHECKPOINT_WITNESS_URL is set"
            )
        if self.checkpoint_witness_slack_channel and not self.slack_enabled:
            raise ValueError(
                "SLACK_BOT_TOKEN: required when APPROVALS_CHECKPOINT_WITNESS_SLACK_CHANNEL is set"
            )
        return self

    @property
    def witness_file_path(self) -> Path | None:
        """The witness file, or None when the operator turned it off."""
        value = self.checkpoint_witness_file
        if value is None:
            return Path(self.checkpoint_key_file).parent / "checkpoint-witness.jsonl"
        if value.strip().lower() in ("", "off", "none", "false"):
            return None
        return Path(value)

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_client_id)

    @property
    def slack_enabled(self) -> bool:
        return self.slack_bot_token is not None

    @property
    def migrate_on_start(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.database_url is None  # the embedded server is ours to migrate


def env_name(field: str) -> str:
    """The environment variable behind a settings field, as an operator would type it."""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"APPROVALS_{field.upper()}"


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it in one line."""


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; ConfigError names the first bad setting and what is wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        if not loc:  # a cross-field rule: its message starts with the setting's name
            raise ConfigError(f"configuration error: {message}") from None
        raise ConfigError(f"configuration error: {env_name(loc[0])}: {message}") from None
