"""The browser side of a step-up: `/auth/step-up/{intent}` sends the approver to the IdP, and
`/auth/callback` brings them back, verifies the login and records the held decision.

No transaction is open while we talk to the IdP: the callback claims its intent (single use), commits,
exchanges the code and verifies the token, then records the outcome in a second transaction.

Once claimed, an intent never stays `verifying`: every refusal ends it with a `step_up_failed` event,
except an IdP that could not be reached (down, 5xx, rate limited, timed out), which proved nothing
either way, so the intent goes back to pending and the same link works again.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from urllib.parse import urlencode

import structlog
from aiohttp import web

from app.http.context import CONTAINER, container_of
from app.oidc.id_tokens import TokenRejected, verify_id_token
from app.oidc.pages import failure_page, page, success_page
from app.oidc.provider import IdpUnreachable, OidcProvider, TokenEndpointRefused
from app.storable_text import unstorable
from approvals.identity.step_up import (
    FailureReason,
    Intent,
    StepUpFailure,
    begin_step_up,
    claim_callback,
    complete_step_up,
    fail_step_up,
    note_step_up_problem,
    release_step_up,
)

log = structlog.get_logger("approvals.oidc")

STEP_UP_PATH = "/auth/step-up/{intent_id}"
CALLBACK_PATH = "/auth/callback"
MAX_PARAM = 4096
# IdP errors that mean the person chose not to (or could not) finish signing in.
CANCELLED_ERRORS = {"access_denied", "login_required", "interaction_required", "consent_required"}


def step_up_url(public_url: str, intent_id: str) -> str:
    return public_url.rstrip("/") + STEP_UP_PATH.format(intent_id=intent_id)


def _callback_url(public_url: str) -> str:
    return public_url.rstrip("/") + CALLBACK_PATH


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _provider(request: web.Request) -> OidcProvider:
    provider = container_of(request).oidc
    assert provider is not None  # routes are only added when an IdP is configured
    return provider


async def start_step_up(request: web.Request) -> web.StreamResponse:
    container = container_of(request)
    provider = _provider(request)
    intent_id = request.match_info["intent_id"]
    if len(intent_id) > 64 or unstorable(intent_id) is not None:
        return failure_page("unknown_intent")
    try:
        endpoints = await provider.endpoints()
    except IdpUnreachable as exc:
        log.warning("idp_unreachable", step="discovery", error=str(exc))
        async with container.interactive.begin() as conn:
            failure = await note_step_up_problem(conn, intent_id, "idp_unreachable", str(exc))
        return failure_page(failure.reason if failure.reason == "unknown_intent" else "idp_unreachable")
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    async with container.interactive.begin() as conn:
        intent = await begin_step_up(conn, intent_id, state=state, nonce=nonce, code_verifier=verifier)
    if isinstance(intent, StepUpFailure):
        return failure_page(intent.reason, intent.detail)
    requirement = intent.requirement
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": _callback_url(container.settings.public_url),
        "scope": "openid email profile",
        "state": state,
        "nonce": nonce,
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
        "max_age": str(requirement.max_age),
    }
    acr_values = " ".join(requirement.acr) or container.settings.oidc_acr_values
    if acr_values:
        params["acr_values"] = acr_values
    if requirement.max_age == 0:
        params["prompt"] = "login"  # a hint only: auth_time is what we rely on
    separator = "&" if "?" in endpoints.authorization_endpoint else "?"
    raise web.HTTPFound(endpoints.authorization_endpoint + separator + urlencode(params))


async def step_up_callback(request: web.Request) -> web.StreamResponse:
    container = container_of(request)
    provider = _provider(request)
    query = request.query
    state = query.get("state", "")
    if not state or len(state) > 64 or unstorable(state) is not None:
        return page(
            400, "Not a sign-in response", "This address is only for your identity provider's answer."
        )
    async with container.interactive.begin() as conn:
        intent = await claim_callback(conn, state)
    if isinstance(intent, StepUpFailure):
        return failure_page(intent.reason, intent.detail)

    error = query.get("error")
    if error is not None:
        # The IdP's words go into the audit event: keep only what the database can store.
        detail = query.get("error_description", error)[:200].replace("\x00", "")
        detail = detail.encode("utf-8", "replace").decode("utf-8")
        reason: FailureReason = "cancelled" if error in CANCELLED_ERRORS else "invalid_token"
        return await _fail(request, intent, reason, detail)
    code = query.get("code", "")
    if not code or len(code) > MAX_PARAM:
        return await _fail(request, intent, "invalid_token", "the answer carries no authorization code")
    assert intent.code_verifier is not None and intent.nonce is not None
    try:
        tokens = await provider.exchange_code(
            code=code,
            code_verifier=intent.code_verifier,
            redirect_uri=_callback_url(container.settings.public_url),
        )
        login = await verify_id_token(
            tokens["id_token"],
            provider=provider,
            nonce=intent.nonce,
            requirement=intent.requirement,
            now=dt.datetime.now(dt.UTC),
        )
    except IdpUnreachable as exc:
        return await _retry_later(request, intent, str(exc))
    except TokenEndpointRefused as exc:
        reason = "replayed" if "invalid_grant" in str(exc) else "invalid_token"
        return await _fail(request, intent, reason, str(exc))
    except TokenRejected as exc:
        return await _fail(request, intent, exc.reason, exc.detail)
    except Exception:
        # A token we could not read is a token we did not verify: the intent ends like any other
        # refusal instead of staying `verifying` behind a 500.
        log.exception("step_up_verification_error", request_id=intent.request_id)
        return await _fail(request, intent, "invalid_token", "the sign-in response could not be verified")

    async with container.interactive.begin() as conn:
        outcome = await complete_step_up(conn, intent.id, login)
    container.committed(intent.request_id)
    if isinstance(outcome, StepUpFailure):
        log.info("step_up_failed", request_id=intent.request_id, reason=outcome.reason)
        return failure_page(outcome.reason, outcome.detail)
    log.info("step_up_decided", request_id=intent.request_id, user=intent.approver_id, status=outcome.status)
    return success_page(intent.decision, outcome.status)


async def _fail(request: web.Request, intent: Intent, reason: FailureReason, detail: str) -> web.Response:
    log.info("step_up_failed", request_id=intent.request_id, reason=reason, detail=detail)
    async with container_of(request).interactive.begin() as conn:
        await fail_step_up(conn, intent.id, reason, detail)
    return failure_page(reason, detail)


async def _retry_later(request: web.Request, intent: Intent, detail: str) -> web.Response:
    log.warning("idp_unreachable", step="callback", request_id=intent.request_id, error=detail)
    async with container_of(request).interactive.begin() as conn:
        failure = await release_step_up(conn, intent.id, detail)
    return failure_page(failure.reason, detail if failure.reason == "idp_unreachable" else failure.detail)


async def _close_provider(app: web.Application) -> None:
    provider = app[CONTAINER].oidc
    if provider is not None:
        await provider.close()


def register(app: web.Application) -> None:
    app.router.add_get(STEP_UP_PATH, start_step_up)
    app.router.add_get(CALLBACK_PATH, step_up_callback)
    app.on_cleanup.append(_close_provider)
