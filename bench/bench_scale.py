"""Scale-out costs per GB and per round trip: the figures docs/scaling.md extrapolates from.

1. Bytes: sha256 (hashlib, what the store's hashing writer runs), the store's Parquet write
   (``Store.put_table``: zstd, hashed while written, fsynced) of an eager and a lazy frame,
   a plain ``write_parquet`` to a path, and ``read_parquet``. MB = 10^6 bytes; the frame's
   in-memory size is Polars' ``estimated_size``.
2. Records: N trivial independent stages (bench_executors.trivial_yaml, local executor, 1 worker)
   with the run records in SQLite (the default, in the store) and in PostgreSQL (a throwaway
   PostgreSQL 15 cluster on 127.0.0.1 with default durability: fsync and synchronous_commit
   on), ``--force`` (every stage runs) and a no-change re-run (every stage cached). The SQL
   statements per stage come from ``pg_stat_statements``.
3. Object store: moto's S3 server on 127.0.0.1 (a Python process keeping objects in memory):
   ductwork's RemoteStore publishing (HEAD + create-only PUT) and fetching (GET into the read
   cache, sha256 checked) small JSON objects one by one, a HEAD (a cache lookup), and large
   objects; then the N trivial stages with ``DUCTWORK_STORE=s3://...`` against the local store.
4. The driver at 1,000 stages: the same trivial pipeline with 100 and 1,000 stages on local
   threads and on a ``ray start`` cluster (bench_executors.ray_cluster), and loading the
   1,000-stage pipeline file.

Each figure is the median of --repeat runs (interleaved where there are alternatives), with the
1-minute load average when it was taken. Every server started here (PostgreSQL, moto, Ray) is
stopped in ``finally``, by process id.

    python bench/bench_scale.py                 # about 3 minutes on a quiet machine
    python bench/bench_scale.py --quick         # small sizes, 1 repeat
    python bench/bench_scale.py --skip-ray --skip-pg --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import polars as pl  # noqa: E402
from _results import machine, table, write_section  # noqa: E402
from bench_engine import project  # noqa: E402
from bench_executors import (  # noqa: E402
    START_TIMEOUT_S,
    Run,
    clean_env,
    free_port,
    load1,
    loads,
    ray_cluster,
    run_cli,
    stop_session,
    trivial_yaml,
)

MB = 1e6
MiB = 2**20


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, list[float], Any]:
    """Median seconds of ``fn`` over ``repeat`` calls, the loads after each, the last result."""
    times, lds, out = [], [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        lds.append(load1())
    return statistics.median(times), lds, out


def timed_cpu(fn: Callable[[], Any], repeat: int) -> tuple[float, float, list[float], Any]:
    """Like :func:`timed`, with the median CPU seconds of this process (all its threads):
    CPU time is what a machine's load does not inflate, and what scales with workers."""
    walls, cpus, lds, out = [], [], [], None
    for _ in range(repeat):
        c, t = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        lds.append(load1())
    return statistics.median(walls), statistics.median(cpus), lds, out


# -- 1. bytes ----------------------------------------------------------------------------------


def frame(rows: int) -> pl.DataFrame:
    """A table of ints, floats, low-cardinality strings and bools, like event data."""
    i = pl.int_range(rows, eager=True, dtype=pl.Int64).alias("id")
    return pl.DataFrame(i).select(
        "id",
        k=(pl.col("id").hash(1) % 100_000).cast(pl.Int64),
        x=(pl.col("id").hash(2) % 1_000_000).cast(pl.Float64) / 1000,
        cat=pl.format("c{}", pl.col("id").hash(3) % 500),
        flag=pl.col("id").hash(4) % 2 == 0,
    )


