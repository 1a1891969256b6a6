"""`approvals agents ...` and `approvals policies check`: the operator's commands, run as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from app.database import build_engine
from approvals.errors import Unauthenticated
from approvals.identity.agents import authenticate
from approvals.tables import api_keys
from tests.conftest import APPROVALS


def run(
    args: list[str], database_url: str, *, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "APPROVALS_DATABASE_URL": database_url,
        "APPROVALS_AUTO_MIGRATE": "false",
        **env,
    }
    result = subprocess.run([*APPROVALS, *args], capture_output=True, text=True, env=environment, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def _authenticates(database_url: str, key: str) -> bool:
    engine = build_engine(database_url)
    try:
        async with engine.connect() as conn:
            await authenticate(conn, key)
        return True
    except Unauthenticated:
        return False
    finally:
        await engine.dispose()


async def test_add_prints_a_key_once_and_stores_only_its_hash(database_url: str) -> None:
    out = json.loads(
        run(
            [
                "agents",
                "add",
                "hiring-bot",
                "--owner",
                "ops@example.com",
                "--actions",
                "send_offer_letter,read_*",
                "--purpose",
                "hiring",
                "--risk",
                "high",
                "--json",
            ],
            database_url,
        ).stdout
    )
    assert re.fullmatch(r"apk_[A-Za-z0-9_-]{43}", out["api_key"])  # 32 random bytes
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", out["webhook_secret"])
    engine = build_engine(database_url)
    async with engine.connect() as conn:
        stored = (await conn.execute(select(api_keys.c.key_hash, api_keys.c.prefix))).all()
    await engine.dispose()
    assert out["api_key"] not in {value for row in stored for value in row}
    assert await _authenticates(database_url, out["api_key"])
    listed = json.loads(run(["agents", "list", "--json"], database_url).stdout)
    assert [(a["name"], a["risk"], a["actions"]) for a in listed] == [
        ("hiring-bot", "high", ["send_offer_letter", "read_*"])
    ]
    assert out["api_key"] not in json.dumps(listed)


async def test_adding_an_existing_name_fails_clearly(database_url: str) -> None:
    args = ["agents", "add", "dup", "--owner", "o@example.com", "--actions", "a"]
    run(args, database_url)
    again = run(args, database_url, check=False)
    assert again.returncode == 1
    assert "already exists" in again.stderr


async def test_rotate_keeps_the_old_key_for_the_grace_period(database_url: str) -> None:
    old = json.loads(
        run(
            ["agents", "add", "bot", "--owner", "o@example.com", "--actions", "a", "--json"], database_url
        ).stdout
    )["api_key"]
    new = json.loads(run(["agents", "rotate", "bot", "--json"], database_url).stdout)["api_key"]
    assert new != old
    assert await _authenticates(database_url, old)
    assert await _authenticates(database_url, new)
    newest = json.loads(run(["agents", "rotate", "bot", "--grace", "0", "--json"], database_url).stdout)[
        "api_key"
    ]
    assert not await _authenticates(database_url, old)
    assert not await _authenticates(database_url, new)
    assert await _authenticates(database_url, newest)


async def test_revoke_stops_every_key_at_once(database_url: str) -> None:
    key = json.loads(
        run(
            ["agents", "add", "bot", "--owner", "o@example.com", "--actions", "a", "--json"], database_url
        ).stdout
    )["api_key"]
    run(["agents", "revoke", "bot"], database_url)
    assert not await _authenticates(database_url, key)
    assert json.loads(run(["agents", "list", "--json"], database_url).stdout)[0]["revoked"] is True
    missing = run(["agents", "revoke", "ghost"], database_url, check=False)
    assert missing.returncode == 1
    assert "no agent named 'ghost'" in missing.stderr


def test_policies_check_accepts_the_example_and_judges_actions(tmp_path: Path) -> None:
    result = run(
        ["policies", "check", "policies.yml", "--action", "delete_repo", "--action", "nope", "--json"],
        "postgresql://postgres@127.0.0.1:1/unused",
    )
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert [e["decision"] for e in report["evaluations"]] == ["deny", "deny"]
    assert report["evaluations"][1]["policy"] == "default"


def test_policies_check_names_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("default: deny\npolicies:\n  - action: x\n    decision: maybe\n")
    result = run(["policies", "check", str(bad)], "postgresql://postgres@127.0.0.1:1/unused", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}:4: policies[0].decision:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"APPROVALS_PORT": "http"}, "APPROVALS_PORT: Input should be a valid integer"),
        ({"APPROVALS_PORT": "70000"}, "APPROVALS_PORT:"),
        (
            {"APPROVALS_DATABASE_URL": "mysql://x"},
            "APPROVALS_DATABASE_URL: must be a postgresql:// URL",
        ),
        ({"APPROVALS_DATABASE_URL": "sqlite:///var/approvals.db"}, "SQLite is not supported"),
        ({"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_SIGNING_SECRET: required"),
        ({"APPROVALS_RETENTION_DAYS": "30"}, "APPROVALS_RETENTION_DAYS:"),
        ({"APPROVALS_PUBLIC_URL": "example.com"}, "APPROVALS_PUBLIC_URL: must start with http"),
    ],
)
def test_a_bad_setting_stops_with_exit_2_and_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    env = {"APPROVALS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused", **env}
    result = subprocess.run(
        [*APPROVALS, "serve"], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "xoxb-1" not in result.stderr
