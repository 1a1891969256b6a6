"""`approvals demo request`: have the running sandbox's demo agent post a sample offer-letter request,
and (with --wait) show the signed callback it receives once someone decides."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import click

from app.cli.support import fail, settings_or_exit

_POLL_SECONDS = 1.0


@click.group()
def demo() -> None:
    """Try the service in sandbox mode (`make run`, or `approvals serve --sandbox`)."""


@demo.command("request")
@click.option("--url", help="The running service's URL (default: APPROVALS_PUBLIC_URL).")
@click.option(
    "--wait",
    type=click.IntRange(0, 3600),
    default=0,
    show_default=True,
    help="Seconds to wait for the decision's callback (0: do not wait).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo_request(url: str | None, wait: int, as_json: bool) -> None:
    """Post a sample offer-letter request as the sandbox's demo agent."""
    from app.sandbox.mode import browser_url  # the sandbox's modules, only for this command

    base = (url or browser_url(settings_or_exit())).rstrip("/")
    answer = _call(base, "POST", "/sandbox/demo/request", {})
    if not answer.get("ok"):
        fail(f"error: {answer.get('error') or 'the sandbox refused the request'}")
    request_id = str(answer["request_id"])
    page = f"{base}/sandbox?user=U01COO&c=C0HIRING"
    callback = _wait_for_callback(base, request_id, wait) if wait else None
    if as_json:
        click.echo(json.dumps({"request_id": request_id, "sandbox": page, "callback": callback}))
        return
    click.echo(f"posted {request_id}: decide it as the COO at {page}")
    if wait and callback is None:
        fail(f"no decision within {wait} s (the request stays pending; decide it in the sandbox)", 1)
    if callback is not None:
        verified = "signature verified" if callback["verified"] else "signature INVALID"
        click.echo(f"callback received: {callback['status']} ({verified})")


def _wait_for_callback(base: str, request_id: str, seconds: int) -> dict[str, Any] | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = _call(base, "GET", "/sandbox/state", None)
        for callback in state.get("demo", {}).get("callbacks", []):
            if callback.get("request_id") == request_id:
                return dict(callback)
        time.sleep(_POLL_SECONDS)
    return None


def _call(base: str, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    if not base.startswith(("http://", "https://")):
        fail(f"error: --url must start with http:// or https://, not {base!r}")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 (checked above: an http(s) URL)
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            fail(f"error: {base} is not serving the sandbox: start it with `make run` (no Slack tokens set)")
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        message = answer.get("error")
        message = message.get("message") if isinstance(message, dict) else message
        fail(f"error: the sandbox answered HTTP {exc.code}: {message or exc.reason}")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(f"error: cannot reach the service at {base} ({reason}): start it with `make run`")
    except ValueError:
        fail(f"error: {base} did not answer JSON: is it this service?")
    return answer if isinstance(answer, dict) else {}
