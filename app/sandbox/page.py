"""The sandbox's web page: its HTML shell and its two static files (no routes here; the server adds them).

The shell is static: everything it shows is filled in by static/sandbox.js from `GET /sandbox/state`.
It holds no inline script or style, so the page works under `Content-Security-Policy: default-src 'self'`.
Ids the script (and browser tests) use: #sandbox-banner, #user-select, #conversation-list (buttons
with data-conversation, "home" first), #conversation-title, #messages, #composer-form, #composer,
#composer-send, #demo-request, #demo-requests, #demo-callbacks, #modal (overlay) > #modal-dialog
(blockkit.render_view's modal goes inside), #toast and #connection-status.
"""

from __future__ import annotations

import html
from importlib import resources

SCRIPT_PATH = "/sandbox/static/sandbox.js"
STYLESHEET_PATH = "/sandbox/static/sandbox.css"


def _static(name: str) -> str:
    return resources.files("app.sandbox").joinpath("static", name).read_text(encoding="utf-8")


# Read once at import: they are served from memory, with the content types the server sets.
SANDBOX_JS: str = _static("sandbox.js")
SANDBOX_CSS: str = _static("sandbox.css")


def shell_html(*, banner: str) -> str:
    """The whole page; `banner` is plain text (escaped here) for the alert that opens the page."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Approvals sandbox</title>
<link rel="stylesheet" href="{STYLESHEET_PATH}">
<script src="{SCRIPT_PATH}" defer></script>
</head>
<body>
<p id="sandbox-banner" role="alert">{html.escape(banner)}</p>
<div id="app">
<nav id="sidebar" aria-label="Workspace">
<h1 id="team-name">Sandbox</h1>
<label for="user-select">Signed in as</label>
<select id="user-select"></select>
<ul id="conversation-list"></ul>
<p id="connection-status" role="status">Connecting…</p>
</nav>
<main id="main">
<header id="conversation-header"><h2 id="conversation-title"></h2></header>
<div id="messages" aria-live="polite"></div>
<form id="composer-form" autocomplete="off">
<input id="composer" type="text" aria-label="Slash command" placeholder="Type a slash command, e.g. /approvals">
<button id="composer-send" type="submit">Send</button>
</form>
</main>
<aside id="demo" aria-label="Demo agent">
<h2>Demo agent</h2>
<p class="demo-intro">A stand-in AI agent: it asks the service for approvals and receives the signed callbacks.</p>
<button id="demo-request" type="button">Post a sample offer-letter request</button>
<h3>Its requests</h3>
<ul id="demo-requests"></ul>
<h3>Callbacks received</h3>
<ol id="demo-callbacks"></ol>
</aside>
</div>
<div id="modal" hidden>
<div id="modal-dialog" role="dialog" aria-modal="true" aria-labelledby="modal-title"></div>
</div>
<div id="toast" role="status" aria-live="assertive" hidden></div>
</body>
</html>
"""
