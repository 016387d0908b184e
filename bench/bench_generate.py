"""LLM enrichment: the generate stage vs plain httpx loops vs the concurrency limit, and a cached re-run.

The model is the local LLM test server (``python -m ductwork.ai.testserver``) in its own
process with a fixed latency per request (default 50 ms) and no faults, so what is measured is
the client side: how close the stage gets to ``concurrency / latency`` requests a second with
everything it does per row (render the template, cache lookup and write, budget, retries
wrapper, validation with the pydantic model, the raw log, the output tables).

The rows are N functions of the Python standard library with the first line of their
docstring (real text, cycled when N is larger than what was found). Each row is one
structured request: {category: enum of 8, summary: string, pure: boolean}.

Paths, each on a fresh store (no cache):

(a) a plain sequential loop: one httpx.Client POST per row to /v1/chat/completions with the
    same json_schema body, parse the JSON answer (what a quick script does);
(b) plain asyncio + httpx.AsyncClient, a semaphore of C, the same body (hand-written
    concurrent client, no cache, no validation, no log);
(c) the generate stage, provider openai (httpx), concurrency C;
(d) the generate stage, provider anthropic (the official SDK), concurrency C;
(e) the generate stage again on (c)'s store: every answer from the cache.

The limit is C / latency rows a second. The server process counts the requests it got; the
cached re-run must add none.

Usage:
    python bench/bench_generate.py                         # 400 rows, C = 8 and 32, writes RESULTS.md
    python bench/bench_generate.py --rows 100 --concurrency 8 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

CATEGORIES = ["text", "files", "networking", "math", "data", "concurrency", "system", "other"]
ANSWER: dict[str, Any] = {
    "category": {"type": "string", "enum": CATEGORIES, "description": "what the function is about"},
    "summary": {"type": "string", "description": "one sentence"},
    "pure": {"type": "boolean", "description": "no side effects"},
}
SYSTEM = "You label Python functions."
PROMPT = "Function {{ qualname }}: {{ doc }}"
MODULES = [
    "math", "os", "os.path", "json", "socket", "shutil", "string", "random", "itertools",
    "functools", "re", "time", "datetime", "statistics", "textwrap", "threading", "subprocess",
    "urllib.parse", "http.client", "csv", "gzip", "zipfile", "hashlib", "base64", "heapq",
    "bisect", "glob", "fnmatch", "tempfile", "uuid", "secrets", "difflib", "calendar",
    "decimal", "fractions", "operator", "pathlib", "struct", "copy", "pprint", "inspect",
]  # fmt: skip


def functions(rows: int) -> Any:
    """N (qualname, doc) rows from the standard library, cycled to N."""
    import polars as pl

    found: list[tuple[str, str]] = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not callable(obj):
                continue
            doc = inspect.getdoc(obj) or ""
            first = doc.strip().splitlines()[0] if doc.strip() else ""
            if first and len(first) > 15:
                found.append((f"{name}.{attr}", first[:300]))
    out = [found[i % len(found)] for i in range(rows)]
    names = [q if i < len(found) else f"{q}#{i // len(found)}" for i, (q, _) in enumerate(out)]
    return pl.DataFrame({"qualname": names, "doc": [d for _, d in out]})


# ----------------------------------------------------------------------------- the server
class Server:
    """The test server in its own process (so its threads do not share our GIL)."""

    def __init__(self, latency_ms: float) -> None:
        cmd = [
            sys.executable, "-m", "ductwork.ai.testserver",
            "--port", "0", "--latency-ms", str(latency_ms),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "LLM test server on" not in line:
            msg = f"the test server did not start: {line}{self.proc.stderr.read() if self.proc.stderr else ''}"
            raise RuntimeError(msg)
        self.base_url = line.split(" on ", 1)[1].split()[0]

    def stop(self) -> int:
        """Stop it; the number of requests it answered."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith("stopped after"):
                return int(line.split()[2])
        return -1


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------- paths
def body(qualname: str, doc: str) -> dict[str, Any]:
    from ductwork.ai.schema import parse_answer_spec

    schema = parse_answer_spec(ANSWER).json_schema()
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Function {qualname}: {doc}"},
        ],
        "temperature": 0.0,
        "max_tokens": 512,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    }


