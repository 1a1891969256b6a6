"""Bad input gets a clear JSON error with the right status and leaves nothing behind."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from app.config import MAX_BODY_BYTES
from approvals.tables import requests
from tests.conftest import Api, offer, stop_service


async def _error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body["error"]) == {"code", "message", "field"}
    assert "Traceback" not in body["error"]["message"]
    return dict(body["error"])


async def _request_count(api: Api) -> int:
    async with api.container.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(requests))).scalar_one())


async def _post_raw(api: Api, data: bytes, content_type: str = "application/json") -> Any:
    return await api.session.post(
        api.url("/v1/requests"), data=data, headers=api.headers(**{"Content-Type": content_type})
    )


async def test_malformed_json_is_a_400(api: Api) -> None:
    error = await _error(await _post_raw(api, b'{"action": "x",'), 400)
    assert error["code"] == "invalid_json"
    assert await _request_count(api) == 0


async def test_non_utf8_body_is_a_400(api: Api) -> None:
    error = await _error(await _post_raw(api, b'{"title": "\xff\xfe"}'), 400)
    assert error["code"] == "invalid_encoding"


async def test_a_json_array_is_not_a_request(api: Api) -> None:
    error = await _error(await _post_raw(api, b"[1, 2]"), 400)
    assert error["message"] == "the request body must be a JSON object"


async def test_nan_is_not_json(api: Api) -> None:
    error = await _error(await _post_raw(api, json.dumps(offer(params={"x": float("nan")})).encode()), 400)
    assert error["code"] == "invalid_json"


async def test_absurdly_deep_nesting_is_refused_without_a_crash(api: Api) -> None:
    deep = b'{"params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error = await _error(await _post_raw(api, deep), 400)
    assert error["code"] == "invalid_json"
    nested: Any = {}
    for _ in range(40):
        nested = {"n": nested}
    error = await _error(await api.post("/v1/requests", offer(params=nested)), 422)
    assert error["field"] == "params"


async def test_wrong_media_type_is_a_415(api: Api) -> None:
    error = await _error(await _post_raw(api, json.dumps(offer()).encode(), "text/plain"), 415)
    assert error["code"] == "unsupported_media_type"


async def test_oversize_body_is_a_413_and_nothing_is_written(api: Api) -> None:
    body = json.dumps(offer(summary="x", params={"blob": "y" * (MAX_BODY_BYTES + 10)})).encode()
    error = await _error(await _post_raw(api, body), 413)
    assert error["code"] == "body_too_large"
    assert await _request_count(api) == 0


async def test_oversize_chunked_body_is_a_413(api: Api) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 100_000

    resp = await api.session.post(
        api.url("/v1/requests"), data=chunks(), headers=api.headers(**{"Content-Type": "application/json"})
    )
    await _error(resp, 413)


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"unexpected": 1}, "unknown_field", "unexpected"),
        ({"title": None}, "invalid_field", "title"),
        ({"title": 42}, "invalid_field", "title"),
        ({"params": [1, 2]}, "invalid_field", "params"),
        ({"expires_in": "60"}, "invalid_field", "expires_in"),
        ({"expires_in": 0}, "invalid_field", "expires_in"),
        ({"expires_in": -5}, "invalid_field", "expires_in"),
        ({"expires_in": True}, "invalid_field", "expires_in"),
        ({"expires_in": 10**12}, "invalid_field", "expires_in"),
        ({"title": "t" * 201}, "invalid_field", "title"),
        ({"summary": "s" * 4001}, "invalid_field", "summary"),
        ({"action": "bad action!"}, "invalid_field", "action"),
        ({"links": ["javascript:alert(1)"]}, "invalid_field", "links.0"),
        ({"links": ["https://x.example/" + "a" * 2100]}, "invalid_field", "links.0"),
        ({"links": ["https://x.example"] * 21}, "invalid_field", "links"),
        ({"callback_url": "ftp://agent.example.com/cb"}, "invalid_field", "callback_url"),
        ({"callback_url": "https://agent.example.com:99999/cb"}, "invalid_field", "callback_url"),
        ({"callback_url": "http://exa mple.com/"}, "invalid_field", "callback_url"),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    api: Api, change: dict[str, Any], code: str, field: str
) -> None:
    error = await _error(await api.post("/v1/requests", offer(**change)), 422)
    assert (error["code"], error["field"]) == (code, field)
    assert await _request_count(api) == 0


@pytest.mark.parametrize("missing", ["action", "title", "on_behalf_of"])
async def test_missing_fields_are_422(api: Api, missing: str) -> None:
    body = offer()
    del body[missing]
    error = await _error(await api.post("/v1/requests", body), 422)
    assert (error["code"], error["field"]) == ("missing_field", missing)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/cb",
        "http://localhost/cb",
        "http://10.1.2.3/cb",
        "http://192.168.0.10/cb",
        "http://172.16.5.4/cb",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/cb",
        "http://[::ffff:127.0.0.1]/cb",
        "http://0.0.0.0/cb",
        "http://100.64.0.1/cb",
    ],
)
async def test_callback_urls_to_non_public_addresses_are_refused(api: Api, url: str) -> None:
    error = await _error(await api.post("/v1/requests", offer(callback_url=url)), 422)
    assert (error["code"], error["field"]) == ("callback_url_forbidden", "callback_url")
    assert "APPROVALS_CALLBACK_ALLOW_HOSTS" in error["message"]


async def test_an_unresolvable_callback_host_is_refused(api: Api) -> None:
    error = await _error(await api.post("/v1/requests", offer(callback_url="http://nowhere.invalid/cb")), 422)
    assert error["code"] == "callback_url_unresolvable"


async def test_allowed_hosts_let_a_private_callback_through(database_url: str) -> None:
    from aiohttp import ClientSession

    from tests.conftest import start_service

    container, server = await start_service(database_url, callback_allow_hosts=["localhost", "10.0.0.0/8"])
    try:
        async with ClientSession() as session:
            api = Api(session=session, base=str(server.make_url("")), key="", container=container)
            api.key = await api.add_agent("cb-bot", ["send_offer_letter"])
            for url in ("http://localhost:9000/cb", "http://10.9.8.7/cb"):
                assert (await api.post("/v1/requests", offer(callback_url=url))).status == 201
            refused = await api.post("/v1/requests", offer(callback_url="http://192.168.1.1/cb"))
            assert refused.status == 422
    finally:
        await stop_service(container, server)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer apk_wrong", "Basic abc", "bearer "])
async def test_missing_or_wrong_keys_are_401(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    resp = await api.session.post(api.url("/v1/requests"), json=offer(), headers=headers)
    await _error(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_unknown_paths_and_methods_get_json_errors(api: Api) -> None:
    assert (await _error(await api.get("/v1/nothing"), 404))["code"] == "not_found"
    resp = await api.session.delete(api.url("/v1/requests"), headers=api.headers())
    assert (await _error(resp, 405))["code"] == "method_not_allowed"


@pytest.mark.parametrize("wait", ["-1", "61", "abc", "1.5"])
async def test_bad_wait_values_are_422(api: Api, wait: str) -> None:
    created = await (await api.post("/v1/requests", offer())).json()
    error = await _error(await api.get(f"/v1/requests/{created['id']}?wait={wait}"), 422)
    assert error["field"] == "wait"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"status": "done"}, "status"), ({"status": "succeeded", "extra": 1}, "extra"), ({}, "status")],
)
async def test_bad_outcome_bodies_are_422(api: Api, body: dict[str, Any], field: str) -> None:
    created = await (await api.post("/v1/requests", offer(action="read_calendar"))).json()
    error = await _error(await api.post(f"/v1/requests/{created['id']}/outcome", body), 422)
    assert error["field"] == field


async def test_a_bad_idempotency_key_is_422(api: Api) -> None:
    resp = await api.post("/v1/requests", offer(), headers={"Idempotency-Key": "x" * 300})
    assert (await _error(resp, 422))["field"] == "Idempotency-Key"
