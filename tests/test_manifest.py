"""manifest.yml is a valid Slack app manifest and agrees with the ids the code listens for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from app.slack.ids import SLASH_COMMAND
from tests.conftest import ROOT

SCHEMA = Path(__file__).resolve().parent / "data" / "slack-manifest.schema.1.0.0.json"
SLACK_URL = "https://approvals.example.com/slack/events"


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifest.yml").read_text(encoding="utf-8"))


def test_the_manifest_validates_against_slacks_schema(manifest: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    errors = [f"{e.json_path}: {e.message}" for e in Draft7Validator(schema).iter_errors(manifest)]
    assert errors == []


def test_the_bot_asks_for_exactly_the_scopes_it_uses(manifest: dict[str, Any]) -> None:
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(
        [
            "chat:write",
            "users:read",
            "users:read.email",
            "usergroups:read",
            "commands",
            "im:write",
            "channels:history",
            "groups:history",
            "im:history",
        ]
    )


def test_the_slash_command_is_the_one_the_code_listens_for(manifest: dict[str, Any]) -> None:
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == SLASH_COMMAND
    assert command["url"] == SLACK_URL
    assert command["description"]


def test_buttons_and_modals_reach_the_service(manifest: dict[str, Any]) -> None:
    # The Approve/Reject buttons and the reject modal only work with interactivity on.
    assert manifest["settings"]["interactivity"] == {"is_enabled": True, "request_url": SLACK_URL}


def test_the_home_tab_is_published_when_opened(manifest: dict[str, Any]) -> None:
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert manifest["settings"]["event_subscriptions"] == {
        "request_url": SLACK_URL,
        "bot_events": ["app_home_opened"],
    }


def test_http_mode_is_the_default(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is False
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False
