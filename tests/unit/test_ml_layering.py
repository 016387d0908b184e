"""The engine and the stage registry stay free of ML and AI imports until such a stage runs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "sklearn", "mlflow", "optuna", "matplotlib", "pandas", "skops", "xgboost", "lightgbm",
    # the ai extra, and the scale-out engines
    "torch", "sentence_transformers", "qdrant_client", "anthropic", "httpx", "jinja2",
    "ray", "prefect", "s3fs", "feast",
)  # fmt: skip


def test_listing_and_checking_ml_kinds_imports_no_ml_library() -> None:
    code = f"""
import sys
from ductwork.stages.registry import KINDS, get_kind
for name in KINDS:
    cls = get_kind(name)
    cls.Params.model_json_schema()
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(",".join(heavy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at listing time: {out.stdout.strip()}"


def test_bad_model_alias_is_caught_without_sklearn() -> None:
    code = """
import sys
from ductwork.stages.train import TrainParams
try:
    TrainParams(target="y", model="random_forrest")
except ValueError as exc:
    print("did you mean 'random_forest'" in str(exc), "sklearn" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_checking_a_generate_stage_renders_nothing_and_imports_no_ai_library() -> None:
    code = """
import sys
from ductwork.stages.generate import GenerateParams
try:
    GenerateParams(model="m", prompt="{{ doc }}", answer={"n": {"type": "integr"}})
except ValueError as exc:
    print("did you mean 'integer'" in str(exc))
print(",".join(m for m in ("jinja2", "anthropic", "httpx", "torch") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["True", ""]
