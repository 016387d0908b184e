"""The tune stage kind: Optuna search over real data, resume, pruning, storage, errors."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

pytest.importorskip("sklearn")
pytest.importorskip("optuna")

import optuna
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from ductwork.core.contract import InputArtifact, Inputs, StageContext
from ductwork.core.fingerprint import canonical_json
from ductwork.errors import DataError, UsageError
from ductwork.ml import tuning
from ductwork.stages.tune import Tune, TuneParams, default_study_name
from ductwork.testing import StageOutcome, run_stage, table_input
from tests import nycflights as nyc

PNG = b"\x89PNG\r\n\x1a\n"
FOREST: dict[str, Any] = {
    "target": "target",
    "model": "random_forest",
    "params": {"n_estimators": 10, "n_jobs": 1},
    "search_space": {
        "max_depth": {"low": 2, "high": 8},
        "max_features": {"low": 0.2, "high": 1.0},
        "criterion": {"choices": ["gini", "entropy"]},
    },
    "n_trials": 6,
    "cv": 3,
}


# ------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def cancer() -> pl.DataFrame:
    """569 real tumours: 30 numeric features and a 0/1 target."""
    return pl.from_pandas(load_breast_cancer(as_frame=True).frame)


@pytest.fixture(scope="module")
def diabetes() -> pl.DataFrame:
    """442 real patients: 10 numeric features and a numeric disease progression target."""
    return pl.from_pandas(load_diabetes(as_frame=True).frame)


@pytest.fixture(scope="module")
def wine() -> pl.DataFrame:
    """178 real wines: 13 numeric features and 3 classes."""
    return pl.from_pandas(load_wine(as_frame=True).frame)


def halves(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """train (2 of 3 rows) and val (every third row)."""
    third = pl.int_range(pl.len()) % 3 == 0
    return df.filter(~third), df.filter(third)


def tune(
    tmp_path: Path, inputs: dict[str, pl.DataFrame | InputArtifact], **params: Any
) -> StageOutcome:
    out = run_stage("tune", {**FOREST, **params}, inputs, tmp_path, stage="tune")
    assert out.violations == []
    return out


def load_study(tmp_path: Path, out: StageOutcome) -> optuna.Study:
    best = out.values["best_params"]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / ".ductwork" / best["storage"]))
    )
    return optuna.load_study(study_name=best["study"], storage=storage)


# ------------------------------------------------------------------------------- the search
def test_best_params_are_in_the_space_and_feed_train(cancer: pl.DataFrame, tmp_path: Path) -> None:
    out = tune(tmp_path, {"train": cancer})
    best = out.values["best_params"]
    params = best["params"]
    assert 2 <= params["max_depth"] <= 8 and isinstance(params["max_depth"], int)
    assert 0.2 <= params["max_features"] <= 1.0
    assert params["criterion"] in ("gini", "entropy")
    assert params["n_estimators"] == 10  # the fixed params are merged in
    assert (best["metric"], best["direction"], best["task"]) == (
        "roc_auc",
        "maximize",
        "classification",
    )
    assert 0.9 < best["value"] <= 1.0
    assert best["n_trials_total"] == 6
    assert best["storage"] == f"optuna/{best['study']}.journal"
    assert best["study"].startswith("tune-")

    trials = out.values["trials"]
    assert trials.height == 6
    assert trials.columns == [
        "number",
        "state",
        "value",
        "params_max_depth",
        "params_max_features",
        "params_criterion",
        "duration_s",
    ]
    assert trials["params_max_depth"].dtype == pl.Int64
    complete = trials.filter(pl.col("state") == "COMPLETE")
    assert complete["value"].max() == best["value"]
    assert complete.filter(pl.col("value") == best["value"])["number"][0] == best["trial"]
    assert out.metrics["trials_run"] == 6


def test_regression_minimizes_rmse(diabetes: pl.DataFrame, tmp_path: Path) -> None:
    out = tune(
        tmp_path,
        {"train": diabetes},
        model="ridge",
        params={},
        search_space={"alpha": {"low": 1e-4, "high": 10.0, "log": True}},
        n_trials=5,
    )
    best = out.values["best_params"]
    assert (best["metric"], best["direction"], best["task"]) == ("rmse", "minimize", "regression")
    trials = out.values["trials"].filter(pl.col("state") == "COMPLETE")
    assert best["value"] == trials["value"].min()
    assert 40 < best["value"] < 80  # rmse in the target's units, positive
    assert 1e-4 <= best["params"]["alpha"] <= 10


def test_val_split_mode_scores_on_val(cancer: pl.DataFrame, tmp_path: Path) -> None:
    train, val = halves(cancer)
    out = tune(tmp_path, {"train": train, "val": val}, cv=0, metric="accuracy", n_trials=4)
    best = out.values["best_params"]
    assert best["cv"] == 0 and best["metric"] == "accuracy"
    # one fit per trial, scored on val: nothing to prune, nothing reported per fold
    assert out.values["trials"]["state"].to_list() == ["COMPLETE"] * 4
    study = load_study(tmp_path, out)
    assert all(t.intermediate_values == {} for t in study.trials)
    # the same search with folds is another study
    cv = tune(tmp_path / "cv", {"train": train, "val": val}, cv=3, metric="accuracy", n_trials=4)
    assert cv.values["best_params"]["study"] != best["study"]
    assert cv.values["best_params"]["cv"] == 3


def test_cv_reports_fold_means_and_median_pruning_prunes(
    cancer: pl.DataFrame, tmp_path: Path
) -> None:
    # half of the space is hopeless (leaves of 100+ rows of 379): the median pruner stops those
    out = tune(
        tmp_path,
        {"train": cancer},
        model="sklearn.tree.DecisionTreeClassifier",
        params={},
        search_space={"min_samples_leaf": {"low": 1, "high": 300}},
        metric="accuracy",
        n_trials=8,
        cv=4,
        seed=3,
    )
    study = load_study(tmp_path, out)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.PRUNED in states
    for t in study.trials:
        assert 0 in t.intermediate_values  # the first fold's score, reported to the pruner
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [0, 1, 2, 3]
            assert t.intermediate_values[3] == pytest.approx(t.value)
    assert out.values["best_params"]["n_pruned"] == states.count(optuna.trial.TrialState.PRUNED)
    # pruner: none runs every fold of every trial
    none = tune(
        tmp_path / "none",
        {"train": cancer},
        model="sklearn.tree.DecisionTreeClassifier",
        params={},
        search_space={"min_samples_leaf": {"low": 1, "high": 300}},
        metric="accuracy",
        n_trials=8,
        cv=4,
        seed=3,
        pruner="none",
    )
    assert none.values["trials"]["state"].to_list() == ["COMPLETE"] * 8


def test_timeout_stops_starting_trials(cancer: pl.DataFrame, tmp_path: Path) -> None:
    out = tune(tmp_path, {"train": cancer}, n_trials=200, timeout=0.5, pruner="none")
    trials = out.values["trials"]
    assert 1 <= trials.height < 200
    assert out.values["best_params"]["n_complete"] == trials.height


def test_the_invariants_catch_best_params_outside_the_space(
    cancer: pl.DataFrame, tmp_path: Path
) -> None:
    out = tune(tmp_path, {"train": cancer}, n_trials=2)
    path = Path(out.infos["best_params"].path)
    best = json.loads(path.read_text())
    best["params"].update(max_depth=20, criterion="log_loss", n_estimators=11)
    path.write_text(json.dumps(best))
    params = TuneParams.model_validate(FOREST)
    ctx = StageContext(stage="tune", run_id="r", project_dir=tmp_path, work_dir=tmp_path)
    problems = Tune().check(params, Inputs({}), out.infos, ctx)
    assert problems == [
        "best params: max_depth = 20 is outside the search space",
        "best params: criterion = 'log_loss' is outside the search space",
        "best params: the fixed param n_estimators is not 10",
    ]


# ------------------------------------------------------------------------------- resume
@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count objective calls (trials started) across runs."""
    calls: list[int] = []
    make = tuning.make_objective

    def counting(*args: Any, **kwargs: Any) -> Any:
        fn = make(*args, **kwargs)

        def objective(trial: optuna.Trial) -> float:
            calls.append(trial.number)
            return fn(trial)

        return objective

    monkeypatch.setattr(tuning, "make_objective", counting)
    return calls


