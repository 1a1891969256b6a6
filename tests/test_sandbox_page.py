"""The sandbox page's shell and static files: banner first, nothing inline (a strict CSP holds), and a
script that talks to every endpoint of the sandbox's contract and writes only text or server HTML."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app.sandbox.page import SANDBOX_CSS, SANDBOX_JS, SCRIPT_PATH, STYLESHEET_PATH, shell_html

BANNER = "Local sandbox: this is not Slack. Nothing here leaves your machine."
ENDPOINTS = [
    "/sandbox/state",
    "/sandbox/events",
    "/sandbox/act",
    "/sandbox/submit",
    "/sandbox/close-modal",
    "/sandbox/dismiss",
    "/sandbox/command",
    "/sandbox/home",
    "/sandbox/demo/request",
]
# Ids the script looks up and browser tests may rely on.
IDS = [
    "sandbox-banner",
    "user-select",
    "conversation-list",
    "conversation-title",
    "messages",
    "composer-form",
    "composer",
    "composer-send",
    "demo-request",
    "demo-requests",
    "demo-callbacks",
    "modal",
    "modal-dialog",
    "toast",
    "connection-status",
]


class _Elements(HTMLParser):
    """Start tags in order, with their attributes, and the text inside each <script>/<style>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.raw_text: dict[str, list[str]] = {"script": [], "style": []}
        self._open: list[str] = []
        self.body_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1] in self.raw_text:
            self.raw_text[self._open[-1]].append(data)
        self.body_text.append(data)


def parsed(markup: str) -> _Elements:
    elements = _Elements()
    elements.feed(markup)
    elements.close()
    return elements


def test_the_banner_is_the_first_element_of_the_body() -> None:
    page = shell_html(banner=BANNER)
    assert page.startswith("<!doctype html>")
    tags = parsed(page).tags
    body = [name for name, _ in tags].index("body")
    name, attrs = tags[body + 1]
    assert name == "p"
    assert attrs == {"id": "sandbox-banner", "role": "alert"}
    assert re.search(r'<p id="sandbox-banner" role="alert">Local sandbox: this is not Slack\.', page)


def test_the_banner_is_escaped() -> None:
    page = shell_html(banner='<script>alert(1)</script> "quoted" & more')
    elements = parsed(page)
    assert [name for name, _ in elements.tags].count("script") == 1  # only the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot; &amp; more" in page


def test_nothing_inline_so_a_strict_csp_holds() -> None:
    elements = parsed(shell_html(banner=BANNER))
    scripts = [attrs for name, attrs in elements.tags if name == "script"]
    assert scripts == [{"src": SCRIPT_PATH, "defer": None}]
    assert "".join(elements.raw_text["script"]).strip() == ""
    assert [name for name, _ in elements.tags if name == "style"] == []
    stylesheets = [attrs for name, attrs in elements.tags if name == "link"]
    assert stylesheets == [{"rel": "stylesheet", "href": STYLESHEET_PATH}]
    for name, attrs in elements.tags:
        assert "style" not in attrs, name
        assert not any(attr.startswith("on") for attr in attrs), (name, attrs)
        for value in attrs.values():
            assert "javascript:" not in (value or "").lower()
    assert SCRIPT_PATH == "/sandbox/static/sandbox.js"
    assert STYLESHEET_PATH == "/sandbox/static/sandbox.css"


def test_the_shell_has_every_element_the_script_uses() -> None:
    elements = parsed(shell_html(banner=BANNER))
    ids = [attrs.get("id") for _, attrs in elements.tags if attrs.get("id")]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for element_id in IDS:
        assert element_id in ids, element_id
        assert f'byId("{element_id}")' in SANDBOX_JS or element_id == "sandbox-banner", element_id
    tag_of = {attrs.get("id"): name for name, attrs in elements.tags}
    assert tag_of["user-select"] == "select"
    assert tag_of["composer"] == "input"
    assert tag_of["composer-send"] == "button"
    assert tag_of["demo-request"] == "button"
    # Overlay and toast start hidden; the script shows them.
    hidden = {attrs.get("id") for _, attrs in elements.tags if "hidden" in attrs}
    assert {"modal", "toast"} <= hidden
    text = "".join(elements.body_text)
    assert "Demo agent" in text and "Post a sample offer-letter request" in text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_script_uses_every_endpoint(endpoint: str) -> None:
    assert re.search(rf'"{re.escape(endpoint)}["?]', SANDBOX_JS), endpoint


def test_the_script_sends_the_contracts_fields() -> None:
    js = SANDBOX_JS
    # /sandbox/act
    for key in (
        "user:",
        "conversation:",
        "message_ts:",
        "action_id:",
        "block_id:",
        "value:",
        "ephemeral_id:",
    ):
        assert key in js, key
    assert 'post("/sandbox/submit", { user: view.user, view_id: viewId, values: values })' in js
    assert 'post("/sandbox/close-modal", { user: view.user, view_id: viewId })' in js
    assert 'post("/sandbox/dismiss", { user: view.user, ephemeral_id: ephemeralId })' in js
    assert 'post("/sandbox/command", { user: view.user, conversation: view.conversation, text: text })' in js
    assert 'post("/sandbox/home", { user: view.user })' in js
    assert 'post("/sandbox/demo/request")' in js  # no fields: the helper sends {}
    assert '"Content-Type": "application/json"' in js  # the server takes actions as JSON only
    assert 'new EventSource("/sandbox/events")' in js
    # The selection lives in the URL: ?user=…&c=…
    assert 'query.get("user")' in js and 'query.get("c")' in js
    # Link buttons are <a>: only <button class="bk-button"> clicks are turned into actions.
    assert 'closest("button.bk-button")' in js


def test_the_script_writes_only_text_and_server_html() -> None:
    js = SANDBOX_JS
    assignments = re.findall(r"\.innerHTML\s*=\s*([^;]+);", js)
    assert sorted(assignments) == sorted(["html", "w.item.html", "modal.html"])
    assert "innerHTML" not in re.sub(r"\.innerHTML\s*=\s*[^;]+;", "", js)
    for sink in (
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setAttribute("on',
        ".style",
    ):
        assert sink not in js, sink
    assert '"use strict"' in js


def test_the_script_is_valid_javascript(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "sandbox.js"
    script.write_text(SANDBOX_JS, encoding="utf-8")
    result = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_stylesheet_loads_nothing_from_elsewhere() -> None:
    assert "@import" not in SANDBOX_CSS
    assert not re.search(r"url\(", SANDBOX_CSS)
    for selector in (
        ".bk-button",
        ".bk-primary",
        ".bk-danger",
        ".bk-error",
        "#modal",
        "#toast",
        "#sandbox-banner",
        "[hidden]",
    ):
        assert selector in SANDBOX_CSS, selector
