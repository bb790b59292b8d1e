"""What the README and pyproject.toml promise can be checked: no invented addresses, no links out of the
repository, and example command lines that the code accepts."""

import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_pyproject_names_no_repository_url_until_one_exists():
    import tomllib

    project = tomllib.loads(_read("pyproject.toml"))["project"]
    assert "urls" not in project, "add [project.urls] only with a repository that exists"


def test_readme_has_no_placeholder_clone_target_and_no_link_out_of_the_repository():
    readme = _read("README.md")
    assert "<this repo>" not in readme and "../shared" not in readme
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if "://" not in target:
            assert os.path.exists(os.path.join(ROOT, target)), f"README links to missing {target}"


def test_readme_resolution_and_stage_fraction_examples_are_accepted():
    from edit_core.distill.data import stage_plan

    readme = _read("README.md")
    pairs = re.findall(r"--resolution ([\d,]+)[^\n]*?--stage-fractions ([\d.,]+)", readme)
    assert pairs, "the README shows --resolution with --stage-fractions"
    for resolutions, fractions in pairs:
        stages = stage_plan(1000, [int(r) for r in resolutions.split(",")],
                            [float(f) for f in fractions.split(",")])
        assert [s.resolution for s in stages] == [int(r) for r in resolutions.split(",")]
