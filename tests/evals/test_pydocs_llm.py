"""Evals of the pydocs example's LLM labelling: valid answers, agreement with the truth, cost.

The pipeline of examples/pydocs runs up to ``compare`` (docstrings → checked → labelled →
compare) in a copy of the example, through the public API:

* ``stand-in``: against ``ductwork.ai.testserver.LLMTestServer``, the offline keyword-heuristic
  stand-in (NOT a model). Its figures pin the pipeline's plumbing (every answer valid, labels
  land on the right rows) and catch a prompt change that hides the doc from the "model"; they
  say nothing about how well a real model labels.
* ``claude``: the same against Claude (``claude-haiku-4-5``), only when ANTHROPIC_API_KEY is set.

The true label of a row is the category of its module (in the pipeline file); the model sees
the function's name, signature and doc only. Figures are printed and recorded as properties.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ductwork import api
from ductwork.ai.cost import known_price
from ductwork.ai.testserver import LLMTestServer
from ductwork.core.runner import RunResult

from .conftest import EXAMPLES

pytestmark = pytest.mark.evals

# Measured (stand-in, Python 3.11, 436 rows): validity 1.000, agreement 0.376 (chance: 1/7),
# 270.7 input + 24.4 output tokens a row (the server's estimates).
FLOORS = {
    "stand-in": {"validity": 0.99, "agreement": 0.33},
    # not measured on the development machine (no key there): what a current small Claude
    # model should reach on seven plain categories, with room for the label noise of modules
    # such as os (listdir is "system" here, "files" to a reader)
    "claude": {"validity": 0.99, "agreement": 0.80},
}
CEILINGS: dict[str, dict[str, float]] = {  # per row
    "stand-in": {"input_tokens": 350, "output_tokens": 60},
    # tool use adds the tool definition to every request's input
    "claude": {"input_tokens": 1200, "output_tokens": 150, "cost_usd": 0.002},
}
HAIKU = "claude-haiku-4-5"


@dataclass
class Labelled:
    who: str
    project: Path
    result: RunResult

    def output(self, stage: str, name: str | None = None) -> Any:
        outputs = self.result.outputs(stage)
        return api.read_artifact(outputs[name] if name else next(iter(outputs.values())))


def _copy(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline.yaml", "stdlib_docs.py"):
        shutil.copy(EXAMPLES / "pydocs" / name, target / name)
    return target


@pytest.fixture(scope="module", params=["stand-in", "claude"])
def labelled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Labelled]:
    who: str = request.param
    project = _copy(tmp_path_factory.mktemp(f"eval-pydocs-{who}"))
    with pytest.MonkeyPatch.context() as mp:
        if who == "claude":
            if not os.environ.get("ANTHROPIC_API_KEY"):
                pytest.skip("ANTHROPIC_API_KEY is not set: the Claude eval needs it")
            mp.delenv("LLM_BASE_URL", raising=False)
            mp.setenv("LLM_MODEL", HAIKU)
            result = api.run(project / "pipeline.yaml", to=["compare"])
        else:
            with LLMTestServer() as server:
                mp.setenv("LLM_BASE_URL", server.anthropic_url)
                mp.setenv("LLM_MODEL", "stand-in")
                result = api.run(project / "pipeline.yaml", to=["compare"])
        assert result.exit_code == 0, result.error
        yield Labelled(who, project, result)


def test_answers_are_valid(labelled: Labelled, record_property: Any) -> None:
    usage = labelled.output("labelled", "usage")
    rows_in = usage["rows_in"]
    assert rows_in == labelled.result.outputs("checked")["passed"].rows
    validity = usage["rows_validated"] / rows_in
    assert usage["rows_validated"] + usage["rows_quarantined"] == rows_in
    record_property(f"{labelled.who}_validity", validity)
    print(f"\n{labelled.who}: {usage['rows_validated']}/{rows_in} answers valid ({validity:.3f})")
    assert validity >= FLOORS[labelled.who]["validity"]


def test_categories_agree_with_the_modules(labelled: Labelled, record_property: Any) -> None:
    compare: pl.DataFrame = labelled.output("compare")
    agreement = compare["agree"].cast(pl.Float64).mean()
    assert isinstance(agreement, float)
    per_category = (
        compare.group_by("true_category")
        .agg(pl.col("agree").mean().alias("agreement"), pl.len().alias("rows"))
        .sort("true_category")
    )
    record_property(f"{labelled.who}_agreement", agreement)
    print(f"\n{labelled.who}: category agreement {agreement:.3f} on {compare.height} rows")
    print(per_category)
    # the labels are on the right rows: every compared row is a row of the input
    assert compare["qualname"].is_unique().all()
    checked = labelled.output("checked")
    assert set(compare["qualname"]) <= set(checked["qualname"])
    assert agreement >= FLOORS[labelled.who]["agreement"]


def test_tokens_and_cost_per_row(labelled: Labelled, record_property: Any) -> None:
    usage = labelled.output("labelled", "usage")
    rows = usage["rows_in"]
    per_row = {
        "input_tokens": usage["input_tokens"] / rows,
        "output_tokens": usage["output_tokens"] / rows,
    }
    price = known_price(HAIKU)
    assert price is not None
    # the stand-in has no price: what its token counts would cost at claude-haiku-4-5's
    cost = (
        usage["cost_usd"]
        if usage["cost_usd"] is not None
        else price.cost(usage["input_tokens"], usage["output_tokens"])
    )
    per_row["cost_usd"] = cost / rows
    for name, value in per_row.items():
        record_property(f"{labelled.who}_{name}_per_row", value)
    print(
        f"\n{labelled.who}: {per_row['input_tokens']:.1f} input + "
        f"{per_row['output_tokens']:.1f} output tokens a row, ${per_row['cost_usd']:.6f} a row "
        f"({'billed' if usage['cost_usd'] is not None else 'at ' + HAIKU + ' prices'}), "
        f"{usage['requests']} requests, {usage['repairs']} repairs"
    )
    for name, ceiling in CEILINGS[labelled.who].items():
        assert per_row[name] <= ceiling, f"{name} per row {per_row[name]:.4g} > {ceiling}"
