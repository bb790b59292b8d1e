"""The pack's routes and UI events inside a real ComfyUI (aiohttp only, no browser)."""

from __future__ import annotations

import asyncio

import pytest


def _get(comfy_env, folder, route):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    routes = web.RouteTableDef()
    comfy_env.pack("nodes.routes").add_routes(routes, lambda: [folder], lambda: ["ok.safetensors"])

    async def run():
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            response = await client.get(route)
            return response.status, await response.json()

    return asyncio.run(run())


@pytest.fixture
def folder(tmp_path, pixart, comfy_env):
    import shutil

    shutil.copy(comfy_env.path("models", "edit", pixart.adapter_file), tmp_path / "ok.safetensors")
    return str(tmp_path)


def test_adapter_route_reads_the_facts(comfy_env, folder):
    status, facts = _get(comfy_env, folder, "/edit/adapters/ok.safetensors")
    assert status == 200 and facts["family"] == "pixart_sigma"


def test_adapter_list(comfy_env, folder):
    status, body = _get(comfy_env, folder, "/edit/adapters")
    assert status == 200 and [a["name"] for a in body["adapters"]] == ["ok.safetensors"]


def test_encoded_traversal_is_refused(comfy_env, folder):
    status, body = _get(comfy_env, folder, "/edit/adapters/..%2Fok.safetensors")
    assert status == 400 and "error" in body


def test_tiles_route(comfy_env, folder):
    status, plan = _get(comfy_env, folder, "/edit/tiles?width=2048&height=1024&tile_width=1024&tile_height=1024&overlap=0")
    assert status == 200 and (plan["rows"], plan["cols"]) == (1, 2)


def test_events_without_a_server_do_nothing(comfy_env):
    events = comfy_env.pack("nodes.events")
    assert events.send_event(events.DISTILL_EVENT, {"step": 1}) is False


def test_distill_progress_payload_has_eta(comfy_env):
    events = comfy_env.pack("nodes.events")
    payload = events.distill_progress(10, 110, {"loss": 0.5, "steps_per_s": 2.0})
    assert (payload["step"], payload["total"], payload["loss"], payload["eta_s"]) == (10, 110, 0.5, 50.0)
