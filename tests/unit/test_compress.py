"""The compress stage kind: a profile and sample rows as text within a token budget."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.ai.llm import estimate_tokens
from ductwork.errors import DataError
from ductwork.stages.compress import Compress
from ductwork.testing import StageOutcome, json_input, run_stage
from tests import nycflights as nyc


@pytest.fixture(scope="module")
def flights() -> pl.DataFrame:
    return nyc.flights(20_000)


@pytest.fixture(scope="module")
def flights_profile(flights: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = run_stage("profile", {}, {"flights": flights}, tmp_path_factory.mktemp("profile"))
    # as a pipeline hands it over: the store writes JSON with sorted keys (p25 before p5)
    return json.loads(json.dumps(out.values["profile"], sort_keys=True))


def compress(
    tmp_path: Path,
    profile: Any,
    sample: pl.DataFrame | None = None,
    **params: Any,
) -> StageOutcome:
    inputs: dict[str, Any] = {"profile": json_input("profile", profile, tmp_path / "in")}
    if sample is not None:
        inputs["sample"] = sample
    out = run_stage("compress", params, inputs, tmp_path, stage="squeeze")
    assert out.violations == []
    value = out.values["compressed"]
    assert value["estimated_tokens"] == estimate_tokens(value["text"])
    assert value["estimated_tokens"] <= value["budget_tokens"] == params["budget_tokens"]
    return out


def sample_csv(text: str) -> list[list[str]]:
    block = text.split("```csv\n", 1)[1].split("\n```", 1)[0]
    return list(csv.reader(io.StringIO(block)))


def test_everything_is_kept_when_it_fits(
    flights: pl.DataFrame, flights_profile: Any, tmp_path: Path
) -> None:
    out = compress(tmp_path, flights_profile, flights, budget_tokens=100_000)
    value = out.values["compressed"]
    assert value["dropped"] == []
    assert value["table"] == {"rows": 20_000, "columns": 19}
    assert sorted(value["kept"]["columns"]) == sorted(flights.columns)
    assert sorted(value["kept"]["details"]) == sorted(flights.columns)
    assert value["kept"]["sample_rows"] == 20
    text = value["text"]
    assert text.startswith("Table: 20000 rows, 19 columns.\n")
    assert "Not shown" not in text
    # one line per column, with the statistics of its kind
    assert "- origin (String): nulls 0%, distinct 3, top EWR " in text
    line = next(li for li in text.splitlines() if li.startswith("- dep_delay "))
    assert "min -30, max 1301, mean 7.794, sd 33.53, p5 -9, p25 -5, p50 -2, p75 6, p95 64 [" in line
    rows = sample_csv(text)
    assert len(rows) == 21 and set(rows[0]) == set(flights.columns)
    assert out.metrics["estimated_tokens"] == value["estimated_tokens"]
    assert out.metrics["columns_dropped"] == 0


def test_problem_columns_come_first_and_are_flagged(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {
            "clean": list(range(100)),
            "label": ["a", "b"] * 50,
            "same": [7] * 100,
            "spiky": [1.0] * 99 + [10_000.0],
            "gappy": [None, *range(99)],
        }
    )
    profile = run_stage("profile", {}, {"t": df}, tmp_path / "p").values["profile"]
    value = compress(tmp_path, profile, budget_tokens=10_000).values["compressed"]
    assert value["kept"]["columns"] == ["same", "spiky", "gappy", "clean", "label"]
    lines = value["text"].splitlines()
    assert "- same (Int64): nulls 0%, distinct 1, " in lines[2] and lines[2].endswith("[constant]")
    assert lines[3].endswith("[extreme values (10 sd from the mean)]")
    assert lines[4].startswith("- gappy (Int64): nulls 1%,") and lines[4].endswith("[nulls]")
    assert "[" not in lines[5]
    # a given order comes first, the rest follow problems first
    given = compress(tmp_path / "g", profile, budget_tokens=10_000, columns=["label", "clean"])
    assert given.values["compressed"]["kept"]["columns"] == [
        "label",
        "clean",
        "same",
        "spiky",
        "gappy",
    ]


def test_parts_are_dropped_in_order(
    flights: pl.DataFrame, flights_profile: Any, tmp_path: Path
) -> None:
    """Sample rows down to the minimum, then statistics, then the last rows, then columns."""
    full = compress(tmp_path / "full", flights_profile, flights, budget_tokens=100_000)
    order = full.values["compressed"]["kept"]["columns"]
    full_tokens = full.values["compressed"]["estimated_tokens"]

    # 1. a little less: only sample rows go
    v = compress(tmp_path / "1", flights_profile, flights, budget_tokens=full_tokens - 20)
    v = v.values["compressed"]
    assert 3 <= v["kept"]["sample_rows"] < 20
    assert [d["part"] for d in v["dropped"]] == ["sample_rows"]
    assert v["dropped"][0]["count"] == 20 - v["kept"]["sample_rows"]
    assert f"Not shown (token budget): {20 - v['kept']['sample_rows']} sample rows." in v["text"]
    assert len(sample_csv(v["text"])) == v["kept"]["sample_rows"] + 1

    # 2. with three rows left, the least important columns lose their statistics first
    three = compress(tmp_path / "3", flights_profile, flights, budget_tokens=100_000, sample_rows=3)
    v = compress(
        tmp_path / "2",
        flights_profile,
        flights,
        budget_tokens=three.values["compressed"]["estimated_tokens"] - 30,
    ).values["compressed"]
    assert v["kept"]["sample_rows"] == 3
    assert v["kept"]["columns"] == order
    lost = next(d for d in v["dropped"] if d["part"] == "details")["columns"]
    assert lost and lost == order[len(order) - len(lost) :]
    assert v["kept"]["details"] == order[: len(order) - len(lost)]
    assert "min " not in next(li for li in v["text"].splitlines() if li.startswith(f"- {lost[0]} "))

    # 3./4. a small budget: no statistics, no rows, only the most important columns
    v = compress(tmp_path / "4", flights_profile, flights, budget_tokens=120).values["compressed"]
    assert v["kept"]["sample_rows"] == 0 and v["kept"]["details"] == []
    kept = v["kept"]["columns"]
    assert 1 <= len(kept) < len(order) and kept == order[: len(kept)]
    assert {d["part"] for d in v["dropped"]} == {"sample_rows", "details", "columns"}
    gone = next(d for d in v["dropped"] if d["part"] == "columns")
    assert gone["columns"] == order[len(kept) :]
    assert "```csv" not in v["text"]
    assert ", ".join(gone["columns"]) in v["text"]  # the text names what it leaves out


def test_sample_rows_are_a_seeded_random_sample(flights: pl.DataFrame, tmp_path: Path) -> None:
    df = flights.select("flight", "origin").with_row_index("row")
    profile = run_stage("profile", {}, {"t": df}, tmp_path / "p").values["profile"]

    def rows(where: str, **params: Any) -> list[int]:
        v = compress(tmp_path / where, profile, df, budget_tokens=100_000, **params)
        csv_rows = sample_csv(v.values["compressed"]["text"])
        col = csv_rows[0].index("row")
        return [int(r[col]) for r in csv_rows[1:]]

    a, again, other = rows("a", seed=1), rows("b", seed=1), rows("c", seed=2)
    assert a == again and a != other
    assert len(set(a)) == 20 and max(a) > 10_000  # drawn from the whole table
    assert rows("d", seed=1, sample_rows=5) == a[:5]  # fewer rows: the first ones drawn


def test_jsonl_format(flights: pl.DataFrame, flights_profile: Any, tmp_path: Path) -> None:
    v = compress(tmp_path, flights_profile, flights, budget_tokens=700, format="jsonl").values[
        "compressed"
    ]
    docs = [json.loads(line) for line in v["text"].splitlines()]
    assert docs[0] == {"table": {"rows": 20_000, "columns": 19}}
    columns = [d for d in docs if "column" in d]
    assert [d["column"] for d in columns] == v["kept"]["columns"]
    assert columns[0]["problems"][0] == "nulls"
    assert sum("row" in d for d in docs) == v["kept"]["sample_rows"]
    assert "not_shown" in docs[-1]


def test_long_values_are_cut(tmp_path: Path) -> None:
    df = pl.DataFrame({"doc": ["word " * 200, "short"], "n": [1, 2]})
    profile = run_stage("profile", {}, {"t": df}, tmp_path / "p").values["profile"]
    text = compress(tmp_path, profile, df, budget_tokens=10_000, max_value_chars=30)
    text_value = text.values["compressed"]["text"]
    assert "word word word word word word…" in text_value
    assert "word " * 10 not in text_value


def test_inputs_found_by_type_under_stage_names(
    flights: pl.DataFrame, flights_profile: Any, tmp_path: Path
) -> None:
    out = run_stage(
        "compress",
        {"budget_tokens": 2_000},
        {"checked_profile": json_input("p", flights_profile, tmp_path / "in"), "checked": flights},
        tmp_path,
    )
    assert out.values["compressed"]["kept"]["sample_rows"] > 0


def test_same_inputs_same_bytes(
    flights: pl.DataFrame, flights_profile: Any, tmp_path: Path
) -> None:
    a = compress(tmp_path / "a", flights_profile, flights, budget_tokens=600)
    b = compress(tmp_path / "b", flights_profile, flights, budget_tokens=600)
    assert a.infos["compressed"].sha256 == b.infos["compressed"].sha256


def test_errors(flights: pl.DataFrame, flights_profile: Any, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"budget_tokens 10 is too small") as err:
        compress(tmp_path / "a", flights_profile, flights, budget_tokens=10)
    assert "Raise budget_tokens to at least" in str(err.value)
    with pytest.raises(DataError, match="column 'dep_dealy' is not in the profile - did you mean"):
        compress(tmp_path / "b", flights_profile, budget_tokens=500, columns=["dep_dealy"])
    with pytest.raises(DataError, match="is not a profile"):
        compress(tmp_path / "c", {"rows": []}, budget_tokens=500)
    with pytest.raises(DataError, match="none of the profiled columns"):
        compress(tmp_path / "d", flights_profile, pl.DataFrame({"x": [1]}), budget_tokens=500)
    with pytest.raises(DataError, match="needs a profile stage's JSON"):
        run_stage("compress", {"budget_tokens": 100}, {"t": flights}, tmp_path / "e")
    with pytest.raises(ValidationError, match="greater than 0"):
        Compress.Params.model_validate({"budget_tokens": 0})
    with pytest.raises(ValidationError, match="budget_tokens"):
        Compress.Params.model_validate({})
    with pytest.raises(ValidationError, match="listed twice: a"):
        Compress.Params.model_validate({"budget_tokens": 9, "columns": ["a", "b", "a"]})
