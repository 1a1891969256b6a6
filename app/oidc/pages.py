"""The plain browser pages a step-up ends on: what happened, in words, and that the window can close.

The page is app/templates/oidc_page.html.j2, rendered with autoescaping (app.templating): the detail
can carry an identity provider's own words, so every value is escaped on its way into the page.
"""

from __future__ import annotations

from aiohttp import web

from app.templating import environment
from approvals.identity.step_up import FailureReason
from approvals.requests.lifecycle import Status

# Every failure names what the approver can do next; none of them recorded a decision.
FAILURE_PAGES: dict[FailureReason, tuple[int, str, str]] = {
    "unknown_intent": (
        404,
        "Link not found",
        "This sign-in link is not known. Click the button in Slack again.",
    ),
    "expired_intent": (
        410,
        "Link expired",
        "This sign-in link has expired. Click the button in Slack again.",
    ),
    "replayed": (409, "Link already used", "This sign-in was already used. Click the button in Slack again."),
    "idp_unreachable": (
        502,
        "Identity provider unreachable",
        "We could not reach your identity provider, or it is unavailable. "
        "Your sign-in link still works: open it again in a minute.",
    ),
    "cancelled": (400, "Sign-in cancelled", "The sign-in was cancelled at your identity provider."),
    "invalid_token": (403, "Sign-in not accepted", "Your identity provider's answer did not verify."),
    "unknown_key": (
        403,
        "Sign-in not accepted",
        "Your identity provider's answer was signed with a key it does not publish.",
    ),
    "stale_login": (403, "Sign-in too old", "This decision needs a fresh sign-in."),
    "weak_authentication": (
        403,
        "Stronger sign-in needed",
        "This decision needs multi-factor authentication at your identity provider.",
    ),
    "wrong_identity": (
        403,
        "Different person",
        "You signed in as someone other than the person linked to this Slack account.",
    ),
    "email_mismatch": (
        403,
        "Identity does not match",
        "The verified email at your identity provider does not match your Slack profile's email.",
    ),
    "identity_in_use": (
        403,
        "Identity already linked",
        "This identity is already linked to another Slack user. Ask an administrator.",
    ),
    "not_pending": (409, "Request closed", "The request was decided or expired meanwhile."),
    "already_decided": (409, "Already decided", "You have already decided on this request."),
    "not_approver": (403, "Not an approver", "You are not an approver for this request."),
    "self_approval": (403, "Not allowed", "You cannot approve a request made on your own behalf."),
    "mfa_unavailable": (403, "Not available", "Single sign-on is not configured for this service."),
    "unknown_user": (403, "Not recorded", "Slack could not tell us who you are."),
    "identity_unavailable": (
        503,
        "Not recorded",
        "Slack could not tell us who you are just now. Click the button in Slack again.",
    ),
}


def page(status: int, title: str, message: str, detail: str = "") -> web.Response:
    """A self-contained page: no scripts, no external resources, every piece of text escaped."""
    body = environment().get_template("oidc_page.html.j2").render(title=title, message=message, detail=detail)
    response = web.Response(status=status, text=body, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


def failure_page(reason: FailureReason, detail: str = "") -> web.Response:
    status, title, message = FAILURE_PAGES[reason]
    return page(status, title, f"{message} Nothing was recorded.", detail)


def success_page(choice: str, status: str) -> web.Response:
    verb = "approval" if choice == "approve" else "rejection"
    outcomes: dict[str, str] = {
        Status.APPROVED: "The request is approved.",
        Status.REJECTED: "The request is rejected.",
    }
    outcome = outcomes.get(status, "The request still awaits other approvers.")
    return page(200, "Decision recorded", f"Your {verb} is recorded with your verified sign-in. {outcome}")
