"""The code blocks of the guides run as written (on the bundled zoo, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.mark.parametrize("name", ["hook_scripting.md"])
def test_guide_code_runs(name, capsys):
    blocks = _blocks(name)
    assert len(blocks) >= 5
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, f"{name}", "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    assert "hooks vs resumed" in out
    # the slow hooked forward and the fast sweep agree
    assert namespace["fast"].item() == pytest.approx(namespace["slow"].item(), abs=1e-5)
