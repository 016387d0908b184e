"""The README's pipeline example is a valid pipeline file."""

from __future__ import annotations

import re
from pathlib import Path

from ductwork.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_readme_pipeline_example_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    example = next(b for b in blocks if b.startswith("pipeline: orders"))
    (tmp_path / "pipeline.yaml").write_text(example)
    pipe = load_pipeline(tmp_path / "pipeline.yaml", environ={"PGPASSWORD": "s3cret"})
    assert pipe.order == ["orders", "checked", "daily", "warehouse"]
    prod = load_pipeline(
        tmp_path / "pipeline.yaml", profile="prod", environ={"PGPASSWORD": "s3cret"}
    )
    assert prod.stages["orders"].params.resolved_source() == "http"  # type: ignore[attr-defined]
    # the password from the environment is nowhere in the params' public form
    assert "s3cret" not in repr(prod.stages["warehouse"].params)
