"""The runner through the Python API, with `kind: python` stages from a module in the project."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest

import ductwork as dw
from ductwork.core.contract import Inputs, Output, StageContext, StageKind, StageParams
from ductwork.core.events import Event, RunFinished, StageFinished
from ductwork.errors import UsageError
from ductwork.stages.registry import KINDS


def project(tmp_path: Path, steps: str, *, factor: int = 2, extra: str = "") -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(
        textwrap.dedent(
            f"""
            pipeline: t
            stages:
              - name: src
                kind: python
                uses: {steps}:src
              - name: doubled
                kind: python
                uses: {steps}:double
                params: {{args: {{factor: {factor}}}}}
              - name: summed
                kind: transform
                inputs: [doubled]
                params:
                  sql: select g, sum(x) as total from doubled group by g order by g
            """
        )
        + extra
    )
    return p


def statuses(res: dw.api.RunResult) -> dict[str, str]:  # type: ignore[name-defined]
    return {name: s.status for name, s in res.stages.items()}


def test_first_run_then_all_cached(tmp_path: Path, steps: str) -> None:
    pipe = dw.load(project(tmp_path, steps))
    first = dw.run(pipe)
    assert first.exit_code == 0
    assert statuses(first) == {"src": "ok", "doubled": "ok", "summed": "ok"}
    assert dw.artifact(pipe, "summed").to_dicts() == [
        {"g": "a", "total": 8},
        {"g": "b", "total": 4},
    ]
    again = dw.run(pipe)
    assert statuses(again) == {"src": "cached", "doubled": "cached", "summed": "cached"}
    assert again.stages["summed"].outputs == first.stages["summed"].outputs


def test_param_change_reruns_only_downstream_and_says_why(tmp_path: Path, steps: str) -> None:
    dw.run(dw.load(project(tmp_path, steps)))
    events: list[Event] = []
    res = dw.run(dw.load(project(tmp_path, steps, factor=3)), on_event=events.append)
    assert statuses(res) == {"src": "cached", "doubled": "ok", "summed": "ok"}
    reasons = {e.stage: e.reason for e in events if isinstance(e, StageFinished)}
    assert reasons["doubled"] == "param 'args' changed"
    assert reasons["summed"] == "input 'doubled' changed"


def test_plan_reports_stale_without_running(tmp_path: Path, steps: str) -> None:
    dw.run(dw.load(project(tmp_path, steps)))
    pipe = dw.load(project(tmp_path, steps, factor=5))
    plan = dw.plan(pipe)
    assert statuses(plan) == {"src": "cached", "doubled": "stale", "summed": "stale"}
    assert plan.stages["summed"].reason == "upstream stage 'doubled' will run"
    # nothing ran: the last real run still has factor 2
    assert dw.artifact(pipe, "summed")["total"].to_list() == [8, 4]


def test_failed_stage_keeps_earlier_artifacts_and_resumes(tmp_path: Path, steps: str) -> None:
    broken = project(tmp_path, steps).read_text().replace(f"{steps}:double", f"{steps}:boom")
    (tmp_path / "pipeline.yaml").write_text(broken)
    res = dw.run(dw.load(tmp_path / "pipeline.yaml"))
    assert res.exit_code == 1
    assert statuses(res) == {"src": "ok", "doubled": "failed", "summed": "skipped"}
    assert "boom in stage" in res.stages["doubled"].error["message"]  # type: ignore[index]
    fixed = dw.run(dw.load(project(tmp_path, steps)))
    assert statuses(fixed) == {"src": "cached", "doubled": "ok", "summed": "ok"}


def test_only_runs_one_stage_from_saved_inputs(tmp_path: Path, steps: str) -> None:
    pipe = dw.load(project(tmp_path, steps))
    with pytest.raises(UsageError, match="outside the selection and has no saved artifacts"):
        dw.run(pipe, only=["summed"])
    dw.run(pipe)
    res = dw.run(pipe, only=["summed"], force=True)
    assert statuses(res) == {"src": "saved", "doubled": "saved", "summed": "ok"}


def test_only_uses_saved_artifacts_even_when_upstream_is_stale(tmp_path: Path, steps: str) -> None:
    dw.run(dw.load(project(tmp_path, steps)))
    pipe = dw.load(project(tmp_path, steps, factor=10))
    res = dw.run(pipe, only=["summed"], force=True)
    assert res.stages["doubled"].status == "saved"
    assert "stale" in res.stages["doubled"].reason
    assert dw.artifact(pipe, "summed")["total"].to_list() == [8, 4]


def test_from_and_to(tmp_path: Path, steps: str) -> None:
    pipe = dw.load(project(tmp_path, steps))
    res = dw.run(pipe, to=["doubled"])
    assert statuses(res) == {"src": "ok", "doubled": "ok"}
    res = dw.run(pipe, from_=["doubled"], force=True)
    assert statuses(res) == {"src": "saved", "doubled": "ok", "summed": "ok"}


def test_force_reruns_everything(tmp_path: Path, steps: str) -> None:
    pipe = dw.load(project(tmp_path, steps))
    dw.run(pipe)
    assert set(statuses(dw.run(pipe, force=True)).values()) == {"ok"}


def test_expect_rule_failure_names_stage_artifact_and_rule(tmp_path: Path, steps: str) -> None:
    extra = """
  - name: checked
    kind: transform
    inputs: [summed]
    params: {sql: select * from summed}
    expect:
      - {column: total, between: [0, 5]}
