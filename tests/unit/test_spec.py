from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ductwork.errors import SpecError
from ductwork.spec import load_pipeline


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def errors(tmp_path: Path, text: str, **kw: object) -> list[str]:
    p = write(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        load_pipeline(p, **kw)  # type: ignore[arg-type]
    return [str(i) for i in exc.value.issues]


def test_valid_file_defaults_inputs_to_previous_stage(tmp_path: Path, steps: str) -> None:
    p = write(
        tmp_path,
        f"""
        pipeline: ok
        stages:
          - name: one
            kind: python
            uses: {steps}:src
          - name: two
            kind: transform
            params: {{sql: "select * from one"}}
        """,
    )
    pipe = load_pipeline(p)
    assert pipe.order == ["one", "two"]
    assert str(pipe.stages["two"].inputs["one"]) == "one"


def test_unknown_kind_has_location_and_suggestion(tmp_path: Path) -> None:
    errs = errors(
        tmp_path,
        """
        pipeline: x
        stages:
          - name: a
            kind: transfrom
        """,
    )
    assert len(errs) == 1
    assert errs[0].startswith(
        f"{tmp_path / 'pipeline.yaml'}:4:11: stage 'a': unknown stage kind 'transfrom'"
    )
    assert "did you mean 'transform'" in errs[0]


def test_unknown_param_points_at_the_key(tmp_path: Path) -> None:
    errs = errors(
        tmp_path,
        """
        pipeline: x
        stages:
          - name: a
            kind: transform
            inputs: []
            params:
              sql: select 1 as x
              derve: {y: "x + 1"}
        """,
    )
    assert len(errs) == 1
    assert ":8:7: stage 'a': unknown param 'derve' - did you mean 'derive'?" in errs[0]


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    errs = errors(
        tmp_path,
        """
        pipeline: x
        stages:
          - name: a
            kind: transform
            inputs: []
            params: {sql: 1}
          - name: b
            kind: nope
          - name: c
            kind: transform
            inputs: [wrong]
            params: {sql: select 1}
        """,
    )
    text = "\n".join(errs)
    assert "stage 'a': sql" in text
    assert "unknown stage kind 'nope'" in text
    assert len(errs) >= 2


def test_missing_input_reference(tmp_path: Path, steps: str) -> None:
    errs = errors(
        tmp_path,
        f"""
        pipeline: x
        stages:
          - name: alpha
            kind: python
            uses: {steps}:src
          - name: b
            kind: transform
            inputs: [alpah]
            params: {{sql: select 1 as x}}
        """,
    )
    assert any("input 'alpah' names no stage - did you mean 'alpha'?" in e for e in errs)


def test_env_interpolation_and_undefined_variable(tmp_path: Path, steps: str) -> None:
    text = f"""
        pipeline: x
        stages:
          - name: s
            kind: python
            uses: {steps}:src
          - name: a
            kind: transform
            params: {{sql: "select ${{env:DW_TEST_N:-7}} as x, '${{env:DW_TEST_WHO}}' as who"}}
        """
    pipe = load_pipeline(write(tmp_path, text), environ={"DW_TEST_WHO": "me"})
    assert pipe.stages["a"].params.sql == "select 7 as x, 'me' as who"  # type: ignore[attr-defined]
    errs = errors(tmp_path, text, environ={})
    assert len(errs) == 1
    assert ":8:19: undefined environment variable 'DW_TEST_WHO'" in errs[0]


def test_profiles_override_params(tmp_path: Path, steps: str) -> None:
    text = f"""
        pipeline: x
        stages:
          - name: s
            kind: python
            uses: {steps}:src
          - name: a
            kind: transform
            params: {{sql: select 1 as x}}
            profiles:
              prod: {{sql: select 2 as x}}
        """
    p = write(tmp_path, text)
    assert load_pipeline(p).stages["a"].params.sql == "select 1 as x"  # type: ignore[attr-defined]
    assert load_pipeline(p, profile="prod").stages["a"].params.sql == "select 2 as x"  # type: ignore[attr-defined]


def test_invalid_yaml_has_a_location(tmp_path: Path) -> None:
    errs = errors(tmp_path, "pipeline: x\nstages: [\n  - a: b\n")
    assert len(errs) == 1
    assert "invalid YAML" in errs[0]
    assert errs[0].startswith(str(tmp_path / "pipeline.yaml") + ":")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    errs = errors(tmp_path, "pipeline: x\nstagez: []\n")
    assert any("unknown key 'stagez' - did you mean 'stages'?" in e for e in errs)
    assert any("missing required key 'stages'" in e for e in errs)


def test_bad_stage_name(tmp_path: Path) -> None:
    errs = errors(tmp_path, "pipeline: x\nstages:\n  - {name: 'a-b', kind: transform}\n")
    assert any("must be an identifier" in e for e in errs)
