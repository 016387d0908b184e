"""Executors: local, Ray and Prefect on the same pipelines, in one run.

(a) fanout8: the W2 pipeline of bench_engine.py (8 independent CPU-bound ``workloads.burn``
    stages + a join) on the local executor with 1 worker and with 2 (process pool), on Ray (a
    ``ray start --head --num-cpus 2`` cluster on 127.0.0.1, started before timing) and on Prefect
    (a ``prefect server start`` on 127.0.0.1, started before timing), next to the plain for loop
    and a plain ``ProcessPoolExecutor(2)``. Every ductwork run is a whole ``ductwork run --json
    --force`` process, so every stage runs.
(b) trivial stages: N (default 100) independent stages that each return a tiny JSON value
    (``workloads.join`` with one argument), per executor: the per-stage overhead from the JSON
    events, and the first-stage start-up (a 1-stage pipeline). Definitions are in the section
    this writes (bench/RESULTS.md, section ``executors``).

Configurations are interleaved, each measured --repeat times; medians are reported with the
1-minute load average at the time of each figure. The Ray cluster and the Prefect server stay
up during the whole timed part (their idle CPU use is reported) and are stopped at the end,
by process id: the cluster's processes are exactly those in the session of its ``ray start``.

    python bench/bench_executors.py                         # full: about 10 minutes
    python bench/bench_executors.py --quick                 # BURN_N=2000000, 20 stages, 1 repeat
    python bench/bench_executors.py --skip-prefect --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

QUICK_BURN_N = 2_000_000
if "--quick" in sys.argv and "BURN_N" not in os.environ:
    os.environ["BURN_N"] = str(QUICK_BURN_N)  # before workloads reads it

import workloads as wl  # noqa: E402
from _results import machine, table, write_section  # noqa: E402
from bench_engine import project, w2_yaml  # noqa: E402
from bench_tune import wait_quiet  # noqa: E402

BIN = Path(sys.executable).parent
DUCTWORK = shutil.which("ductwork") or str(BIN / "ductwork")
RUN_TIMEOUT_S = 900  # one `ductwork run`
START_TIMEOUT_S = 300  # a cluster or server start


def load1() -> float:
    return os.getloadavg()[0]


# -- pipelines -------------------------------------------------------------------------------


def fanout_yaml(executor: str) -> str:
    """The W2 fan-out of bench_engine.py with the given ``executor:`` mapping."""
    text = w2_yaml(1, "thread")
    return text.replace("executor: {workers: 1, pool: thread}", f"executor: {executor}", 1)


def trivial_yaml(n: int, executor: str, offset: int = 0) -> str:
    """N independent stages, each returning a small JSON value (``offset`` + its number)."""
    lines = [f"pipeline: trivial{n}", f"executor: {executor}", "stages:"]
    for i in range(n):
        lines.append(
            f"  - {{name: t{i:03d}, kind: python, uses: workloads:join, inputs: [], "
            f"params: {{args: {{x: {offset + i}}}, outputs: {{main: json}}}}}}"
        )
    return "\n".join(lines) + "\n"


def plain_trivial(n: int) -> float:
    """The same N functions called in this process: the work a trivial stage does."""
    t = time.perf_counter()
    for i in range(n):
        wl.join(x=i)
    return time.perf_counter() - t


# -- running `ductwork run` and reading its events --------------------------------------------


@dataclass
class Run:
    wall: float  # the whole `ductwork run` process
    events: list[dict[str, Any]]
    load: float = field(default_factory=load1)

    def first(self, event: str) -> float:
        return min(e["ts"] for e in self.events if e["event"] == event)

    def last(self, event: str) -> float:
        return max(e["ts"] for e in self.events if e["event"] == event)

    @property
    def summary(self) -> dict[str, Any]:
        return self.events[-1]

    @property
    def span(self) -> float:
        """First stage handed to the executor -> last stage result recorded."""
        return self.last("stage_finished") - self.first("stage_started")

    @property
    def to_last_result(self) -> float:
        """Run started (records open, executor made) -> last stage result recorded."""
        return self.last("stage_finished") - self.first("run_started")

    @property
    def in_stage(self) -> float:
        """Median time inside a stage, as its worker measured it (``duration_s``)."""
        return statistics.median(
            e["duration_s"] for e in self.events if e["event"] == "stage_finished"
        )

    def output(self, stage: str) -> str:
        row = next(s for s in self.summary["stages"] if s["stage"] == stage)
        return str(row["outputs"]["main"]["sha256"])


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without DUCTWORK_* settings (a benchmark decides them), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCTWORK_")}
    env["BURN_N"] = str(wl.BURN_N)
    env.update(extra or {})
    return env


def run_cli(d: Path, env: dict[str, str], *args: str, timeout: float = RUN_TIMEOUT_S) -> Run:
    t = time.perf_counter()
    p = subprocess.run(
        [DUCTWORK, "run", str(d / "pipeline.yaml"), "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=d,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - t
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not events or events[-1].get("status") != "ok":
        tail = events[-1] if events else None
        raise SystemExit(f"ductwork run failed in {d}:\n{p.stderr[-3000:]}\n{tail}")
    return Run(wall, events)


# -- processes we start, found by their session id --------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def session_pids(sid: int) -> list[int]:
    """The processes of a session (started with start_new_session=True, so sid = its pid)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and _sid(int(d)) == sid]


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / ticks


