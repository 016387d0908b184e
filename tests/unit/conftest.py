from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

STEPS = """
import polars as pl

CALLS = []


def src():
    return pl.DataFrame({"x": [1, 2, 3], "g": ["a", "b", "a"]})


def double(src: pl.LazyFrame, factor: int = 2) -> pl.LazyFrame:
    return src.with_columns(pl.col("x") * factor)


def boom(src: pl.LazyFrame, factor: int = 2) -> pl.LazyFrame:
    raise RuntimeError("boom in stage")
"""


@pytest.fixture
def steps(tmp_path: Path) -> str:
    """A uniquely named module of stage functions in the project directory (tmp_path)."""
    name = f"steps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(STEPS))
    return name
