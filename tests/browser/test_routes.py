"""The pack's routes on the real server: adapter facts from headers, and no way out of models/edit."""

from __future__ import annotations

import pytest

from tests.browser.adapters import BROKEN, ESCAPING, INIT, TRAINED


def test_list_has_every_adapter_but_the_escaping_symlink(comfy_server):
    status, body = comfy_server.get("/api/edit/adapters")
    assert status == 200
    assert sorted(a["name"] for a in body["adapters"]) == sorted([BROKEN, INIT, TRAINED])


def test_one_adapters_facts(comfy_server):
    status, facts = comfy_server.get(f"/edit/adapters/{TRAINED}")
    assert status == 200
    assert (facts["family"], facts["variant"], facts["num_blocks"], facts["trained"], facts["steps"],
            facts["resolutions"]) == ("pixart_sigma", "edit", 2, True, 1200, [512, 1024])


def test_a_pickle_is_reported_not_loaded(comfy_server):
    status, facts = comfy_server.get(f"/edit/adapters/{BROKEN}")
    assert status == 200 and facts["valid"] is False and "pickle" in facts["problems"][0]


@pytest.mark.parametrize("name", ["..%2F..%2Fuser%2Fdefault%2Fcomfy.settings.json", "..%2Fcomfyui.log",
                                  "%2Fetc%2Fpasswd", "tiny%2F..%2F..%2Fedit%2Fbroken.safetensors",
                                  "C:%5Cwindows%5Cwin.ini", "tiny_pixart_init.json"])
def test_names_leaving_the_folder_are_refused(comfy_server, name):
    status, body = comfy_server.get(f"/api/edit/adapters/{name}")
    assert status == 400 and "error" in body


def test_a_symlink_out_of_the_folder_is_not_found(comfy_server):
    status, body = comfy_server.get(f"/edit/adapters/{ESCAPING}")
    assert status == 404 and "error" in body


def test_dot_dot_in_the_raw_path_never_reaches_outside(comfy_server):
    status, body = comfy_server.get("/edit/adapters/../../../etc/passwd")
    assert status in (400, 404)
    assert "root:" not in str(body)


def test_tiles_route_validates_its_query(comfy_server):
    assert comfy_server.get("/edit/tiles?width=4096")[0] == 400
    assert comfy_server.get("/edit/tiles?width=a&height=1&tile_width=1&tile_height=1&overlap=0")[0] == 400
    status, plan = comfy_server.get("/edit/tiles?width=4096&height=4096&tile_width=2176&tile_height=2176&overlap=256")
    assert status == 200 and (plan["rows"], plan["cols"]) == (2, 2)