def bytes_part(tmp: Path, rows: int, hash_mib: int, repeat: int) -> list[list[object]]:
    """Rows: operation, data, wall s, CPU s, MB/s, MB per CPU-s, load. For tables the MB are
    Parquet bytes (the size at rest and in the object store)."""
    from ductwork.core import fingerprint
    from ductwork.core.store import PARQUET_OPTIONS, Store

    out: list[list[object]] = []

    def row(what: str, data: str, size: float, fn: Callable[[], Any]) -> Any:
        wall, cpu, lds, result = timed_cpu(fn, repeat)
        out.append(
            [what, data, f"{wall:.2f}", f"{cpu:.2f}", f"{size / MB / wall:.0f}",
             f"{size / MB / cpu:.0f}", loads(lds)]
        )  # fmt: skip
        return result

    buf = os.urandom(MiB)
    hashed = hash_mib * MiB

    def sha() -> None:
        h = hashlib.sha256()
        for _ in range(hash_mib):
            h.update(buf)
        h.hexdigest()

    row("sha256 (hashlib, 1 MiB updates)", f"{hashed / MB:.0f} MB", hashed, sha)
    src = tmp / "source.bin"
    with src.open("wb") as f:
        for _ in range(hash_mib):
            f.write(os.urandom(MiB))

    def stamp() -> None:
        fingerprint._digest_cache.clear()  # its in-process cache would answer at once
        fingerprint.file_digest(src)

    row(
        "file_digest: a local source file's stamp (in the driver; page cache warm)",
        f"{hashed / MB:.0f} MB",
        hashed,
        stamp,
    )
    src.unlink()
    df = frame(rows)
    mem = df.estimated_size()
    path = tmp / "plain.parquet"
    df.write_parquet(path, **PARQUET_OPTIONS)
    size = path.stat().st_size
    counter = iter(range(10**6))

    def put(value: pl.DataFrame | pl.LazyFrame) -> Callable[[], None]:
        def go() -> None:
            store = Store(tmp / f"store{next(counter)}")
            assert store.put_table(value).bytes == size
            shutil.rmtree(store.root)

        return go

    data = f"{rows:,} rows: {mem / MB:.0f} MB in memory, {size / MB:.0f} MB Parquet"
    row("Store.put_table(DataFrame): Parquet zstd + sha256 + fsync", data, size, put(df))
    row("Store.put_table(LazyFrame): a streamed sink, the same", "same", size, put(df.lazy()))
    row(
        "plain df.write_parquet(path), same options (no hash, no fsync)",
        "same",
        size,
        lambda: df.write_parquet(path, **PARQUET_OPTIONS),
    )
    row("pl.read_parquet(path)", "same", size, lambda: pl.read_parquet(path))
    return out


# -- 2. records: SQLite vs PostgreSQL -------------------------------------------------------------


def _pg_bindir() -> Path:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@contextlib.contextmanager
def pg_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with pg_stat_statements; yields its DSN."""
    import psycopg

    bindir = _pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="dws-pg-"))  # its own: the postgres user owns it
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(base, user="postgres", group="postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"

    def pg(*args: str) -> None:
        p = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )
        if p.returncode != 0:
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SystemExit(f"{Path(args[0]).name} failed: {p.stderr[-2000:]}\n{detail}")

    pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
    port = free_port()
    opts = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top"
    )
    started = False
    try:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
           "-o", opts, "start")  # fmt: skip
        started = True
        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute("create database bench")
        dsn = f"postgresql://postgres@127.0.0.1:{port}/bench"
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute("create extension pg_stat_statements")
        yield dsn
    finally:
        if started:
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def pg_statements(dsn: str, reset: bool = False) -> int:
    """SQL statements run in the bench database since the last reset (ours excluded)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        if reset:
            con.execute("select pg_stat_statements_reset()")
            return 0
        row = con.execute(
            "select coalesce(sum(calls), 0) from pg_stat_statements s"
            " join pg_database d on d.oid = s.dbid where d.datname = current_database()"
            " and s.query not ilike '%pg_stat_statements%'"
        ).fetchone()
        return int(row[0]) if row else 0


def per_stage_ms(run: Run, n: int, cached: bool) -> float:
    """--force: first stage_started -> last stage_finished, / N; cached (no stage_started
    events): first -> last stage_finished, / (N - 1), which leaves out the run's one-time start
    (the lazy ``import polars`` of the first stage, about 0.2 s)."""
    if cached:
        return (run.last("stage_finished") - run.first("stage_finished")) / (n - 1) * 1000
    return run.span / n * 1000