def test_a_larger_n_trials_resumes_the_study(
    cancer: pl.DataFrame, tmp_path: Path, counted: list[int]
) -> None:
    first = tune(tmp_path, {"train": cancer}, n_trials=4, pruner="none")
    assert len(counted) == 4
    second = tune(tmp_path, {"train": cancer}, n_trials=6, pruner="none")
    assert len(counted) == 6  # only the 2 missing trials ran
    assert counted[4:] == [4, 5]
    assert second.values["best_params"]["study"] == first.values["best_params"]["study"]
    assert second.values["trials"].height == 6
    assert second.metrics["trials_run"] == 2
    # the resumed sampler does not replay the first run's draws
    params = second.values["trials"].select(pl.col("^params_.*$")).rows()
    assert len(set(params)) == 6
    # enough trials already: nothing runs, the outputs come from the study
    tune(tmp_path, {"train": cancer}, n_trials=5, pruner="none")
    assert len(counted) == 6


def test_a_killed_run_continues_where_it_stopped(
    cancer: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: list[int]
) -> None:
    make = tuning.make_objective  # the counting one

    def killed_at_third(*args: Any, **kwargs: Any) -> Any:
        fn = make(*args, **kwargs)

        def objective(trial: optuna.Trial) -> float:
            if len(counted) == 2:
                counted.append(trial.number)
                raise KeyboardInterrupt
            return fn(trial)

        return objective

    monkeypatch.setattr(tuning, "make_objective", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        tune(tmp_path, {"train": cancer}, n_trials=5, pruner="none")
    assert len(counted) == 3  # 2 finished, the 3rd was killed
    monkeypatch.setattr(tuning, "make_objective", make)
    out = tune(tmp_path, {"train": cancer}, n_trials=5, pruner="none")
    assert len(counted) == 6  # 3 more: 2 finished + 3 = 5
    states = out.values["trials"]["state"].to_list()
    assert states.count("COMPLETE") == 5
    assert states.count("FAIL") == 1  # the interrupted trial stays in the study, not counted


def test_the_study_name_follows_the_search_and_the_data(
    cancer: pl.DataFrame, tmp_path: Path
) -> None:
    inputs = Inputs({"train": table_input("train", cancer, tmp_path)})
    other = Inputs({"train": table_input("train", cancer.head(400), tmp_path / "other")})
    ctx = StageContext(
        stage="tune", run_id="r", project_dir=tmp_path, work_dir=tmp_path, pipeline="cancer"
    )

    def name(inp: Inputs = inputs, **changes: Any) -> str:
        return default_study_name(TuneParams.model_validate({**FOREST, **changes}), inp, ctx)

    base = name()
    assert base.startswith("cancer-tune-")
    # the budget, the parallelism and the storage do not change what is searched
    assert (
        name(n_trials=50, timeout=10, n_jobs=2, parallel="thread", storage="sqlite:///x.db") == base
    )
    assert name(search_space={"max_depth": {"low": 2, "high": 9}}) != base
    assert name(seed=1) != base
    assert name(other) != base


# ------------------------------------------------------------------------------- parallel, storage
@pytest.fixture
def worker_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process starts its trials only once a worker process has claimed one.

    Worker processes are spawned, so they run the unpatched claim: the test then knows that
    trials ran in another process, however slowly it started.
    """
    original = tuning._Claims.claim
    main = os.getpid()

    def claim(self: Any, job: Any) -> bool:
        if os.getpid() == main and self.claimed.value == 0:
            deadline = time.time() + 120
            while self.claimed.value == 0:
                assert time.time() < deadline, "no worker process claimed a trial"
                time.sleep(0.05)
        return bool(original(self, job))

    monkeypatch.setattr(tuning._Claims, "claim", claim)


@pytest.mark.parametrize("parallel", ["process", "thread"])
def test_parallel_trials_share_the_default_store(
    cancer: pl.DataFrame, tmp_path: Path, parallel: str, worker_first: None
) -> None:
    seen: list[tuple[float, float | None, str]] = []
    ctx = StageContext(
        stage="tune",
        run_id="r",
        project_dir=tmp_path,
        work_dir=tmp_path / "work",
        progress_fn=lambda d, t, u: seen.append((d, t, u)),
    )
    inputs = Inputs({"train": table_input("train", cancer, tmp_path)})
    params = {**FOREST, "n_jobs": 2, "parallel": parallel, "n_trials": 8, "pruner": "none"}
    out = Tune().run(TuneParams.model_validate(params), inputs, ctx)
    trials = out["trials"]
    assert trials.height == 8  # exactly n_trials, not one more per worker
    assert trials["state"].to_list() == ["COMPLETE"] * 8
    assert sorted(trials["number"].to_list()) == list(range(8))
    assert seen[-1] == (8, 8, "trials")
    assert not (tmp_path / "work" / "tune-folds").exists()  # the workers' copy is removed
    # and a resumed parallel run adds exactly the missing trials
    again = Tune().run(TuneParams.model_validate({**params, "n_trials": 11}), inputs, ctx)
    assert again["trials"].height == 11
    assert ctx.metrics["trials_run"] == 3


def test_worker_processes_stop_at_the_timeout(cancer: pl.DataFrame, tmp_path: Path) -> None:
    out = tune(tmp_path, {"train": cancer}, n_jobs=2, n_trials=500, timeout=3, pruner="none")
    assert 1 <= out.values["trials"].height < 500


def test_worker_errors_come_back_as_the_same_error() -> None:
    error = tuning._worker_error(("DataError", "stage 'tune': bad", "fix it"), "tune")
    assert isinstance(error, DataError) and (error.message, error.hint) == (
        "stage 'tune': bad",
        "fix it",
    )
    other = tuning._worker_error(("MemoryError", "out of memory", None), "tune")
    assert isinstance(other, RuntimeError)
    assert str(other) == "stage 'tune': a tuning worker failed: MemoryError: out of memory"


def test_folds_round_trip_through_files_for_workers(tmp_path: Path) -> None:
    import numpy as np

    X = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(4, 3))
    fold = tuning.Fold(X, np.array([0, 1, 0, 1]), X[:2], np.array([0, 1]))
    evaluation = tuning.Evaluation("cv", [fold, fold], "classification", [False, True])
    tuning.save_evaluation(evaluation, tmp_path)
    back = tuning.load_evaluation(tmp_path)
    assert (back.mode, back.task, back.classes, len(back.folds)) == (
        "cv",
        "classification",
        [False, True],
        2,
    )
    assert np.array_equal(back.folds[1].X_train, X) and back.folds[1].X_train.flags.writeable


def test_a_sqlite_url_is_project_relative_and_resumes(cancer: pl.DataFrame, tmp_path: Path) -> None:
    out = tune(tmp_path, {"train": cancer}, storage="sqlite:///tuning/studies.db", n_trials=3)
    assert (tmp_path / "tuning" / "studies.db").is_file()
    assert out.values["best_params"]["storage"] == "sqlite:///tuning/studies.db"
    more = tune(
        tmp_path, {"train": cancer}, storage="sqlite:///tuning/studies.db", n_trials=4, n_jobs=2
    )
    assert more.metrics["trials_run"] == 1
    assert more.values["trials"].height == 4


def test_a_storage_password_never_reaches_fingerprints_or_outputs() -> None:
    url = "postgresql://tuner:s3cret@db.example:5432/optuna"
    p = TuneParams.model_validate({**FOREST, "storage": url})
    assert p.storage_url() == url
    assert "s3cret" not in canonical_json(p)
    assert "s3cret" not in repr(p)
    assert p.shown_storage() == "postgresql://tuner:***@db.example:5432/optuna"
    plain = TuneParams.model_validate({**FOREST, "storage": "sqlite:///a.db"})
    assert "sqlite:///a.db" in canonical_json(plain)  # nothing secret: part of the fingerprint
    with pytest.raises(ValidationError) as info:
        TuneParams.model_validate({**FOREST, "storage": url, "n_trials": 0})
    assert "s3cret" not in str(info.value)


def test_an_existing_study_with_another_metric_is_refused(
    cancer: pl.DataFrame, tmp_path: Path
) -> None:
    tune(tmp_path, {"train": cancer}, study="shared", n_trials=2)
    with pytest.raises(UsageError, match="optimizes roc_auc, not accuracy"):
        tune(tmp_path, {"train": cancer}, study="shared", n_trials=2, metric="accuracy")
    with pytest.raises(UsageError, match="made to maximize, but log_loss is to minimize"):
        tune(tmp_path, {"train": cancer}, study="shared", n_trials=2, metric="log_loss")


# ------------------------------------------------------------------------------- features
def test_a_transform_is_refitted_in_every_cv_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flights = (
        nyc.flights(3_000)
        .select("dep_delay", "carrier", "origin", "distance", "hour", "arr_delay")
        .drop_nulls()
        .with_columns((pl.col("arr_delay") > 15).alias("late"))
        .drop("arr_delay")
    )
    train, val = halves(flights)
    features = run_stage(
        "features",
        {
            "target": "late",
            "encode": {"columns": ["carrier", "origin"], "method": "one_hot"},
            "normalize": {"columns": ["distance"], "method": "standard"},
        },
        {"train": train, "val": val},
        tmp_path / "features",
    )
    transform = features.infos["transform"]
    artifact = InputArtifact("transform", transform)
    params = {
        "target": "late",
        "model": "random_forest",
        "params": {"n_estimators": 10},
        "search_space": {"max_depth": {"low": 2, "high": 8}},
        "n_trials": 3,
    }
    # without the transform the text columns cannot be features
    with pytest.raises(DataError, match="column 'carrier' is String, not a number"):
        run_stage("tune", {**params, "cv": 3}, {"train": train}, tmp_path / "plain", stage="tune")

    refits: list[int] = []
    original = tuning._fold

    def counting(fitted: Any, X_train: pl.DataFrame, *args: Any, refit: bool) -> Any:
        if refit:
            refits.append(X_train.height)
        return original(fitted, X_train, *args, refit=refit)

    monkeypatch.setattr(tuning, "_fold", counting)
    cv = run_stage(
        "tune",
        {**params, "cv": 3},
        {"train": train, "transform": artifact},
        tmp_path / "cv",
        stage="tune",
    )
    # refitted on each fold's train rows (two thirds of train), once per fold, not per trial
    assert len(refits) == 3
    assert all(abs(n - train.height * 2 / 3) <= 1 for n in refits)
    on_val = run_stage(
        "tune",
        {**params, "metric": "accuracy"},
        {"train": train, "val": val, "transform": artifact},
        tmp_path / "val",
        stage="tune",
    )
    assert len(refits) == 3  # val split: the transform as fitted on train, like train uses it
    assert cv.values["best_params"]["value"] > 0.75
    assert on_val.values["best_params"]["value"] > 0.75


# ------------------------------------------------------------------------------- outputs
def test_plots_are_png_files_with_stable_bytes(cancer: pl.DataFrame, tmp_path: Path) -> None:
    out = tune(tmp_path, {"train": cancer}, n_trials=4)
    plots = Path(out.infos["plots"].path)
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["optimization_history.png", "param_importances.png"]
    for name in names:
        assert (plots / name).read_bytes().startswith(PNG)
    study = load_study(tmp_path, out)
    metric = tuning.objective("roc_auc", "classification")
    tuning.write_plots(study, tmp_path / "again", metric=metric, seed=42)
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (plots / name).read_bytes()
    json.loads(Path(out.infos["best_params"].path).read_text())  # plain JSON


def test_importances_need_two_complete_trials(cancer: pl.DataFrame, tmp_path: Path) -> None:
    out = tune(tmp_path, {"train": cancer}, n_trials=1)
    study = load_study(tmp_path, out)
    importances, reason = tuning._importances(study, study.trials, 42)
    assert importances == {}
    assert reason is not None and "need 2 complete trials" in reason
    png = Path(out.infos["plots"].path) / "param_importances.png"
    assert png.read_bytes().startswith(PNG)


def test_progress_counts_trials(cancer: pl.DataFrame, tmp_path: Path) -> None:
    seen: list[tuple[float, float | None, str]] = []
    ctx = StageContext(
        stage="tune",
        run_id="r",
        project_dir=tmp_path,
        work_dir=tmp_path / "work",
        progress_fn=lambda d, t, u: seen.append((d, t, u)),
    )
    inputs = Inputs({"train": table_input("train", cancer, tmp_path)})
    Tune().run(TuneParams.model_validate({**FOREST, "n_trials": 3}), inputs, ctx)
    assert seen[0] == (0, 3, "trials")
    assert seen[-1] == (3, 3, "trials")
    assert [d for d, _, _ in seen] == [0, 1, 2, 3]


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"low": 5, "high": 2}, "low (5) must be below high (2)"),
        ({"low": 0, "high": 1.0, "log": True}, "log: true needs low > 0"),
        ({"low": 0, "high": 10, "log": True}, "log: true needs low >= 1"),
        ({"choices": []}, "choices is empty"),
        ({"choices": ["a", "a"]}, "listed twice"),
        ({"low": 1}, "give low and high"),
        ({"low": 1, "high": 10, "step": 4}, "not a multiple of step"),
        ({"low": 0.1, "high": 1.0, "step": 0.1, "log": True}, "log and step cannot be combined"),
        ({"type": "int", "low": 1.5, "high": 4}, "whole number for low"),
        ({"type": "int", "choices": [1, 2]}, "choices make a categorical"),
        ({"choices": [1, 2], "low": 1}, "choices cannot be combined with low"),
        ({"low": 1, "high": 4, "size": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_search_spaces_are_param_errors(space: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        TuneParams.model_validate({**FOREST, "search_space": {"max_depth": space}})


def test_types_are_inferred_and_can_be_forced() -> None:
    space = TuneParams.model_validate(
        {
            **FOREST,
            "search_space": {
                "a": {"low": 1, "high": 10},
                "b": {"low": 0.5, "high": 1},
                "c": {"type": "float", "low": 0, "high": 1},
                "d": {"choices": [None, 3, "x"]},
                "e": {"low": 10, "high": 100, "step": 10},
            },
        }
    ).search_space
    assert [s.type for s in space.values()] == ["int", "float", "float", "categorical", "int"]
    assert space["c"].low == 0.0 and isinstance(space["c"].low, float)
    assert space["d"].contains(None) and not space["d"].contains(4)
    assert space["e"].contains(40) and not space["e"].contains(40.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metric": "auc"}, "unknown metric 'auc'"),
        ({"metric": "rmse", "task": "classification"}, "metric 'rmse' is for regression"),
        ({"cv": 1}, "cv: 1 is not cross-validation"),
        ({"params": {"max_depth": 3}}, "'max_depth' is both fixed"),
        ({"search_space": {}}, "at least 1 item"),
        ({"n_trials": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_params_are_param_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TuneParams.model_validate({**FOREST, **changes})


def test_run_time_errors_name_the_stage(
    cancer: pl.DataFrame, wine: pl.DataFrame, tmp_path: Path
) -> None:
    with pytest.raises(
        UsageError,
        match=r"stage 'tune': model 'random_forest' has no param 'max_dept' - did you mean 'max_depth'\?",
    ):
        tune(tmp_path / "a", {"train": cancer}, search_space={"max_dept": {"low": 2, "high": 4}})
    with pytest.raises(UsageError, match="stage 'tune': metric 'rmse' is for regression"):
        tune(tmp_path / "b", {"train": cancer}, metric="rmse")
    with pytest.raises(UsageError, match="metric 'roc_auc' is for two classes; the target has 3"):
        tune(tmp_path / "c", {"train": wine}, metric="roc_auc")
    with pytest.raises(DataError, match="cv is 0 and the val input is missing"):
        tune(tmp_path / "d", {"train": cancer}, cv=0)
    with pytest.raises(DataError, match="target column 'traget' not found - did you mean 'target'"):
        tune(tmp_path / "e", {"train": cancer}, target="traget")
    with pytest.raises(DataError, match="unknown input name 'valid' - did you mean 'val'"):
        tune(tmp_path / "f", {"train": cancer, "valid": cancer})
    with pytest.raises(DataError, match=r"stage 'tune' \(val input\): target column"):
        tune(tmp_path / "g", {"train": cancer, "val": cancer.drop("target")}, cv=0)
    with pytest.raises(DataError, match=r"no trial of study .* completed; 4 failed"):
        tune(
            tmp_path / "h",
            {"train": cancer},
            params={"n_estimators": -3},
            n_trials=4,
        )