"""
    res = dw.run(dw.load(project(tmp_path, steps, extra=extra)))
    assert res.exit_code == 1
    err = res.stages["checked"].error
    assert err is not None
    assert "output 'main'" in err["message"]
    assert "total" in err["message"]


def test_summary_event_is_last_and_counts(tmp_path: Path, steps: str) -> None:
    events: list[Event] = []
    dw.run(dw.load(project(tmp_path, steps)), on_event=events.append)
    assert isinstance(events[-1], RunFinished)
    assert events[-1].counts == {"ok": 3}


def test_python_api_pipeline_with_decorator(tmp_path: Path) -> None:
    @dw.stage
    def numbers() -> pl.DataFrame:
        return pl.DataFrame({"n": [1, 2, 3, 4]})

    @dw.stage(threshold=2)
    def big(numbers: pl.LazyFrame, threshold: int) -> pl.LazyFrame:
        return numbers.filter(pl.col("n") > threshold)

    pipe = dw.pipeline("py", [numbers, big], project_dir=tmp_path)
    res = dw.run(pipe)
    assert res.exit_code == 0
    assert dw.artifact(pipe, "big")["n"].to_list() == [3, 4]
    assert statuses(dw.run(pipe)) == {"numbers": "cached", "big": "cached"}


def test_thread_pool_runs_independent_branches(tmp_path: Path) -> None:
    import time

    def slow(tag: str):  # type: ignore[no-untyped-def]
        def f() -> pl.DataFrame:
            time.sleep(0.3)
            return pl.DataFrame({"t": [tag]})

        f.__name__ = tag
        return f

    stages = [dw.Stage(f"b{i}", slow(f"b{i}"), inputs=[]) for i in range(4)]
    pipe = dw.pipeline("par", stages, project_dir=tmp_path, executor={"workers": 4})
    res = dw.run(pipe)
    assert res.exit_code == 0
    # four 0.3 s sleeps on 4 workers overlap
    assert res.duration_s < 1.0


def test_validate_in_warn_mode_passes_its_input_through_as_the_same_artifact(
    tmp_path: Path, steps: str
) -> None:
    extra = """
  - name: checked
    kind: validate
    inputs: [src]
    params:
      on_fail: warn
      checks: [{column: x, between: [0, 2]}]