def plain_sequential(base_url: str, df: Any) -> dict[str, Any]:
    import httpx

    answers = []
    t = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for qualname, doc in df.iter_rows():
            r = client.post(f"{base_url}/v1/chat/completions", json=body(qualname, doc))
            r.raise_for_status()
            answers.append(json.loads(r.json()["choices"][0]["message"]["content"]))
    return {"seconds": time.perf_counter() - t, "rows": len(answers)}


def plain_async(base_url: str, df: Any, concurrency: int) -> dict[str, Any]:
    import httpx

    async def main() -> int:
        sem = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(qualname: str, doc: str) -> Any:
                async with sem:
                    r = await client.post(
                        f"{base_url}/v1/chat/completions", json=body(qualname, doc)
                    )
                    r.raise_for_status()
                    return json.loads(r.json()["choices"][0]["message"]["content"])

            answers = await asyncio.gather(*(one(q, d) for q, d in df.iter_rows()))
        return len(answers)

    t = time.perf_counter()
    n = asyncio.run(main())
    return {"seconds": time.perf_counter() - t, "rows": n}


def stage(base_url: str, df: Any, provider: str, concurrency: int, project: Path) -> dict[str, Any]:
    from ductwork.testing import run_stage

    params = {
        "provider": provider,
        "model": "claude-haiku-4-5" if provider == "anthropic" else "gpt-4o-mini",
        "base_url": base_url if provider == "anthropic" else f"{base_url}/v1",
        "system": SYSTEM,
        "prompt": PROMPT,
        "answer": ANSWER,
        "key": "qualname",
        "concurrency": concurrency,
    }
    project.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=project))
    t = time.perf_counter()
    out = run_stage("generate", params, {"docs": df}, work, project_dir=project, stage="enrich")
    seconds = time.perf_counter() - t
    usage = out.values["usage"]
    assert out.violations == [], out.violations
    return {
        "seconds": seconds,
        "rows": usage["rows_in"],
        "validated": usage["rows_validated"],
        "requests": usage["requests"],
        "cache_hits": usage["cache_hits"],
        "sha": out.infos["llm_validated"].sha256,
    }


# ----------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--concurrency", default="8,32", help="comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="runs per path (the fastest counts)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    df = functions(a.rows)
    latency = a.latency_ms / 1000
    print(f"{a.rows} rows, server latency {a.latency_ms:g} ms, concurrency {levels}", flush=True)
    server = Server(a.latency_ms)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
            # warm the imports and the connections once (not timed)
            stage(server.base_url, df.head(4), "openai", 4, Path(tmp) / "warm")
            stage(server.base_url, df.head(4), "anthropic", 4, Path(tmp) / "warm2")

            def record(name: str, fn: Any, *args: Any) -> None:
                c0 = cpu_s()
                r = fn(*args)
                r["cpu_s"] = cpu_s() - c0
                runs.setdefault(name, []).append(r)
                print(
                    f"  {name}: {r['seconds']:.2f} s, {r['rows'] / r['seconds']:,.1f} rows/s, "
                    f"client CPU {1000 * r['cpu_s'] / r['rows']:.2f} ms/row"
                    + (f", requests {r['requests']}" if "requests" in r else ""),
                    flush=True,
                )

            base = server.base_url
            for rep in range(a.repeats):  # paths interleaved, each stage run on a fresh store
                for c in levels:
                    record(f"plain_async_{c}", plain_async, base, df, c)
                    for provider in ("openai", "anthropic"):
                        store = Path(tmp) / f"{provider}-{c}-{rep}"
                        record(f"{provider}_{c}", stage, base, df, provider, c, store)
            c = max(levels)
            last = Path(tmp) / f"openai-{c}-{a.repeats - 1}"
            for _ in range(a.repeats):
                record("cached", stage, base, df, "openai", c, last)
            record("plain_sequential", plain_sequential, base, df)
            results = {
                name: dict(min(rs, key=lambda r: float(r["seconds"]))) for name, rs in runs.items()
            }
    finally:
        served = server.stop()
    warm = 8  # the two 4-row warm-up runs
    expected = warm + sum(
        r.get("requests", r["rows"]) for name, rs in runs.items() if name != "cached" for r in rs
    )
    print(f"server answered {served} requests; without the cached run {expected}")
    if not a.no_write:
        write(a, levels, latency, results, served, expected)