def records_part(
    base: Path, n: int, repeat: int, dsn: str | None, s3_env: dict[str, str] | None
) -> tuple[list[list[object]], dict[str, float]]:
    """Per config and repeat: a first run (new stages: every one runs, nothing cached yet),
    a ``--force`` re-run and a no-change re-run of the same project."""
    configs: list[tuple[str, dict[str, str]]] = [("SQLite (default), local store", {})]
    if dsn:
        configs.append(("PostgreSQL 15 on 127.0.0.1, local store", {"DUCTWORK_DATABASE_URL": dsn}))
    if s3_env:
        configs.append(("SQLite, object store (moto S3 on 127.0.0.1)", s3_env))
    runs: dict[tuple[str, str], list[Run]] = {}
    statements: dict[str, list[float]] = {}
    for rep in range(repeat):  # interleaved
        for i, (label, extra) in enumerate(configs):
            env = clean_env({"HOME": str(base / "home"), "TMPDIR": str(base / "t"), **extra})
            pg = dsn is not None and "DUCTWORK_DATABASE_URL" in extra
            # stage params no run has seen: a fingerprint is shared across projects and runs
            offset = (rep * len(configs) + i + 1) * 100_000
            d = project(base, f"rec{rep}-{i}", trivial_yaml(n, "{workers: 1}", offset))
            for what, args, status in (
                ("first", (), "ok"),
                ("force", ("--force",), "ok"),
                ("cached", (), "cached"),
            ):
                if pg and dsn:
                    pg_statements(dsn, reset=True)
                run = run_cli(d, env, *args)
                assert run.summary["counts"] == {status: n}, run.summary["counts"]
                runs.setdefault((label, what), []).append(run)
                if pg and dsn:
                    statements.setdefault(what, []).append(pg_statements(dsn) / n)
    rows: list[list[object]] = []
    for label, _ in configs:
        first, force, cached = (runs[label, w] for w in ("first", "force", "cached"))
        rows.append(
            [
                label,
                f"{statistics.median(per_stage_ms(r, n, False) for r in first):.2f}",
                f"{statistics.median(per_stage_ms(r, n, False) for r in force):.2f}",
                f"{statistics.median(per_stage_ms(r, n, True) for r in cached):.2f}",
                f"{statistics.median(r.wall for r in first):.2f}",
                f"{statistics.median(r.wall for r in cached):.2f}",
                loads([r.load for r in first + force + cached]),
            ]
        )
    stmts = {k: statistics.median(v) for k, v in statements.items()}
    return rows, stmts


# -- 3. object store: moto S3 ---------------------------------------------------------------------


