"""The model card: what a registered model is, what it was trained and evaluated on, and how.

:func:`model_card` renders Markdown from what a pipeline run recorded, and only from that: the
bundle's ``bundle.json`` (estimator, input contract, training data fingerprints, training-time
scores), the evaluate stage's metrics (figures on the test rows, confusion matrix, comparison
with the champion, per-slice results) and the registration (name, version, aliases). Nothing
is estimated or made up; a section whose facts were not recorded says so. Sections:

* **Model details**: name, version and aliases, estimator, task, target, classes, the ductwork
  run that created it, the bundle's sha256.
* **Intended use**: the stage's ``intended_use`` text and what the model takes and returns.
* **Training data**: row counts and sha256 of the training and validation data, and every input
  column with its type, range or number of categories.
* **Evaluation**: the metric figures (against the champion when one was compared), the
  confusion matrix, the training-time scores.
* **Per-slice results**: one table per slice column.
* **Limitations**: the stage's ``limitations`` text plus notes derived from the figures: slices
  smaller than 30 rows, class imbalance, columns with nulls, the range the model was fitted on.
* **Lineage**: pipeline, run ids, and the sha256 of every input artifact.

The function is pure (no I/O), so the same inputs always give the same card.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ductwork.ml.bundle import BundleMeta, ColumnSpec
from ductwork.ml.report import fmt

SMALL_SLICE_ROWS = 30
IMBALANCE_SHARE = 0.2  # a class below this share of the rows is called out
_MAX_CATEGORIES_SHOWN = 5
_MAX_SLICE_ROWS = 50


def _num(value: float) -> str:
    """A column bound: whole numbers without decimals (``17``, not ``17.0000``)."""
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return fmt(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _short(sha: Any, n: int = 12) -> str:
    return f"`{str(sha)[:n]}`" if sha else "—"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in head) + " |"]
    out.append("|" + "|".join("---" for _ in head) + "|")
    out.extend("| " + " | ".join(r) + " |" for r in rows)
    return out


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def model_card(
    meta: BundleMeta,
    evaluation: Mapping[str, Any] | None,
    registration: Mapping[str, Any],
    lineage: Mapping[str, Any],
    *,
    intended_use: str | None = None,
    limitations: str | None = None,
    description: str | None = None,
) -> str:
    """The Markdown model card of a registered model version.

    ``registration``: ``name``, ``version``, ``aliases``, ``model_uri``, ``run_id`` (MLflow),
    ``bundle_sha256``, ``promoted``. ``lineage``: ``pipeline``, ``run_id`` (ductwork),
    ``stage`` and ``inputs`` (input name -> artifact sha256). ``evaluation`` is the evaluate
    stage's metrics JSON, or None when the model was registered without one.
    """
    evaluation = evaluation or {}
    name = str(registration.get("name", "model"))
    version = registration.get("version")
    title = f"# Model card: {name}" + (f" v{version}" if version is not None else "")
    lines = [title, ""]
    if description:
        lines += [description.strip(), ""]
    lines += _details(meta, registration, lineage)
    lines += _intended_use(meta, intended_use)
    lines += _training_data(meta)
    lines += _evaluation(meta, evaluation)
    lines += _slices(evaluation)
    lines += _limitations(meta, evaluation, limitations)
    lines += _lineage(meta, registration, lineage)
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------ sections
def _details(
    meta: BundleMeta, registration: Mapping[str, Any], lineage: Mapping[str, Any]
) -> list[str]:
    aliases = ", ".join(str(a) for a in registration.get("aliases") or []) or "none"
    rows: list[tuple[str, str]] = [
        ("name", fmt(registration.get("name"))),
        ("version", f"{fmt(registration.get('version'))} (aliases: {_cell(aliases)})"),
    ]
    if registration.get("model_uri"):
        rows.append(("model URI", f"`{_cell(str(registration['model_uri']))}`"))
    rows += [
        ("estimator", f"`{_cell(meta.estimator)}` (`{_cell(meta.model)}`)"),
        ("task", meta.task),
        ("target", f"`{_cell(meta.target)}`"),
    ]
    if meta.classes is not None:
        rows.append(("classes", _cell(", ".join(_label(c) for c in meta.classes))))
    if meta.params:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(meta.params.items()))
        rows.append(("hyperparameters", _cell(shown)))
    if lineage.get("run_id"):
        pipeline = lineage.get("pipeline") or "—"
        rows.append(
            ("created by", f"ductwork run `{_cell(str(lineage['run_id']))}` of `{_cell(pipeline)}`")
        )
    rows.append(("model id", _short(meta.model_id)))
    rows.append(("bundle sha256", f"`{registration.get('bundle_sha256') or '—'}`"))
    libs = ", ".join(f"{k} {v}" for k, v in sorted(meta.versions.items()))
    if libs:
        rows.append(("libraries", _cell(libs)))
    if meta.onnx is not None:
        onnx = "exported" if meta.onnx.exported else f"not exported ({meta.onnx.reason or '—'})"
        rows.append(("ONNX", _cell(onnx)))
    return ["## Model details", "", *_table(["", ""], rows), ""]


def _intended_use(meta: BundleMeta, text: str | None) -> list[str]:
    lines = ["## Intended use", ""]
    if text and text.strip():
        lines += [text.strip(), ""]
    else:
        lines += ["Not stated: set `intended_use` in the register stage's params.", ""]
    outputs = "`prediction`"
    if meta.task == "classification" and meta.classes:
        outputs += " (one of the classes) and " + ", ".join(f"`{c}`" for c in meta.proba_columns)
    lines += [
        f"The model predicts `{_cell(meta.target)}` ({meta.task}) from the "
        f"{len(meta.input_schema)} input columns listed under Training data and returns "
        f"{outputs}. Rows that break the input contract (a missing value in a column that had "
        "none in training, an unknown category, a wrong type) are quarantined at prediction "
        "time, not predicted.",
        "",
    ]
    return lines


def _training_data(meta: BundleMeta) -> list[str]:
    lines = ["## Training data", ""]
    data_rows = []
    for split, info in meta.data.items():
        if not isinstance(info, Mapping):
            continue
        rows = info.get("rows")
        data_rows.append([_cell(split), fmt(rows), _short(info.get("sha256"), 16)])
    if data_rows:
        lines += [*_table(["input", "rows", "sha256"], data_rows), ""]
    else:
        lines += ["The bundle records no training data fingerprints.", ""]
    ref_rows = meta.reference.get("rows")
    if ref_rows is not None:
        lines += [
            f"Reference statistics (for drift monitoring) were taken on {fmt(ref_rows)} "
            "training rows.",
            "",
        ]
    features = _features(meta)
    lines += [f"Input columns ({len(meta.input_schema)}):", "", *features, ""]
    if meta.feature_names and len(meta.feature_names) != len(meta.input_schema):
        lines += [
            f"The feature transforms turn them into {len(meta.feature_names)} model features.",
            "",
        ]
    return lines


def _features(meta: BundleMeta) -> list[str]:
    ref = meta.reference.get("features") or {}
    rows = []
    for spec in meta.input_schema:
        stats = ref.get(spec.name) if isinstance(ref, Mapping) else None
        nulls = "—"
        if isinstance(stats, Mapping) and stats.get("null_fraction") is not None:
            nulls = f"{float(stats['null_fraction']):.1%}"
        rows.append(
            [
                f"`{_cell(spec.name)}`",
                _cell(spec.dtype),
                spec.kind,
                "yes" if spec.nullable else "no",
                _values(spec, stats),
                nulls,
            ]
        )
    return _table(["column", "type", "kind", "nullable", "range / categories", "nulls"], rows)


def _values(spec: ColumnSpec, stats: Any) -> str:
    if spec.min is not None and spec.max is not None:
        return f"{_num(spec.min)} – {_num(spec.max)}"
    if spec.categories is not None:
        shown = ", ".join(spec.categories[:_MAX_CATEGORIES_SHOWN])
        more = ", …" if len(spec.categories) > _MAX_CATEGORIES_SHOWN else ""
        return _cell(f"{len(spec.categories)} categories ({shown}{more})")
    if isinstance(stats, Mapping) and stats.get("distinct") is not None:
        return f"{fmt(stats['distinct'])} distinct values (not checked)"
    return "—"


def _evaluation(meta: BundleMeta, evaluation: Mapping[str, Any]) -> list[str]:
    lines = ["## Evaluation", ""]
    metrics = evaluation.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        lines += ["No evaluation was recorded with this version.", ""]
    else:
        sentence = f"On {fmt(evaluation.get('rows'))} evaluation rows"
        if evaluation.get("quarantined"):
            sentence += f" ({fmt(evaluation['quarantined'])} more were quarantined)"
        if evaluation.get("positive") is not None:
            sentence += f"; positive class `{_label(evaluation['positive'])}`"
        lines += [sentence + ":", ""]
        champion = evaluation.get("champion")
        comparison = evaluation.get("comparison") or {}
        if isinstance(champion, Mapping) and champion:
            ref = champion.get("ref") or champion.get("model_id") or "champion"
            rows = []
            for key, value in metrics.items():
                c = comparison.get(key) if isinstance(comparison, Mapping) else None
                c = c if isinstance(c, Mapping) else {}
                better = c.get("better")
                mark = "" if better is None else (" (better)" if better else " (worse)")
                delta = c.get("delta")
                rows.append(
                    [
                        f"`{_cell(str(key))}`",
                        fmt(value),
                        fmt(c.get("champion")),
                        (f"{delta:+.4f}" if isinstance(delta, int | float) else "—") + mark,
                    ]
                )
            lines += _table(["metric", "this model", f"champion ({ref})", "difference"], rows)
            if champion.get("rows") is not None and champion.get("rows") != evaluation.get("rows"):
                lines += [
                    "",
                    f"The comparison uses the {fmt(champion['rows'])} rows both models accept.",
                ]
            lines.append("")
        else:
            rows = [[f"`{_cell(str(k))}`", fmt(v)] for k, v in metrics.items()]
            lines += [*_table(["metric", "value"], rows), ""]
        lines += _confusion(evaluation)
    lines += _training_scores(meta)
    return lines


def _confusion(evaluation: Mapping[str, Any]) -> list[str]:
    cm = evaluation.get("confusion_matrix")
    if not isinstance(cm, Mapping) or not cm.get("labels") or not cm.get("matrix"):
        return []
    labels = [_label(x) for x in cm["labels"]]
    rows = [
        [f"**{_cell(label)}**", *(fmt(v) for v in row)]
        for label, row in zip(labels, cm["matrix"], strict=False)
    ]
    return [
        "Confusion matrix (rows: actual, columns: predicted):",
        "",
        *_table(["actual \\ predicted", *labels], rows),
        "",
    ]


def _training_scores(meta: BundleMeta) -> list[str]:
    m = meta.metrics
    objective = m.get("objective")
    parts = [
        f"{label} {fmt(m[key])}"
        for key, label in (("train", "train"), ("val", "validation"), ("cv_mean", "cv mean"))
        if isinstance(m.get(key), int | float)
    ]
    if not parts:
        return []
    if isinstance(m.get("cv_std"), int | float):
        parts.append(f"cv std {fmt(m['cv_std'])}")
    what = f"`{objective}`" if objective else "the objective"
    return [f"Training-time scores of {what}: {', '.join(parts)}.", ""]


def _slices(evaluation: Mapping[str, Any]) -> list[str]:
    slices = evaluation.get("slices")
    if not isinstance(slices, Mapping) or not slices:
        return []
    lines = ["## Per-slice results", ""]
    for column, groups in slices.items():
        if not isinstance(groups, Mapping):
            continue
        names: list[str] = []
        for values in groups.values():
            if isinstance(values, Mapping):
                names += [k for k in values if k != "rows" and k not in names]
        rows = []
        for value, m in list(groups.items())[:_MAX_SLICE_ROWS]:
            m = m if isinstance(m, Mapping) else {}
            rows.append([_cell(str(value)), fmt(m.get("rows")), *(fmt(m.get(n)) for n in names)])
        lines += [f"### by `{_cell(str(column))}`", ""]
        lines += _table([str(column), "rows", *names], rows)
        if len(groups) > _MAX_SLICE_ROWS:
            lines.append(f"\n({len(groups) - _MAX_SLICE_ROWS} more slices in the report.)")
        lines.append("")
    return lines


def _limitations(meta: BundleMeta, evaluation: Mapping[str, Any], text: str | None) -> list[str]:
    lines = ["## Limitations", ""]
    if text and text.strip():
        lines += [text.strip(), ""]
    notes = [
        *_small_slices(evaluation),
        *_imbalance(evaluation),
        *_null_columns(meta),
        *_ranges(meta),
    ]
    if not evaluation.get("metrics"):
        notes.append("The model was registered without an evaluation on held-out rows.")
    if notes:
        lines += ["Derived from the recorded figures:", ""]
        lines += [f"- {n}" for n in notes]
        lines.append("")
    elif not (text and text.strip()):
        lines += ["None recorded.", ""]
    return lines


def _small_slices(evaluation: Mapping[str, Any]) -> list[str]:
    slices = evaluation.get("slices")
    if not isinstance(slices, Mapping):
        return []
    small = []
    for column, groups in slices.items():
        if not isinstance(groups, Mapping):
            continue
        for value, m in groups.items():
            rows = m.get("rows") if isinstance(m, Mapping) else None
            if isinstance(rows, int) and rows < SMALL_SLICE_ROWS:
                small.append(f"{column}={value} ({rows} rows)")
    if not small:
        return []
    shown = ", ".join(small[:10]) + (f" and {len(small) - 10} more" if len(small) > 10 else "")
    return [
        f"Slices with fewer than {SMALL_SLICE_ROWS} evaluation rows have unreliable "
        f"figures: {_cell(shown)}."
    ]


def _imbalance(evaluation: Mapping[str, Any]) -> list[str]:
    cm = evaluation.get("confusion_matrix")
    if not isinstance(cm, Mapping) or not cm.get("labels") or not cm.get("matrix"):
        return []
    counts = [sum(int(v) for v in row) for row in cm["matrix"]]
    total = sum(counts)
    if total == 0 or len(counts) < 2:
        return []
    shares = sorted(
        ((c / total, _label(label)) for label, c in zip(cm["labels"], counts, strict=False)),
    )
    share, label = shares[0]
    if share >= IMBALANCE_SHARE:
        return []
    return [
        f"Class imbalance: class `{_cell(label)}` is {share:.1%} of the evaluation rows; "
        "accuracy alone overstates quality, prefer balanced accuracy, recall and PR AUC."
    ]


def _null_columns(meta: BundleMeta) -> list[str]:
    ref = meta.reference.get("features") or {}
    cols = []
    for spec in meta.input_schema:
        stats = ref.get(spec.name) if isinstance(ref, Mapping) else None
        share = stats.get("null_fraction") if isinstance(stats, Mapping) else None
        if isinstance(share, int | float) and share > 0:
            cols.append(f"{spec.name} ({share:.1%})")
        elif spec.nullable and share is None:
            cols.append(spec.name)
    if not cols:
        return []
    return [
        f"Columns with missing values in training (imputed or passed to the estimator as "
        f"missing): {_cell(', '.join(cols))}."
    ]


def _ranges(meta: BundleMeta) -> list[str]:
    ranged = [s for s in meta.input_schema if s.min is not None and s.max is not None]
    if not ranged:
        return []
    return [
        f"The model saw numeric inputs only within the training ranges listed above "
        f"({len(ranged)} columns); predictions for values outside them are extrapolations."
    ]


def _lineage(
    meta: BundleMeta, registration: Mapping[str, Any], lineage: Mapping[str, Any]
) -> list[str]:
    rows: list[list[str]] = [
        ["pipeline", f"`{_cell(str(lineage.get('pipeline') or '—'))}`"],
        ["ductwork run", f"`{_cell(str(lineage.get('run_id') or '—'))}`"],
    ]
    if lineage.get("stage"):
        rows.append(["stage", f"`{_cell(str(lineage['stage']))}`"])
    if registration.get("run_id"):
        rows.append(["MLflow run", f"`{_cell(str(registration['run_id']))}`"])
    if registration.get("experiment_id"):
        rows.append(["MLflow experiment", f"`{_cell(str(registration['experiment_id']))}`"])
    inputs = lineage.get("inputs") or {}
    if isinstance(inputs, Mapping):
        rows += [[f"input `{_cell(str(k))}`", f"`{v}`"] for k, v in inputs.items()]
    for split, info in meta.data.items():
        if isinstance(info, Mapping) and info.get("sha256"):
            rows.append([f"training input `{_cell(split)}`", f"`{info['sha256']}`"])
    return ["## Lineage", "", *_table(["", ""], rows), ""]
