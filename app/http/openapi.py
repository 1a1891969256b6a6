"""The OpenAPI 3.1 description of the agent API; request schemas come from the models that validate."""

from __future__ import annotations

from typing import Any

from app.config import MAX_BODY_BYTES
from app.http.schemas import CreateRequestBody, OutcomeBody
from approvals.requests.lifecycle import STATUSES

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
        }
    },
}

REQUEST_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {"enum": [status.value for status in STATUSES]},
        "action": {"type": "string"},
        "title": {"type": "string"},
        "summary": {"type": "string"},
        "params": {"type": "object"},
        "on_behalf_of": {"type": "string", "description": "as the agent sent it"},
        "requester": {
            "type": "object",
            "description": "who on_behalf_of is, as the self-approval check compares it",
            "required": ["email", "slack_user_id"],
            "properties": {
                "email": {
                    "type": ["string", "null"],
                    "description": "the mailbox: NFKC, casefolded, without a +tag (null for a Slack ID)",
                },
                "slack_user_id": {
                    "type": ["string", "null"],
                    "description": "the Slack user given, or resolved from the email at intake (null: not found)",
                },
            },
        },
        "links": {"type": "array", "items": {"type": "string"}},
        "callback_url": {"type": ["string", "null"]},
        "policy": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "version": {"type": "integer"}},
        },
        "required_approvals": {"type": "integer"},
        "decided_by": {"enum": ["policy", "human", "agent", "system", None]},
        "reason": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "decided_at": {"type": ["string", "null"], "format": "date-time"},
        "decisions": {"type": "array", "items": {"type": "object"}},
        "outcome": {"type": ["object", "null"]},
        "delivery_error": {"type": ["string", "null"]},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _ok(status: int, description: str) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Request"}}},
        }
    }


def _body(ref: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def openapi_spec(server_url: str) -> dict[str, Any]:
    """The whole document; a test keeps its paths in step with the router."""
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
            "schemas": {
                "Error": ERROR_SCHEMA,
                "Request": REQUEST_SCHEMA,
                "CreateRequest": CreateRequestBody.model_json_schema(),
                "Outcome": OutcomeBody.model_json_schema(),
            },
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
                        **_errors(400, 401, 403, 409, 413, 415, 422),
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
                    "responses": {**_ok(200, "the request"), **_errors(401, 404, 422)},
                }
            },
            "/v1/requests/{id}/cancel": {
                "post": {
                    "summary": "Withdraw a pending request",
                    "security": SECURED,
                    "parameters": [ID_PARAM],
                    "responses": {**_ok(200, "cancelled"), **_errors(401, 404, 409)},
                }
            },
            "/v1/requests/{id}/outcome": {
                "post": {
                    "summary": "Report what happened after approval (once)",
                    "security": SECURED,
                    "parameters": [ID_PARAM],
                    "requestBody": _body("Outcome"),
                    "responses": {**_ok(200, "recorded"), **_errors(400, 401, 404, 409, 413, 415, 422)},
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
                    "responses": {"200": {"description": "a page of chains"}, **_errors(401, 403, 422)},
                }
            },
            "/v1/audit/chains/{id}": {
                "get": {
                    "summary": "One approval chain (auditor keys)",
                    "security": SECURED,
                    "parameters": [ID_PARAM],
                    "responses": {"200": {"description": "the chain"}, **_errors(401, 403, 404)},
                }
            },
            "/slack/events": {
                "post": {
                    "summary": "Slack events, interactions and slash commands (signed by Slack; 401 otherwise)",
                    "responses": {
                        "200": {"description": "acknowledged"},
                        "401": {"description": "bad signature"},
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
    }