@contextlib.contextmanager
def moto_server(base: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with a bucket ``bench``; yields the DUCTWORK_S3_* settings."""
    import boto3

    exe = Path(sys.executable).with_name("moto_server")
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    with (base / "moto.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("moto_server did not start") from None
                time.sleep(0.2)
        settings = {
            "DUCTWORK_S3_ENDPOINT_URL": url,
            "DUCTWORK_S3_REGION": "us-east-1",
            "DUCTWORK_S3_KEY": "bench",
            "DUCTWORK_S3_SECRET": "bench-" + uuid.uuid4().hex,
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=settings["DUCTWORK_S3_KEY"],
            aws_secret_access_key=settings["DUCTWORK_S3_SECRET"],
        )
        s3.create_bucket(Bucket="bench")
        yield settings
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop_session(proc.pid)


def object_part(
    base: Path, s3: dict[str, str], objects: int, big_mib: int, repeat: int
) -> list[list[object]]:
    from ductwork.config import Settings
    from ductwork.core.store import Store, open_store

    settings = Settings(
        s3_endpoint_url=s3["DUCTWORK_S3_ENDPOINT_URL"],
        s3_region=s3["DUCTWORK_S3_REGION"],
        s3_key=s3["DUCTWORK_S3_KEY"],
        s3_secret=s3["DUCTWORK_S3_SECRET"],
    )
    counter = iter(range(10**6))
    rows: list[list[object]] = []
    results: dict[str, list[float]] = {}
    lds: dict[str, list[float]] = {}

    def note(key: str, seconds: float) -> None:
        results.setdefault(key, []).append(seconds)
        lds.setdefault(key, []).append(load1())

    for _ in range(repeat):
        rep = next(counter)
        url = f"s3://bench/objects-{rep}"
        local = Store(base / f"local-{rep}")
        values = [{"rep": rep, "i": i, "pad": "x" * 100} for i in range(objects)]
        t = time.perf_counter()
        for v in values:
            local.put_json(v)
        note("local_put", time.perf_counter() - t)
        writer = open_store(base / f"w-{rep}", url, settings)
        t = time.perf_counter()
        infos = [writer.put_json(v) for v in values]
        note("put", time.perf_counter() - t)
        t = time.perf_counter()
        assert all(writer.has(i.sha256, i.type) for i in infos)
        note("head", time.perf_counter() - t)
        reader = open_store(base / f"r-{rep}", url, settings)
        t = time.perf_counter()
        for info in infos:
            reader.localize(info)
        note("get", time.perf_counter() - t)
        big = base / f"big-{rep}.bin"
        big.write_bytes(os.urandom(big_mib * MiB))
        key = f"bench/objects-{rep}/big.bin"
        t = time.perf_counter()
        writer._put(big, key)  # what publishing a large object does (create-only PUT)
        note("big_put", time.perf_counter() - t)
        t = time.perf_counter()
        writer._download(key, base / f"big-{rep}.down")
        note("big_get", time.perf_counter() - t)
        assert (base / f"big-{rep}.down").stat().st_size == big_mib * MiB
        for p in (big, base / f"big-{rep}.down"):
            p.unlink()

    def med(key: str) -> float:
        return statistics.median(results[key])

    local_ms = med("local_put") / objects * 1000
    for label, key, note_text in (
        ("publish a 1-object JSON output: local write + HEAD + PUT", "put",
         f"the local store alone: {local_ms:.2f} ms"),
        ("HEAD (a cache lookup: `has`)", "head", ""),
        ("fetch into the read cache: GET + fsync + sha256 check", "get", ""),
    ):  # fmt: skip
        rows.append(
            [label, f"{objects} × ~120 B", f"{med(key) / objects * 1000:.2f} ms",
             note_text, loads(lds[key])]
        )  # fmt: skip
    for label, key in (("PUT one large object (s3fs put_file)", "big_put"),
                       ("GET one large object (s3fs get_file)", "big_get")):  # fmt: skip
        rows.append(
            [label, f"{big_mib * MiB / MB:.0f} MB", f"{big_mib * MiB / MB / med(key):.0f} MB/s",
             f"{med(key):.2f} s", loads(lds[key])]
        )  # fmt: skip
    return rows


# -- 4. the driver at 1,000 stages ------------------------------------------------------------------


def driver_part(
    base: Path, sizes: list[int], repeat: int, ray: bool
) -> tuple[list[list[object]], float, float | None]:
    import ductwork as dw

    env = clean_env({"HOME": str(base / "home"), "TMPDIR": str(base / "t")})
    rows: list[list[object]] = []
    big = max(sizes)
    d = project(base, "load", trivial_yaml(big, "{workers: 2, pool: thread}"))
    load_s, _, _ = timed(lambda: dw.load(d / "pipeline.yaml"), repeat)
    execs: list[tuple[str, str, dict[str, str]]] = [
        ("local, 2 workers (threads)", "{workers: 2, pool: thread}", env)
    ]
    ray_start: float | None = None
    with contextlib.ExitStack() as stack:
        if ray:
            svc = stack.enter_context(ray_cluster(base / "ray"))
            ray_start = svc.start_s
            execs.append(("ray (2 CPUs)", svc.executor, svc.env))
        for label, executor, e in execs:
            runs: dict[int, list[Run]] = {}
            for n in sizes:
                d = project(base, f"drv-{label[:3]}-{n}", trivial_yaml(n, executor))
                for _ in range(repeat if n < big or label.startswith("local") else 1):
                    runs.setdefault(n, []).append(run_cli(d, e, "--force"))
            for n in sizes:
                rs = runs[n]
                per = statistics.median(r.span / n * 1000 for r in rs)
                first = statistics.median(
                    r.first("stage_finished") - r.first("stage_started") for r in rs
                )
                rest = statistics.median(
                    (r.last("stage_finished") - r.first("stage_finished")) / (n - 1) * 1000
                    for r in rs
                )
                rows.append(
                    [label, f"{n:,}", f"{per:.2f}", f"{rest:.2f}", f"{first:.2f}",
                     f"{statistics.median(r.wall for r in rs):.1f}", len(rs),
                     loads([r.load for r in rs])]
                )  # fmt: skip
    return rows, load_s, ray_start


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    ap.add_argument("--repeat", type=int, default=None, help="default 3 (--quick: 1)")
    ap.add_argument("--rows", type=int, default=None, help="table rows (default 10,000,000)")
    ap.add_argument("--stages", type=int, default=None, help="trivial stages (default 100)")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = ap.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    rows_n = args.rows or (1_000_000 if args.quick else 10_000_000)
    n = args.stages or (20 if args.quick else 100)
    hash_mib = 64 if args.quick else 512
    big_mib = 16 if args.quick else 128
    sizes = [n, 10 * n]
    load_start = load1()
    base = Path(tempfile.mkdtemp(prefix="dws-", dir="/tmp"))  # short: Ray's socket paths
    for d in ("home", "t"):
        (base / d).mkdir()
    try:
        print("bytes ...", flush=True)
        bytes_rows = bytes_part(base, rows_n, hash_mib, repeat)
        with contextlib.ExitStack() as stack:
            dsn = None if args.skip_pg else stack.enter_context(pg_cluster())
            s3 = None if args.skip_s3 else stack.enter_context(moto_server(base / "moto"))
            s3_env = {**s3, "DUCTWORK_STORE": "s3://bench/e2e"} if s3 else None
            print("records ...", flush=True)
            rec_rows, stmts = records_part(base, n, repeat, dsn, s3_env)
            obj_rows = []
            if s3:
                print("object store ...", flush=True)
                obj_rows = object_part(base, s3, n, big_mib, repeat)
        print("driver ...", flush=True)
        drv_rows, load_s, ray_start = driver_part(base, sizes, repeat, not args.skip_ray)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    cmd = "python bench/bench_scale.py" + (" --quick" if args.quick else "")
    for flag in ("repeat", "rows", "stages"):
        if getattr(args, flag):
            cmd += f" --{flag} {getattr(args, flag)}"
    body = "## Scale-out costs: per GB, per stage, per request (bench/bench_scale.py)\n\n"
    body += f"Re-run: `{cmd}` · {machine()} (load at the start: {load_start:.2f})\n\n"
    body += (
        f"Medians of {repeat} runs; *load* is the 1-minute load average after each run "
        "(min–max). docs/scaling.md extrapolates from these figures. MB = 10^6 bytes.\n\n"
        "**Bytes** (one process; the Store writes into a fresh directory each time; for "
        "tables, MB are Parquet bytes, the size at rest and in the object store; CPU s counts "
        "every thread of the process, Polars uses both cores for part of the work):\n\n"
    )
    body += table(
        ["operation", "data", "wall s", "CPU s", "MB/s", "MB per CPU-s", "load"], bytes_rows
    )
    body += (
        f"\n\n**Per stage: run records and object store** ({n} trivial independent stages, "
        "local executor, 1 worker, whole `ductwork run --json` processes). *First run*: stages "
        "no run has seen (every one runs: fingerprint, cache miss, why it is stale, stage lock, "
        "execute, write and publish the output, record it); *--force*: the same project again, "
        "every stage runs; both are first `stage_started` → last `stage_finished` / N. "
        "*Cached*: a no-change re-run (fingerprint, cache lookup, record), first → last "
        "`stage_finished` / (N − 1), leaving out the run's one-time start (mostly the lazy "
        "`import polars`).\n\n"
    )
    body += table(
        ["records, store", "first run ms/stage", "--force ms/stage", "cached ms/stage",
         "first run process s", "cached process s", "load"],
        rec_rows,
    )  # fmt: skip
    if stmts:
        body += (
            "\n\nPostgreSQL statements per stage sent by ductwork (pg_stat_statements, "
            "top-level, BEGIN/COMMIT included; each is one round trip): "
            f"{stmts.get('first', 0):.1f} on a first run, {stmts.get('force', 0):.1f} with "
            f"`--force`, {stmts.get('cached', 0):.1f} cached (run-level statements such as "
            "opening the run, spread over the stages). On loopback each costs well under 1 ms; "
            "across a network each costs a round trip.\n"
        )
    if obj_rows:
        body += (
            "\n**Object store requests** (ductwork's RemoteStore against moto on 127.0.0.1, one "
            "request at a time; moto is a Python server keeping objects in memory, so these are "
            "its costs plus the client's, without any network latency):\n\n"
        )
        body += table(["operation", "objects", "per object / rate", "note", "load"], obj_rows)
    body += (
        f"\n\n**The driver at {max(sizes):,} stages** (N trivial independent stages, "
        "`--force`). *per stage* = first `stage_started` → last `stage_finished` / N; *after "
        "the first* = first → last `stage_finished` / (N − 1), the steady rate once the "
        "executor is up; *first* = the first stage's hand-off → its result. "
        f"Loading and checking the {max(sizes):,}-stage pipeline file (`dw.load`): "
        f"{load_s:.2f} s."
    )
    if ray_start is not None:
        body += f" The Ray cluster (`ray start`, {ray_start:.1f} s) was started before timing."
    body += "\n\n"
    body += table(
        ["executor", "stages", "per stage ms", "after the first ms", "first s", "process s",
         "runs", "load"],
        drv_rows,
    )  # fmt: skip
    print(body)
    if not args.no_write:
        write_section("scale", body)


if __name__ == "__main__":
    main()