def idle_cpu(sid: int, seconds: float = 10.0) -> float:
    """The share of one core the session's processes use while nothing is submitted."""
    before = cpu_seconds(session_pids(sid))
    time.sleep(seconds)
    return (cpu_seconds(session_pids(sid)) - before) / seconds


def stop_session(sid: int, grace_s: float = 5.0) -> None:
    """SIGTERM every process of the session, SIGKILL what is left after ``grace_s``."""
    pids = session_pids(sid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_sid(p) == sid for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _sid(pid) == sid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Service:
    name: str
    env: dict[str, str]  # what a `ductwork run` against it needs
    executor: str  # the pipeline file's `executor:` mapping
    start_s: float
    sid: int
    idle_cpu: float = 0.0


@contextlib.contextmanager
def ray_cluster(base: Path) -> Iterator[Service]:
    """`ray start --head --num-cpus 2` on 127.0.0.1 with token auth, HOME and TMPDIR in ``base``."""
    home, tmp = base / "home", base / "t"
    for d in (home, tmp):
        d.mkdir(parents=True, exist_ok=True)
    env = clean_env(
        {"HOME": str(home), "TMPDIR": str(tmp), "RAY_AUTH_MODE": "token"}
        | {"RAY_USAGE_STATS_ENABLED": "0"}
    )
    token = subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"],
        env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
    )  # fmt: skip
    if token.returncode != 0:
        raise SystemExit(f"ray get-auth-token failed:\n{token.stderr}")
    port = free_port()
    cmd = [
        str(BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2",
        "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
        "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
        "--disable-usage-stats",
    ]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"ray start took more than {START_TIMEOUT_S} s") from None
        start_s = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"ray start failed:\n{out.decode(errors='replace')[-3000:]}")
        yield Service(
            "ray",
            env,
            f'{{kind: ray, address: "127.0.0.1:{port}"}}',
            start_s,
            proc.pid,
            idle_cpu(proc.pid),
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop_session(proc.pid)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return bool(r.read().strip() == b"true")
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(base: Path, workers: int = 2) -> Iterator[Service]:
    """`prefect server start` on 127.0.0.1 (a fresh database), telemetry off."""
    base.mkdir(parents=True, exist_ok=True)
    quiet = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    server_env = clean_env({"PREFECT_HOME": str(base / "server")} | quiet)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = base / "server.log"
    t = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"prefect server did not start:\n{text}")
            time.sleep(0.5)
        start_s = time.perf_counter() - t
        client = {
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(base / "client"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        yield Service(
            "prefect",
            clean_env(client | quiet),
            f"{{kind: prefect, workers: {workers}}}",
            start_s,
            proc.pid,
            idle_cpu(proc.pid),
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop_session(proc.pid)


# -- reporting ---------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def loads(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if abs(hi - lo) < 0.005 else f"{lo:.2f}–{hi:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help=f"BURN_N={QUICK_BURN_N}, 20 stages")
    ap.add_argument("--repeat", type=int, default=None, help="default 3 (--quick: 1)")
    ap.add_argument("--stages", type=int, default=None, help="trivial stages (default 100)")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-prefect", action="store_true")
    ap.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds to wait for idle CPUs before a fan-out run",
    )
    ap.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = ap.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    n = args.stages or (20 if args.quick else 100)
    load_start = load1()
    base = Path(tempfile.mkdtemp(prefix="dwb-", dir="/tmp"))  # short: Ray's socket paths
    local_env = clean_env({"HOME": str(base / "home"), "TMPDIR": str(base / "t")})
    for d in ("home", "t"):
        (base / d).mkdir()
    services: list[Service] = []
    fan: dict[str, list[Run]] = {}
    fan_plain: dict[str, list[tuple[float, float]]] = {"loop": [], "pool": []}
    busy: dict[str, list[float]] = {}  # CPU busy (0-1) just before each fan-out run
    triv: dict[str, list[Run]] = {}
    one: dict[str, list[Run]] = {}
    try:
        with contextlib.ExitStack() as stack:
            if not args.skip_ray:
                services.append(stack.enter_context(ray_cluster(base / "ray")))
            if not args.skip_prefect:
                services.append(stack.enter_context(prefect_server(base / "prefect")))
            configs: list[tuple[str, str, dict[str, str]]] = [
                ("local, 1 worker", "{workers: 1}", local_env),
                ("local, 2 workers (threads)", "{workers: 2, pool: thread}", local_env),
                ("local, 2 workers (processes)", "{workers: 2, pool: process}", local_env),
            ]
            configs += [(f"{s.name} (2 CPUs)" if s.name == "ray" else
                         f"{s.name} (2 threads)", s.executor, s.env) for s in services]  # fmt: skip
            fan_configs = [c for c in configs if c[0] != "local, 2 workers (threads)"]
            dirs: dict[tuple[str, str], Path] = {}
            for i, (label, executor, _) in enumerate(configs):
                dirs["fan", label] = project(base, f"fan{i}", fanout_yaml(executor))
                dirs["triv", label] = project(base, f"triv{i}", trivial_yaml(n, executor))
                dirs["one", label] = project(base, f"one{i}", trivial_yaml(1, executor))
            for rep in range(repeat):  # (a) fan-out, interleaved, each run on idle CPUs
                busy.setdefault("loop", []).append(wait_quiet(args.wait) or 0.0)
                t = time.perf_counter()
                vals = [wl.burn(i) for i in range(wl.N_BRANCHES)]
                fan_plain["loop"].append((time.perf_counter() - t, load1()))
                busy.setdefault("pool", []).append(wait_quiet(args.wait) or 0.0)
                t = time.perf_counter()
                with ProcessPoolExecutor(2) as ex:
                    assert list(ex.map(wl.burn, range(wl.N_BRANCHES))) == vals
                fan_plain["pool"].append((time.perf_counter() - t, load1()))
                for label, _, env in fan_configs:
                    busy.setdefault(label, []).append(wait_quiet(args.wait) or 0.0)
                    run = run_cli(dirs["fan", label], env, "--force")
                    fan.setdefault(label, []).append(run)
                    print(
                        f"[fanout {rep + 1}/{repeat}] {label}: {run.wall:.2f} s"
                        f" (CPUs {busy[label][-1]:.0%} busy before)",
                        flush=True,
                    )
            for rep in range(repeat):  # (b) trivial stages and the 1-stage start-up
                for label, _, env in configs:
                    run = run_cli(dirs["triv", label], env, "--force")
                    assert run.summary["counts"] == {"ok": n}, run.summary["counts"]
                    triv.setdefault(label, []).append(run)
                    first = run_cli(dirs["one", label], env, "--force")
                    one.setdefault(label, []).append(first)
                    print(
                        f"[trivial {rep + 1}/{repeat}] {label}: {run.span / n * 1000:.1f} ms/stage,"
                        f" first stage {first.to_last_result:.2f} s",
                        flush=True,
                    )
        # the same join value everywhere (content-addressed: the same sha256)
        shas = {label: {r.output("total") for r in runs} for label, runs in fan.items()}
        assert len(set().union(*shas.values())) == 1, shas
        import ductwork as dw

        local_dir = dirs["fan", configs[0][0]]
        os.environ.pop("DUCTWORK_STORE", None)
        value = dw.artifact(dw.load(local_dir / "pipeline.yaml"), "total")
        assert value == wl.join(**{f"b{i}": v for i, v in enumerate(vals)}), value
    finally:
        shutil.rmtree(base, ignore_errors=True)

    plain_n = plain_trivial(n)
    loop_s = med([w for w, _ in fan_plain["loop"]])

    def busiest(key: str) -> str:
        return f"{max(busy[key]):.0%}"

    pool_s = med([w for w, _ in fan_plain["pool"]])
    rows_a: list[list[object]] = [
        ["plain for loop", f"{loop_s:.2f}", "", "1.00x", busiest("loop"),
         loads([ld for _, ld in fan_plain["loop"]])],
        ["plain ProcessPoolExecutor(2)", f"{pool_s:.2f}", "", f"{loop_s / pool_s:.2f}x",
         busiest("pool"), loads([ld for _, ld in fan_plain["pool"]])],
    ]  # fmt: skip
    for label, runs in fan.items():
        wall, span = med([r.wall for r in runs]), med([r.span for r in runs])
        rows_a.append(
            [f"ductwork, {label}", f"{wall:.2f}", f"{span:.2f}",
             f"{loop_s / wall:.2f}x ({loop_s / span:.2f}x)", busiest(label),
             loads([r.load for r in runs])]
        )  # fmt: skip
    rows_b: list[list[object]] = []
    for label, runs in triv.items():
        firsts = one[label]
        per = med([(r.span - plain_n) / n * 1000 for r in runs])
        marginal = med([r.to_last_result for r in runs]) - med([f.to_last_result for f in firsts])
        rows_b.append(
            [
                label,
                f"{per:.1f}",
                f"{marginal / max(n - 1, 1) * 1000:.1f}",
                f"{med([r.in_stage for r in runs]) * 1000:.1f}"
                + ("*" if label.startswith("prefect") else ""),
                f"{med([f.to_last_result for f in firsts]):.2f}",
                f"{med([f.wall for f in firsts]):.2f}",
                f"{med([r.wall for r in runs]):.2f}",
                loads([r.load for r in runs + firsts]),
            ]
        )
    svc_rows = [
        [
            "Ray: `ray start --head --num-cpus 2` (token auth, no dashboard)"
            if s.name == "ray"
            else "Prefect: `prefect server start` (fresh database, telemetry off)",
            f"{s.start_s:.1f}",
            f"{s.idle_cpu * 100:.0f}%",
        ]
        for s in services
    ]
    cmd = "python bench/bench_executors.py" + (" --quick" if args.quick else "")
    if args.repeat or args.stages:
        cmd += f" --repeat {repeat} --stages {n}"
    body = "## Executors: local, Ray, Prefect (bench/bench_executors.py)\n\n"
    body += f"Re-run: `{cmd}` · {machine()} (load at the start: {load_start:.2f})\n\n"
    body += (
        f"Medians of {repeat} interleaved runs; the last column is the 1-minute load average "
        "when each run ended (min–max over the runs). Every ductwork figure is a whole "
        "`ductwork run --json --force` process, so every stage runs. The Ray cluster and the "
        "Prefect server were started before the timed part, stayed up during all of it, and "
        "are not in any figure below:\n\n"
    )
    body += table(["started before timing", "start s", "idle CPU (one core = 100%)"], svc_rows)
    body += (
        f"\n\n**(a) fanout8**: 8 independent `workloads.burn` stages (BURN_N={wl.BURN_N}) and "
        "a join. *wall* is the whole process (imports, connecting to the cluster or server, the "
        "run); *stages* is from the first `stage_started` to the last `stage_finished` event. "
        "Prefect runs stages in threads of the driver, so pure-Python CPU work does not "
        "overlap (the GIL); Ray tasks get one CPU each (the default `resources`). Each run "
        f"started once other work left the CPUs (< 15% busy, waiting up to {args.wait:g} s): "
        "a 2-core speedup is only measurable on idle cores.\n\n"
    )
    body += table(
        ["configuration", "wall s", "stages s", "speedup vs loop: wall (stages)",
         "CPUs busy before (max)", "load"],
        rows_a,
    )  # fmt: skip
    body += (
        f"\n\n**(b) {n} trivial independent stages** (each returns a 1–2-byte JSON artifact; "
        f"the plain calls of the same {n} functions take {plain_n * 1000:.2f} ms in all).\n\n"
        f"- *per stage* = (last `stage_finished` − first `stage_started` − the plain time) / "
        f"{n}: what a stage costs on that executor, start-up of the executor included "
        "(amortized), records and the stage lock included.\n"
        f"- *marginal* = (run started → last result, {n} stages − the same for 1 stage) / "
        f"{n - 1}: the cost of one more stage once the executor is up.\n"
        "- *in stage* = the median `duration_s` of the stages: the time inside `execute_stage` "
        "where the stage ran (the worker), i.e. the stage kind, writing and hashing its output; "
        "the rest of a stage's cost is the executor's hand-off and the driver's bookkeeping. "
        "(*On Prefect it counts from the submit, so it includes the wait for one of the 2 "
        "threads: not comparable.)\n"
        "- *first stage* = run started → first result of a 1-stage pipeline (connecting to "
        "the Ray cluster or creating the Prefect flow run, a worker's first task; on every "
        "executor also the lazy `import polars` of the first stage, about 0.2 s); *1-stage "
        "process* is that whole `ductwork run` process (imports included).\n"
        "- Goal: Ray ≤ 50 ms a stage.\n\n"
    )
    body += table(
        [
            "executor",
            "per stage ms",
            "marginal ms",
            "in stage ms",
            "first stage s",
            "1-stage process s",
            f"{n}-stage process s",
            "load",
        ],
        rows_b,
    )
    print(body)
    if not args.no_write:
        write_section("executors", body)


if __name__ == "__main__":
    main()
