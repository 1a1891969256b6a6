"""The OpenAPI document against real answers: each answer of a real service validates against the schema
the served document gives for its path, method and status (or, for callbacks, its webhook), and every
path it lists answers. The schemas are closed, so a field sent but not declared fails here."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from approvals.identity.auditors import add_auditor_key
from approvals.requests.decisions import Click, Clicker, record_click
from approvals.requests.views import RequestView
from tests.conftest import Api, offer
from tests.eventually import eventually
from tests.receiver import Receiver
from tests.slack_helpers import SlackApi, slack_service

DOCUMENT = "urn:approvals:openapi"
JSON = "application/json"


def _date_time(value: object) -> bool:
    """A time as the API writes every time: ISO 8601 in UTC with a trailing Z."""
    if not isinstance(value, str):
        return True  # the type keyword judges other types
    return value.endswith("Z") and dt.datetime.fromisoformat(value).utcoffset() == dt.timedelta(0)


FORMATS = FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(_date_time)


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


class Document:
    """The served document as a JSON Schema registry: `$ref`s resolve with the document as the root."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        resource = Resource.from_contents(spec, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOCUMENT, resource)

    def validator(self, *location: str) -> Draft202012Validator:
        """The schema at this place in the document (a KeyError if the document has none there)."""
        node: Any = self.spec
        for part in location:
            node = node[part]
        ref = {"$ref": f"{DOCUMENT}#/{_pointer(*location)}"}
        return Draft202012Validator(ref, registry=self.registry, format_checker=FORMATS)

    def response(self, path: str, method: str, status: int, media: str = JSON) -> Draft202012Validator:
        return self.validator("paths", path, method, "responses", str(status), "content", media, "schema")

    async def check(self, path: str, method: str, resp: ClientResponse) -> Any:
        """The response's JSON body, after validating it against what the document says of it."""
        body = await resp.json()
        self.response(path, method, resp.status).validate(body)
        return body


async def _document(api: Api) -> Document:
    resp = await api.session.get(api.url("/openapi.json"))
    assert resp.status == 200
    return Document(await resp.json())


async def _auditor_key(api: Api) -> str:
    async with api.container.engine.begin() as conn:
        return (await add_auditor_key(conn, name="soc2-auditor")).api_key


async def _approve(api: Api, request_id: str) -> None:
    """A human approval, recorded and announced as the Slack click handler does (no Slack here)."""
    clicker = Clicker("U01COO", "T0TEAM", "Cora Coo", "coo@example.com")
    async with api.container.engine.begin() as conn:
        await record_click(conn, Click(request_id, "approve", clicker, "1700000000.000100"))
    api.container.committed(request_id)


async def test_every_agent_operation_answers_as_documented(cb_api: Api, receiver: Receiver) -> None:
    doc = await _document(cb_api)
    create, one = "/v1/requests", "/v1/requests/{id}"
    cancel, outcome = "/v1/requests/{id}/cancel", "/v1/requests/{id}/outcome"
    body = offer(callback_url=receiver.url())

    first = await cb_api.post(create, body, headers={"Idempotency-Key": "k-1"})
    created = await doc.check(create, "post", first)
    assert first.status == 201 and created["status"] == "pending"
    again = await cb_api.post(create, body, headers={"Idempotency-Key": "k-1"})
    assert (await doc.check(create, "post", again)) == created
    assert again.headers["Idempotent-Replayed"] == "true"
    # Replayed from a JSON column (which sorts keys), it is still the first answer byte for byte.
    assert await again.read() == await first.read()

    request_id = created["id"]
    await _approve(cb_api, request_id)
    await receiver.wait_for(1)  # the request.approved callback

    async def delivered() -> dict[str, Any]:
        view = await doc.check(one, "get", await cb_api.get(f"/v1/requests/{request_id}"))
        assert [d["result"] for d in view["deliveries"] if d["kind"] == "callback"] == ["delivered"]
        return view

    read = await eventually(delivered, what="the callback attempt under deliveries")
    [decision] = read["decisions"]
    assert (decision["approver"]["id"], decision["decision"]) == ("U01COO", "approve")
    waited = await cb_api.get(f"/v1/requests/{request_id}?wait=1")
    assert (await doc.check(one, "get", waited))["status"] == "approved"

    closed = await cb_api.post(
        f"/v1/requests/{request_id}/outcome", {"status": "succeeded", "external_ref": "msg-1"}
    )
    recorded = await doc.check(outcome, "post", closed)
    assert closed.status == 200 and recorded["outcome"]["external_ref"] == "msg-1"
    [outcome_hit] = [h for h in await receiver.wait_for(2) if json.loads(h.body)["type"] == "request.outcome"]

    callback = doc.validator("webhooks", "callback", "post", "requestBody", "content", JSON, "schema")
    for hit in [*receiver.received, outcome_hit]:
        callback.validate(json.loads(hit.body))
    assert json.loads(outcome_hit.body)["data"]["outcome"]["status"] == "succeeded"

    pending = await (await cb_api.post(create, offer())).json()
    cancelled = await cb_api.post(f"/v1/requests/{pending['id']}/cancel")
    assert cancelled.status == 200 and (await doc.check(cancel, "post", cancelled))["status"] == "cancelled"

    # Refusals: each validates against the error schema the document gives for that status.
    refusals = [
        (cancel, "post", await cb_api.post(f"/v1/requests/{pending['id']}/cancel"), 409),
        (one, "get", await cb_api.get("/v1/requests/req_missing"), 404),
        (one, "get", await cb_api.get(f"/v1/requests/{request_id}?wait=61"), 422),
        (create, "post", await cb_api.post(create, offer(surprise=True)), 422),
        (create, "post", await cb_api.post(create, offer(action="refund_customer")), 403),
        (create, "post", await cb_api.post(create, offer(), key="apk_not_a_key"), 401),
        (outcome, "post", await cb_api.post(f"/v1/requests/{request_id}/outcome", {"status": "x"}), 422),
        (
            outcome,
            "post",
            await cb_api.session.post(
                cb_api.url(f"/v1/requests/{request_id}/outcome"),
                data=b"{not json",
                headers=cb_api.headers(**{"Content-Type": JSON}),
            ),
            400,
        ),
    ]
    for path, method, resp, status in refusals:
        assert resp.status == status, (path, method, await resp.text())
        assert (await doc.check(path, method, resp))["error"]["code"]


