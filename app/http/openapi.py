"""The OpenAPI 3.1 description of the API, generated from the declarations the handlers use.

Response schemas come from the TypedDicts the answers are built as (approvals.requests.views for
requests and callbacks, approvals.audit.chain_view and app.http.audit_api for chains,
app.http.errors for refusals) through pydantic's TypeAdapter in serialization mode; request schemas
from the models that validate bodies (app.http.schemas). Nothing here restates a field, so the
document cannot drift from what is sent; tests/test_openapi.py checks real answers against it.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import TypeAdapter

from app.chain_formats import MEDIA_TYPES
from app.config import MAX_BODY_BYTES
from app.http.audit_api import ChainPage
from app.http.errors import ErrorBody
from app.http.schemas import CreateRequestBody, OutcomeBody
from approvals.audit.chain_view import ChainView
from approvals.requests.views import CallbackEvent, RequestView

REF_TEMPLATE = "#/components/schemas/{model}"

# What each answer is, by the name the paths below use for it.
_ANSWERS: dict[str, Any] = {
    "Request": RequestView,
    "Error": ErrorBody,
    "Callback": CallbackEvent,
    "ChainPage": ChainPage,
    "Chain": ChainView,
}


@functools.cache
def _generated() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(a $ref for each answer in _ANSWERS, the component schemas they and their parts need)."""
    keyed, shared = TypeAdapter.json_schemas(
        [(name, "serialization", TypeAdapter(answer)) for name, answer in _ANSWERS.items()],
        ref_template=REF_TEMPLATE,
    )
    refs = {name: keyed[(name, "serialization")] for name in _ANSWERS}
    return refs, {
        **shared.get("$defs", {}),
        # Request bodies, under the names they have always had.
        "CreateRequest": CreateRequestBody.model_json_schema(),
        "Outcome": OutcomeBody.model_json_schema(),
    }


def _json(answer: str) -> dict[str, Any]:
    return {"application/json": {"schema": _generated()[0][answer]}}


def _errors(*statuses: int) -> dict[str, Any]:
    """Refusals (4xx) and the retryable 503s (the database or Slack unavailable: Retry-After)."""
    return {str(status): {"description": "error", "content": _json("Error")} for status in statuses}


def _ok(status: int, description: str) -> dict[str, Any]:
    return {str(status): {"description": description, "content": _json("Request")}}


def _body(ref: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=ref)}}},
    }


ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
_TEXT = {"schema": {"type": "string"}}


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def openapi_spec(server_url: str) -> dict[str, Any]:
    """The whole document (a fresh copy: callers may change it); a test keeps its paths in step with
    the router."""
    return copy.deepcopy(_document(server_url))


@functools.cache
def _document(server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Approvals agent API",
            "version": "1",
            "description": f"Human approval for AI agents. Bodies are JSON, at most {MAX_BODY_BYTES} bytes.",
        },
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _generated()[1],
        },
        "paths": {
            "/v1/requests": {
                "post": {
                    "summary": "Ask for approval of an action",
                    "security": SECURED,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        },
                    ],
                    "requestBody": _body("CreateRequest"),
                    "responses": {
                        **_ok(
                            201, "created (or the first response, replayed for a repeated Idempotency-Key)"
                        ),
                        **_errors(400, 401, 403, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/requests/{id}": {
                "get": {
                    "summary": "Read a request; ?wait=N long-polls up to N (<= 60) seconds for a final state",
                    "security": SECURED,
                    "parameters": [
                        ID_PARAM,
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 60},
                        },
                    ],
                    "responses": {**_ok(200, "the request"), **_errors(401, 403, 404, 422, 503)},
                }
            },
            "/v1/requests/{id}/cancel": {
                "post": {
                    "summary": "Withdraw a pending request",
                    "security": SECURED,
                    "parameters": [ID_PARAM],
                    "responses": {**_ok(200, "cancelled"), **_errors(400, 401, 403, 404, 409, 413, 415, 503)},
                }
            },
            "/v1/requests/{id}/outcome": {
                "post": {
                    "summary": "Report what happened after approval (once)",
                    "security": SECURED,
                    "parameters": [ID_PARAM],
                    "requestBody": _body("Outcome"),
                    "responses": {
                        **_ok(200, "recorded"),
                        **_errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/audit/chains": {
                "get": {
                    "summary": "Approval chains (auditor keys): filters agent, policy, action, approver, status, "
                    "outcome (succeeded|failed|none), from, to (ISO 8601); limit (<= 1000), cursor; "
                    "format=json|jsonl|csv or Accept. X-Population gives how many chains match.",
                    "security": SECURED,
                    "parameters": [
                        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                        for name in (
                            "agent",
                            "policy",
                            "action",
                            "approver",
                            "status",
                            "outcome",
                            "from",
                            "to",
                            "cursor",
                            "format",
                        )
                    ]
                    + [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "a page of chains: JSON, or one chain a line (jsonl), or CSV",
                            "content": {
                                **_json("ChainPage"),
                                MEDIA_TYPES["jsonl"]: _TEXT,
                                MEDIA_TYPES["csv"]: _TEXT,
                            },
                        },
                        **_errors(401, 403, 422, 503),
                    },
                }
            },
            "/v1/audit/chains/{id}": {
                "get": {
                    "summary": "One approval chain (auditor keys)",
                    "security": SECURED,
                    "parameters": [ID_PARAM],
                    "responses": {
                        "200": {"description": "the chain", "content": _json("Chain")},
                        **_errors(401, 403, 404, 503),
                    },
                }
            },
            "/slack/events": {
                "post": {
                    "summary": "Slack events, interactions and slash commands (signed by Slack; 401 otherwise)",
                    "responses": {
                        "200": {"description": "acknowledged"},
                        "401": {"description": "bad signature"},
                        "404": {"description": "Slack is not configured on this service"},
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "Links to the sandbox (in sandbox mode), this document and the health checks",
                    "description": "JSON when the Accept header asks for application/json, else a small page.",
                    "responses": {"200": {"description": "the links"}},
                }
            },
            "/favicon.ico": {"get": {"summary": "No icon", "responses": {"204": {"description": "none"}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "up"}}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: database reachable and migrated",
                    "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics"}}}
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "spec"}}}
            },
        },
        "webhooks": {
            "callback": {
                "post": {
                    "summary": "What the service POSTs to a request's callback_url when it reaches a final "
                    "state and when its outcome is recorded, signed per Standard Webhooks; retried for "
                    "24 h until a 2xx",
                    "parameters": [
                        _header("webhook-id", "The same on every retry of one event: deduplicate on it."),
                        _header("webhook-timestamp", "Unix seconds when this attempt was signed."),
                        _header(
                            "webhook-signature",
                            'v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"> keyed by the '
                            "agent's whsec_ secret.",
                        ),
                    ],
                    "requestBody": {"required": True, "content": _json("Callback")},
                    "responses": {
                        "2XX": {"description": "delivered"},
                        "410": {"description": "stop sending callbacks for this request"},
                    },
                }
            }
        },
    }
