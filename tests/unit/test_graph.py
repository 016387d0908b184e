from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ductwork.api import Stage, pipeline
from ductwork.errors import SpecError, UsageError


def src() -> pl.DataFrame:
    return pl.DataFrame({"a": [1]})


def step(x: pl.LazyFrame) -> pl.LazyFrame:
    return x


def fan_out_fan_in(tmp_path: Path):  # type: ignore[no-untyped-def]
    return pipeline(
        "fan",
        [
            Stage("a", src),
            Stage("b", step, inputs={"x": "a"}),
            Stage("c", step, inputs={"x": "a"}),
            Stage("d", lambda b, c: b, inputs=["b", "c"]),
        ],
        project_dir=tmp_path,
    )


def test_order_is_topological_and_stable(tmp_path: Path) -> None:
    p = fan_out_fan_in(tmp_path)
    assert p.order == ["a", "b", "c", "d"]


def test_selection(tmp_path: Path) -> None:
    p = fan_out_fan_in(tmp_path)
    assert p.select(only=["b"]) == {"b"}
    assert p.select(from_=["b"]) == {"b", "d"}
    assert p.select(to=["b"]) == {"a", "b"}
    assert p.select(from_=["a"], to=["c"]) == {"a", "c"}


def test_unknown_stage_in_selection_suggests(tmp_path: Path) -> None:
    p = fan_out_fan_in(tmp_path)
    with pytest.raises(UsageError, match="no stage named 'bb' - did you mean 'b'"):
        p.select(only=["bb"])


def test_cycle_is_reported_with_the_loop(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cycle") as exc:
        pipeline(
            "cyc",
            [Stage("a", step, inputs={"x": "b"}), Stage("b", step, inputs={"x": "a"})],
            project_dir=tmp_path,
        )
    assert "a -> b -> a" in str(exc.value) or "b -> a -> b" in str(exc.value)


def test_duplicate_and_missing_inputs_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        pipeline(
            "bad",
            [Stage("a", src), Stage("a", src), Stage("c", step, inputs={"x": "aa"})],
            project_dir=tmp_path,
        )
    text = str(exc.value)
    assert "duplicate stage name 'a'" in text
    assert "input 'aa' names no stage - did you mean 'a'?" in text


def test_after_orders_stages_without_passing_data(tmp_path: Path) -> None:
    p = pipeline(
        "after",
        [
            Stage("reader", src, inputs=[], after=["writer"]),
            Stage("writer", src, inputs=[]),
        ],
        project_dir=tmp_path,
    )
    assert p.order == ["writer", "reader"]
    assert p.stages["reader"].inputs == {}
    with pytest.raises(SpecError, match="after 'writr' names no stage - did you mean 'writer'"):
        pipeline(
            "bad",
            [Stage("writer", src), Stage("r", src, inputs=[], after=["writr"])],
            project_dir=tmp_path,
        )