def write(
    a: argparse.Namespace,
    levels: list[int],
    latency: float,
    results: dict[str, dict[str, Any]],
    served: int,
    expected: int,
) -> None:
    from _results import machine, table, write_section

    def rate(name: str) -> float:
        r = results[name]
        return float(r["rows"] / r["seconds"])

    def cpu(name: str) -> str:
        r = results[name]
        return f"{1000 * r['cpu_s'] / r['rows']:.2f}"

    seq = rate("plain_sequential")
    rows: list[list[object]] = [
        [
            "(a) plain sequential httpx loop",
            1,
            f"{results['plain_sequential']['seconds']:.2f}",
            f"{seq:,.1f}",
            f"{1 / latency:,.0f}",
            f"{seq * latency:.0%}",
            cpu("plain_sequential"),
        ]
    ]
    for c in levels:
        limit = c / latency
        for name, label in (
            (f"plain_async_{c}", "(b) plain asyncio + httpx, semaphore"),
            (f"openai_{c}", "(c) generate stage, openai (httpx)"),
            (f"anthropic_{c}", "(d) generate stage, anthropic (SDK)"),
        ):
            r = rate(name)
            rows.append(
                [
                    label,
                    c,
                    f"{results[name]['seconds']:.2f}",
                    f"{r:,.1f}",
                    f"{limit:,.0f}",
                    f"{r / limit:.0%}",
                    cpu(name),
                ]
            )
    cached = results["cached"]
    c = max(levels)
    notes = [
        f"- At concurrency {c}, the stage (openai) runs at {rate(f'openai_{c}') / rate(f'plain_async_{c}'):.2f}x "
        f"the hand-written asyncio client and {rate(f'openai_{c}') / seq:.1f}x the sequential loop; "
        f"anthropic through the SDK at {rate(f'anthropic_{c}') / rate(f'plain_async_{c}'):.2f}x.",
        f"- (e) cached re-run of (c) at concurrency {c}: {cached['seconds']:.2f} s for {cached['rows']} "
        f"rows ({cached['rows'] / cached['seconds']:,.0f} rows/s), {cached['requests']} requests "
        f"sent by the stage, {cached['cache_hits']} cache hits; the server process counted "
        f"{served} requests in all, {served - expected} more than the uncached paths sent; "
        f"llm_validated identical to (c): {cached['sha'] == results[f'openai_{c}']['sha']}.",
        "- The stage's time includes reading the input, rendering the prompts, the cache "
        "(SQLite, one write per answer), validation, the raw log and the output tables; (a) and "
        "(b) only send and parse.",
    ]
    lo = min(levels)
    extra = 1000 * (
        results[f"openai_{lo}"]["cpu_s"] / results[f"openai_{lo}"]["rows"]
        - results[f"plain_async_{lo}"]["cpu_s"] / results[f"plain_async_{lo}"]["rows"]
    )
    notes.append(
        f"- Client CPU: at concurrency {lo} the stage (openai) spends {extra:.2f} ms more per row "
        "than the hand-written client (the cache write, the raw log line, validation, the output "
        "tables). With one event loop, CPU per row bounds the "
        "rate at 1000 / (ms per row) rows/s whatever the concurrency, and the server process "
        "takes the same cores here, so at high concurrency on this machine the stage stays "
        "further below the limit than the bare client; against a remote API (latency 0.5-5 s a "
        "call) it is the concurrency and the provider's rate limits that decide."
    )
    body = "\n".join(
        [
            "## LLM enrichment (bench/bench_generate.py)",
            "",
            f"Re-run: `python bench/bench_generate.py --rows {a.rows} --latency-ms {a.latency_ms:g} "
            f"--concurrency {a.concurrency} --repeats {a.repeats}` · {machine()}",
            "",
            f"{a.rows} rows (standard-library functions and the first line of their docstring), "
            "one structured request each ({category: enum of 8, summary, pure}) to the local LLM "
            f"test server in its own process with {a.latency_ms:g} ms latency per request (not a "
            "model: it answers instantly after the latency). The limit is concurrency / latency. "
            f"Paths interleaved, {a.repeats} runs each (every stage run on a fresh store), the "
            "fastest counts; wall times move with the machine's load (the server shares its "
            "cores), client CPU per row (this process only) much less.",
            "",
            table(
                [
                    "path",
                    "concurrency",
                    "seconds",
                    "rows/s",
                    "limit rows/s",
                    "of limit",
                    "client CPU ms/row",
                ],
                rows,
            ),
            "",
            *notes,
        ]
    )
    write_section("generate", body)
    print("wrote bench/RESULTS.md section 'generate'")


if __name__ == "__main__":
    main()
