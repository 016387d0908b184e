"""The code in docs/extending.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import polars as pl

from ductwork.testing import run_stage

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_custom_kind_example_runs(tmp_path: Path) -> None:
    kind_src = next(b for b in blocks() if "class Sample(" in b)
    ns: dict[str, Any] = {}
    exec(kind_src, ns)
    sample = ns["Sample"]
    out = run_stage(
        sample, {"fraction": 0.5, "seed": 1}, {"x": pl.DataFrame({"a": range(100)})}, tmp_path
    )
    assert out.values["main"].height == 50
    assert out.violations == []
    assert out.metrics == {"rows_in": 100}


def test_python_stage_example_runs(tmp_path: Path) -> None:
    src = next(b for b in blocks() if "def add_route" in b)
    ns: dict[str, Any] = {}
    exec(src, ns)
    df = pl.DataFrame({"origin": ["JFK"], "dest": ["LAX"]})
    assert ns["add_route"](df.lazy()).collect()["route"].to_list() == ["JFK-LAX"]