"""
    pipe = dw.load(project(tmp_path, steps, extra=extra))
    res = dw.run(pipe)
    assert res.exit_code == 0
    assert (
        res.stages["checked"].outputs["passed"].sha256 == res.stages["src"].outputs["main"].sha256
    )
    assert res.stages["checked"].metrics["unexpected_per_check"] == {"x:between": 1}


def test_process_pool_runs_stages_in_worker_processes(tmp_path: Path, steps: str) -> None:
    pipe = dw.load(project(tmp_path, steps))
    res = dw.run(pipe, workers=2, pool="process")
    assert res.exit_code == 0, res.error
    assert dw.artifact(pipe, "summed").to_dicts() == [
        {"g": "a", "total": 8},
        {"g": "b", "total": 4},
    ]
    # the same artifacts as an in-process run: execution is a pure function of its inputs
    inline = dw.run(pipe, workers=1, force=True)
    assert {n: s.outputs for n, s in inline.stages.items()} == {
        n: s.outputs for n, s in res.stages.items()
    }


def test_process_pool_refuses_unimportable_functions_clearly(tmp_path: Path) -> None:
    def local_source() -> pl.DataFrame:  # a local function: no worker process can import it
        return pl.DataFrame({"x": [1]})

    pipe = dw.pipeline("local", [dw.Stage("s", local_source, inputs=[])], project_dir=tmp_path)
    res = dw.run(pipe, workers=2, pool="process")
    assert res.exit_code == 2
    assert res.error is not None
    assert "cannot be sent to a worker process" in res.error["message"]
    assert dw.run(pipe, workers=2, pool="thread").exit_code == 0


class PricedKind(StageKind[StageParams]):
    """A kind that spends (LLM-like metrics) and previews what it would do."""

    name = "priced"
    Params = StageParams
    outputs: ClassVar[dict[str, Output]] = {"main": Output("table")}

    def run(self, params: StageParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        frame = inputs.only().frame()
        ctx.metric(llm_requests=frame.height, llm_input_tokens=10 * frame.height, llm_cost_usd=0.5)
        return {"main": frame}

    def preview(self, params: StageParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        rows = inputs.only().rows
        return {"text": f"would ask about {rows} rows", "rows": rows}


def test_dry_run_shows_the_preview_and_a_run_sums_what_it_spent(
    tmp_path: Path, steps: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(KINDS, "priced", "tests.unit.test_runner:PricedKind")
    extra = "  - name: asked\n    kind: priced\n    inputs: [summed]\n"
    pipe = dw.load(project(tmp_path, steps, extra=extra))
    plan = dw.plan(pipe)
    # upstream not computed yet: no preview (its input does not exist)
    assert plan.stages["asked"].status == "stale"
    assert plan.stages["asked"].preview is None
    dw.run(pipe, to=("summed",))
    events: list[Event] = []
    plan = dw.plan(pipe, on_event=events.append)
    assert plan.stages["asked"].preview == {"text": "would ask about 2 rows", "rows": 2}
    summary = events[-1]
    assert isinstance(summary, RunFinished)
    assert summary.usage == {}
    (asked,) = [s for s in summary.stages if s["stage"] == "asked"]
    assert asked["preview"]["rows"] == 2

    events.clear()
    dw.run(pipe, on_event=events.append)
    summary = events[-1]
    assert isinstance(summary, RunFinished)
    assert summary.usage == {"llm_requests": 2, "llm_input_tokens": 20, "llm_cost_usd": 0.5}
    events.clear()
    dw.run(pipe, on_event=events.append)  # all cached: nothing spent now
    summary = events[-1]
    assert isinstance(summary, RunFinished)
    assert summary.usage == {}


def test_errors_keep_their_hint_and_fields_across_processes() -> None:
    import pickle

    from ductwork.errors import MissingExtra, StageFailed

    err = pickle.loads(pickle.dumps(StageFailed("enrich", "no answer", hint="re-run it")))
    assert isinstance(err, StageFailed)
    assert (err.stage, err.hint, err.exit_code) == ("enrich", "re-run it", 1)
    assert str(err) == "stage 'enrich' failed: no answer\nre-run it"
    extra = pickle.loads(pickle.dumps(MissingExtra("torch", "ai", "the embed stage")))
    assert extra.message == MissingExtra("torch", "ai", "the embed stage").message
