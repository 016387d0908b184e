"""The evaluation report: one self-contained HTML page.

No external assets: the CSS is inline and every plot is embedded as a base64 ``data:`` URL, so
the file can be mailed, attached to a model version or opened from an artifact store as is.
Every value from the data (class labels, slice values, column names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from ductwork.ml.metrics import DIRECTIONS

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1f2328;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}h3{font-size:1rem}
.sub{color:#59636e;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}
.better{color:#1a7f37}.worse{color:#cf222e}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;border:1px solid #d0d7de;padding:.5rem;background:#fff}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#59636e;font-size:.85rem;text-align:center}
"""

PLOT_TITLES = {
    "confusion_matrix.png": "Confusion matrix",
    "roc.png": "ROC curve",
    "pr.png": "Precision-recall curve",
    "calibration.png": "Calibration",
    "importance.png": "Permutation importance",
    "residuals.png": "Residuals",
}


def fmt(value: Any) -> str:
    """A value for a table cell: ints with separators, floats with 4 decimals, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3e}"
        if abs(value) >= 1e6:
            return f"{value:,.0f}"
        return f"{value:.4f}"
    return str(value)


def _cell(value: Any, *, left: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in ("l" if left else "", cls) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{escape(fmt(value))}</td>"


def _head(names: Sequence[str], *, left: int = 1) -> str:
    cells = "".join(
        f'<th class="l">{escape(n)}</th>' if i < left else f"<th>{escape(n)}</th>"
        for i, n in enumerate(names)
    )
    return f"<tr>{cells}</tr>"


def _summary(result: Mapping[str, Any]) -> str:
    champion = result.get("champion")
    rows = [
        ("task", result.get("task")),
        ("target", result.get("target")),
        ("model id", result.get("model_id")),
        ("rows evaluated", result.get("rows")),
        ("rows quarantined", result.get("quarantined")),
    ]
    if result.get("positive") is not None:
        rows.append(("positive class", result["positive"]))
    if champion:
        rows.append(("champion", f"{champion.get('ref')} ({champion.get('model_id')})"))
    body = "".join(f'<tr><th class="l">{escape(k)}</th>{_cell(v, left=True)}</tr>' for k, v in rows)
    return f"<table>{body}</table>"


def _metrics_table(result: Mapping[str, Any]) -> str:
    metrics: Mapping[str, Any] = result.get("metrics") or {}
    comparison: Mapping[str, Any] = result.get("comparison") or {}
    if not result.get("champion"):
        body = "".join(
            f'<tr><td class="l">{escape(k)}</td>{_cell(v)}</tr>' for k, v in metrics.items()
        )
        return f"<table>{_head(['metric', 'value'])}{body}</table>"
    rows = []
    for name, value in metrics.items():
        c = comparison.get(name, {})
        better = c.get("better")
        cls = "" if better is None or not c.get("delta") else "better" if better else "worse"
        rows.append(
            f'<tr><td class="l">{escape(name)}</td>{_cell(value)}{_cell(c.get("champion"))}'
            f"{_cell(c.get('delta'), cls=cls)}</tr>"
        )
    head = _head(["metric", "model", "champion", "model − champion"])
    note = ""
    champion_rows = result["champion"].get("rows")
    if champion_rows is not None and champion_rows != result.get("rows"):
        note = (
            f'<p class="sub">The comparison is on the {escape(fmt(champion_rows))} rows both '
            "models accept.</p>"
        )
    return f"<table>{head}{''.join(rows)}</table>{note}"


def _confusion(result: Mapping[str, Any]) -> str:
    cm = result.get("confusion_matrix")
    if not cm:
        return ""
    labels = cm["labels"]
    head = "<tr><th class='l'>actual \\ predicted</th>" + "".join(
        f"<th>{escape(fmt(x))}</th>" for x in labels
    )
    body = "".join(
        f"<tr><th class='l'>{escape(fmt(label))}</th>{''.join(_cell(v) for v in row)}</tr>"
        for label, row in zip(labels, cm["matrix"], strict=True)
    )
    return f"<h2>Confusion matrix</h2><table>{head}</tr>{body}</table>"


def _slices(result: Mapping[str, Any]) -> str:
    slices: Mapping[str, Mapping[str, Mapping[str, Any]]] = result.get("slices") or {}
    parts = []
    for column, groups in slices.items():
        names: list[str] = []
        for values in groups.values():
            for k in values:
                if k != "rows" and k not in names:
                    names.append(k)
        body = "".join(
            f'<tr><td class="l">{escape(value)}</td>{_cell(m.get("rows"))}'
            + "".join(_cell(m.get(n)) for n in names)
            + "</tr>"
            for value, m in groups.items()
        )
        parts.append(
            f"<h3>by {escape(column)}</h3><table>{_head([column, 'rows', *names])}{body}</table>"
        )
    return "<h2>Slices</h2>" + "".join(parts) if parts else ""


def _importance(result: Mapping[str, Any]) -> str:
    imp = result.get("importance")
    if not imp:
        return ""
    columns: Mapping[str, Mapping[str, float]] = imp.get("columns", {})
    ranked = sorted(columns.items(), key=lambda kv: (-kv[1]["mean"], kv[0]))[:30]
    body = "".join(
        f'<tr><td class="l">{escape(name)}</td>{_cell(v["mean"])}{_cell(v["std"])}</tr>'
        for name, v in ranked
    )
    note = (
        f'<p class="sub">Drop in {escape(str(imp.get("scoring")))} when a column is shuffled '
        f"({escape(fmt(imp.get('rows')))} rows, {escape(fmt(imp.get('repeats')))} repeats).</p>"
    )
    return (
        f"<h2>Permutation importance</h2>{note}"
        f"<table>{_head(['column', 'mean', 'std'])}{body}</table>"
    )


def _plots(plots: Sequence[Path]) -> str:
    figures = []
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        title = PLOT_TITLES.get(path.name, path.stem)
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{escape(title)}">'
            f"<figcaption>{escape(title)}</figcaption></figure>"
        )
    return f'<h2>Plots</h2><div class="plots">{"".join(figures)}</div>' if figures else ""


def render(result: Mapping[str, Any], plots: Sequence[Path], *, title: str) -> str:
    """The HTML page for an evaluation ``result`` (the evaluate stage's metrics JSON)."""
    directions = ", ".join(
        f"{name} {'↑' if DIRECTIONS[name] == 'maximize' else '↓'}"
        for name in (result.get("metrics") or {})
        if name in DIRECTIONS
    )
    sub = f"{result.get('task', '')} · {fmt(result.get('rows'))} rows"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class='sub'>{escape(sub)}</p>"
        f"{_summary(result)}"
        f"<h2>Metrics</h2>{_metrics_table(result)}"
        f"<p class='sub'>{escape(directions)}</p>"
        f"{_confusion(result)}{_slices(result)}{_importance(result)}{_plots(plots)}"
        "</body></html>\n"
    )
