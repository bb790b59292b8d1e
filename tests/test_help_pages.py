"""Node help pages read at the help panel's default width: no tables, one format for inputs."""

import glob
import os
import re

import pytest

DOCS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "web", "docs", "*.md")))
INPUT_LINE = re.compile(r"^- \*\*`\w+`\*\*(, \*\*`\w+`\*\*)*( \(optional\))?: \S")


@pytest.mark.parametrize("path", DOCS, ids=[os.path.basename(p) for p in DOCS])
def test_help_page_has_no_tables_and_one_input_format(path):
    text = open(path, encoding="utf-8").read()
    assert not [line for line in text.splitlines() if line.startswith("|")], "tables are cramped in the help panel"
    inputs = text.split("## Inputs", 1)[1].split("\n## ", 1)[0]
    items = [line for line in inputs.splitlines() if line.startswith("- ")]
    assert items, "an Inputs section with one item per input"
    assert all(INPUT_LINE.match(line) for line in items), [line for line in items if not INPUT_LINE.match(line)]
