"""Adapter facts for the graph editor: header only, and no name leaves the adapter folder."""

import os

import pytest

from edit_core.adapter import init_adapter_from_teacher, save_adapter
from edit_core.adapter_info import AdapterLookupError, adapter_facts, resolve_adapter_file
from edit_core.tiny import comfy_pixart_state_dict


@pytest.fixture
def edit_dir(tmp_path):
    folder = tmp_path / "edit"
    (folder / "sub").mkdir(parents=True)
    adapter = init_adapter_from_teacher(comfy_pixart_state_dict(hidden=64, depth=2), "pixart_sigma", num_heads=4)
    save_adapter(adapter, str(folder / "init.safetensors"))
    adapter.config.training = {"stage": "distilled", "steps": 30, "target_steps": 40, "stopped_early": True,
                               "resolutions": [512]}
    save_adapter(adapter, str(folder / "sub" / "trained.safetensors"))
    save_adapter(adapter, str(tmp_path / "outside.safetensors"))
    os.symlink(tmp_path / "outside.safetensors", folder / "escape.safetensors")
    return folder


def test_a_name_in_a_subfolder_resolves(edit_dir):
    assert resolve_adapter_file([str(edit_dir)], "sub/trained.safetensors") == str(edit_dir / "sub" / "trained.safetensors")


@pytest.mark.parametrize("name", ["../outside.safetensors", "sub/../../outside.safetensors", "/etc/passwd",
                                  "C:\\x.safetensors", "sub\\..\\..\\outside.safetensors", "", "a//b.safetensors",
                                  "./init.safetensors", "init.json"])
def test_malformed_names_are_refused_with_400(edit_dir, name):
    with pytest.raises(AdapterLookupError) as e:
        resolve_adapter_file([str(edit_dir)], name)
    assert e.value.status == 400


def test_a_symlink_out_of_the_folder_is_not_found(edit_dir):
    with pytest.raises(AdapterLookupError) as e:
        resolve_adapter_file([str(edit_dir)], "escape.safetensors")
    assert e.value.status == 404


def test_a_missing_adapter_is_not_found(edit_dir):
    with pytest.raises(AdapterLookupError) as e:
        resolve_adapter_file([str(edit_dir)], "nope.safetensors")
    assert e.value.status == 404


def test_facts_of_an_init_adapter(edit_dir):
    facts = adapter_facts(str(edit_dir / "init.safetensors"), "init.safetensors")
    assert (facts["valid"], facts["family"], facts["variant"], facts["num_blocks"], facts["converted_blocks"],
            facts["trained"], facts["state"], facts["steps"]) == (True, "pixart_sigma", "edit", 2, 2, False,
                                                                  "untrained init", 0)


def test_facts_of_a_distilled_adapter(edit_dir):
    facts = adapter_facts(str(edit_dir / "sub" / "trained.safetensors"), "sub/trained.safetensors")
    assert (facts["trained"], facts["steps"], facts["target_steps"], facts["stopped_early"], facts["resolutions"]) == (
        True, 30, 40, True, [512])


def test_facts_read_only_the_header(edit_dir, monkeypatch):
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("tensors were loaded")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    assert adapter_facts(str(edit_dir / "init.safetensors"), "init.safetensors")["parameters"] > 0


def test_a_pickle_gives_problems_not_an_exception(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x80\x02}q\x00.")
    facts = adapter_facts(str(path), "bad.safetensors")
    assert facts["valid"] is False and "pickle" in facts["problems"][0]
