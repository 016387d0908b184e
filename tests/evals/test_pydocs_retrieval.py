"""Evals of the pydocs example's retrieval: the real all-MiniLM-L6-v2 model and a local Qdrant.

The pipeline of examples/pydocs runs up to ``docs_index`` (no LLM on that path): the
docstrings are embedded and indexed, then every query of ``examples/pydocs/labels.csv`` (40
plain-language questions, written by reading the docstrings, each with the one function that
answers it) is searched. Recall@5: the share of queries whose function is among the first 5
hits; MRR: the mean of 1/rank (0 when not in the first 5).
"""

from __future__ import annotations

import shutil
from typing import Any

import polars as pl
import pytest

from ductwork import api

from .conftest import EXAMPLES

pytest.importorskip("sentence_transformers")
pytest.importorskip("qdrant_client")

pytestmark = pytest.mark.evals

K = 5
# Measured (Python 3.11, 436 functions, 40 queries): recall@5 0.975 (39/40; the miss:
# "find where an executable program is on the PATH" -> shutil.which, whose doc speaks of
# "a command" and "the given mode"), MRR 0.785.
RECALL_FLOOR = 0.92
MRR_FLOOR = 0.74


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, int | None]]:
    project = tmp_path_factory.mktemp("eval-pydocs-retrieval")
    for name in ("pipeline.yaml", "stdlib_docs.py"):
        shutil.copy(EXAMPLES / "pydocs" / name, project / name)
    result = api.run(project / "pipeline.yaml", to=["docs_index"])
    assert result.exit_code == 0, result.error
    labels = pl.read_csv(EXAMPLES / "pydocs" / "labels.csv")
    indexed = set(api.read_artifact(result.outputs("checked")["passed"])["qualname"])
    missing = sorted(set(labels["expected"]) - indexed)
    assert not missing, f"labels.csv names functions that are not in the index: {missing}"
    out = []
    for query, expected in labels.iter_rows():
        hits = api.search(project / "pipeline.yaml", query, k=K)
        ids = [h["id"] for h in hits]
        out.append((query, expected, ids.index(expected) + 1 if expected in ids else None))
    return out


def test_recall_at_5(ranks: list[tuple[str, str, int | None]], record_property: Any) -> None:
    found = [r for r in ranks if r[2] is not None]
    recall = len(found) / len(ranks)
    mrr = sum(1 / r[2] for r in found if r[2]) / len(ranks)
    record_property("recall_at_5", recall)
    record_property("mrr_at_5", mrr)
    print(f"\nrecall@{K} {recall:.3f} ({len(found)}/{len(ranks)}), MRR {mrr:.3f}")
    for query, expected, rank in ranks:
        if rank is None:
            print(f"  missed: {query!r} -> {expected}")
    assert recall >= RECALL_FLOOR
    assert mrr >= MRR_FLOOR
