"""Operations endpoints: health, readiness, metrics, and an OpenAPI document in step with the routes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from app.database import build_engine
from app.http.openapi import openapi_spec
from app.web import build_app
from tests.conftest import Api, head_revision, offer


async def test_healthz_and_readyz_report_a_migrated_database(api: Api) -> None:
    assert (await (await api.session.get(api.url("/healthz"))).json()) == {"status": "ok"}
    ready = await api.session.get(api.url("/readyz"))
    assert ready.status == 200
    assert (await ready.json())["revision"] == head_revision()


async def test_readyz_reports_an_outdated_schema(api: Api) -> None:
    async with api.container.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))
    try:
        ready = await api.session.get(api.url("/readyz"))
        assert ready.status == 503
        assert (await ready.json())["database"] == "not migrated"
    finally:
        async with api.container.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()})


async def test_readyz_reports_an_unreachable_database(api: Api, tmp_path: Path) -> None:
    original = api.container.engine
    # Nothing listens on port 1.
    broken = original.url.set(host="127.0.0.1", port=1, query={})
    api.container.engine = build_engine(broken.render_as_string(hide_password=False))
    try:
        ready = await api.session.get(api.url("/readyz"))
        assert ready.status == 503
        assert (await ready.json())["database"] == "unreachable"
    finally:
        await api.container.engine.dispose()
        api.container.engine = original


async def test_metrics_count_created_requests(api: Api) -> None:
    await api.post("/v1/requests", offer())
    body = await (await api.session.get(api.url("/metrics"))).text()
    assert 'approvals_requests_created_total{status="pending"} 1.0' in body


async def test_openapi_describes_every_route_and_nothing_else(api: Api) -> None:
    spec = await (await api.session.get(api.url("/openapi.json"))).json()
    app = build_app(api.container, run_scheduler=False)
    routes = {
        (resource.canonical, route.method.lower())
        for resource in app.router.resources()
        for route in resource
        if route.method != "HEAD"
    }
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert documented == routes
    assert spec == openapi_spec(api.container.settings.public_url)


async def test_openapi_request_schema_forbids_unknown_fields(api: Api) -> None:
    spec = await (await api.session.get(api.url("/openapi.json"))).json()
    schema = spec["components"]["schemas"]["CreateRequest"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"action", "title", "on_behalf_of"}