async def test_chains_answer_as_documented(cb_api: Api) -> None:
    doc = await _document(cb_api)
    auditor = await _auditor_key(cb_api)
    created = await (await cb_api.post("/v1/requests", offer())).json()
    await _approve(cb_api, created["id"])
    allowed = await (await cb_api.post("/v1/requests", offer(action="read_mail"))).json()
    await cb_api.post(f"/v1/requests/{allowed['id']}/outcome", {"status": "failed", "detail": "bounced"})

    page = await doc.check("/v1/audit/chains", "get", await cb_api.get("/v1/audit/chains", key=auditor))
    assert page["count"] == len(page["chains"]) == 2
    chain = await doc.check(
        "/v1/audit/chains/{id}", "get", await cb_api.get(f"/v1/audit/chains/{created['id']}", key=auditor)
    )
    assert [d["approver"]["id"] for d in chain["decisions"]] == ["U01COO"]
    assert chain["request"]["params"]["salary"] == "[redacted]"
    assert {c["outcome"]["status"] for c in page["chains"] if c["outcome"]} == {"failed"}

    refused = await cb_api.get("/v1/audit/chains")  # an agent's key
    assert refused.status == 403
    await doc.check("/v1/audit/chains", "get", refused)
    missing = await cb_api.get("/v1/audit/chains/req_missing", key=auditor)
    assert missing.status == 404
    await doc.check("/v1/audit/chains/{id}", "get", missing)


async def test_a_field_the_document_does_not_declare_fails_validation(api: Api) -> None:
    """Every object an answer is made of is closed (additionalProperties: false), so a field added to
    an answer but not to its declaration fails the checks above."""
    doc = await _document(api)
    for name, schema in doc.spec["components"]["schemas"].items():
        if schema.get("type") == "object" and "properties" in schema:
            assert schema.get("additionalProperties") is False, name
    view = await doc.check("/v1/requests", "post", await api.post("/v1/requests", offer()))
    validator = doc.response("/v1/requests/{id}", "get", 200)
    validator.validate(view)
    for extended in (
        {**view, "surprise": 1},
        {**view, "requester": {**view["requester"], "surprise": 1}},
        {**view, "policy": {**view["policy"], "surprise": 1}},
    ):
        with pytest.raises(ValidationError, match="surprise"):
            validator.validate(extended)
    without = {k: v for k, v in view.items() if k != "deliveries"}
    with pytest.raises(ValidationError, match="deliveries"):
        validator.validate(without)


@pytest.fixture
async def slack(database_url: str) -> AsyncIterator[SlackApi]:
    """The service with Slack on (a fake Slack API), so that every route it documents is live."""
    async for api in slack_service(database_url):
        yield api


async def test_every_documented_path_answers_with_a_documented_status(slack: SlackApi) -> None:
    api = slack
    doc = await _document(api)
    auditor = await _auditor_key(api)
    request_id = (await (await api.post("/v1/requests", offer())).json())["id"]
    bodies: dict[str, Any] = {
        "/v1/requests": offer(),
        "/v1/requests/{id}/outcome": {"status": "succeeded"},
        "/slack/events": {},
    }
    for path, item in doc.spec["paths"].items():
        key = auditor if path.startswith("/v1/audit/") else None
        for method, operation in item.items():
            url = api.url(path.replace("{id}", request_id))
            if method == "get":
                resp = await api.session.get(url, headers=api.headers(key))
            else:
                resp = await api.session.post(url, json=bodies.get(path), headers=api.headers(key))
            assert resp.status not in (404, 405), (method, path)
            assert str(resp.status) in operation["responses"], (method, path, resp.status)
            media = resp.content_type
            documented = operation["responses"][str(resp.status)].get("content", {})
            if media == JSON and JSON in documented:
                doc.response(path, method, resp.status).validate(await resp.json())


def test_the_agent_guide_lists_the_fields_of_the_request() -> None:
    """docs/agent-api.md's table of the request names exactly the fields the answers carry."""
    guide = (Path(__file__).resolve().parent.parent / "docs" / "agent-api.md").read_text(encoding="utf-8")
    section = guide.split("## The request\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = [name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])]
    assert sorted(listed) == sorted(RequestView.__required_keys__)
