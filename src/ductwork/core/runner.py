"""The runner: walks the DAG, reuses cached stages, hands the rest to an executor, records all.

For each stage whose inputs are ready it computes the fingerprint (kind, version, params
without secrets, input content hashes, source and code stamps). A selected stage with a cache
entry is reused ("cached"); otherwise it is submitted to the executor. Stages outside the
selection (``--only``/``--from``/``--to``) are never executed: their cached or latest saved
artifacts are used ("saved"). A failed stage stops its descendants only; independent branches
go on, so every artifact that can be made is kept for the next run to resume from.
"""

from __future__ import annotations

import graphlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from ductwork.core.contract import ArtifactInfo, StageContext, StageKind
from ductwork.core.events import (
    SCHEMA,
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageProgress,
    StageStarted,
)
from ductwork.core.execute import StageResult, StageTask, preview_stage
from ductwork.core.executors import Executor, make_executor
from ductwork.core.fingerprint import Fingerprint, diff_components, stage_fingerprint
from ductwork.core.graph import Pipeline, StageNode
from ductwork.core.locks import POLL_S, NoStageLocks, StageLocks
from ductwork.core.records import Records
from ductwork.core.store import CacheEntry, Store
from ductwork.errors import DuctworkError, UsageError

EmitFn = Callable[[Event], None]


@dataclass(frozen=True)
class RunOptions:
    only: Sequence[str] = ()
    from_: Sequence[str] = ()
    to: Sequence[str] = ()
    force: bool = False
    dry_run: bool = False
    executor: str | None = None
    workers: int | None = None
    pool: str | None = None
    address: str | None = None  # executor: ray — the cluster (else the pipeline's executor.address)


@dataclass
class StageOutcome:
    stage: str
    kind: str
    status: str
    fingerprint: str | None = None
    outputs: dict[str, ArtifactInfo] = field(default_factory=dict)
    duration_s: float = 0.0
    rows_in: int | None = None
    rows_out: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    error: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None  # dry runs: what the stage would do (prompts, cost)

    def summary(self) -> dict[str, Any]:
        extra = {"preview": self.preview} if self.preview is not None else {}
        return {
            "stage": self.stage,
            "kind": self.kind,
            "status": self.status,
            "fingerprint": self.fingerprint,
            "duration_s": round(self.duration_s, 4),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "outputs": {k: _out(v) for k, v in self.outputs.items()},
            "metrics": self.metrics,
            "reason": self.reason,
            "error": _public_error(self.error),
        } | extra


@dataclass
class RunResult:
    run_id: str
    pipeline: str
    status: str
    exit_code: int
    duration_s: float
    stages: dict[str, StageOutcome]
    error: dict[str, Any] | None = None

    def outputs(self, stage: str) -> dict[str, ArtifactInfo]:
        return self.stages[stage].outputs


USAGE_METRICS = (
    "llm_requests",
    "llm_cache_hits",
    "llm_input_tokens",
    "llm_output_tokens",
    "llm_cost_usd",
)


def _usage(outcomes: Iterable[StageOutcome]) -> dict[str, float]:
    """What this run spent (stages that ran; cached stages spent nothing now): LLM calls, tokens."""
    total: dict[str, float] = {}
    for o in outcomes:
        if o.status not in ("ok", "failed"):
            continue
        for name in USAGE_METRICS:
            value = o.metrics.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[name] = total.get(name, 0) + value
    if "llm_cost_usd" in total:
        total["llm_cost_usd"] = round(total["llm_cost_usd"], 6)
    return total


def _has_preview(kind_cls: type[StageKind[Any]]) -> bool:
    return kind_cls.preview is not StageKind.preview


def _out(info: ArtifactInfo) -> dict[str, Any]:
    return {"sha256": info.sha256, "type": info.type, "rows": info.rows, "bytes": info.bytes}


def _public_error(err: dict[str, Any] | None) -> dict[str, Any] | None:
    if err is None:
        return None
    return {k: err.get(k) for k in ("type", "message", "hint", "exit_code")}


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class Runner:
    """Runs one pipeline against one store and one records database."""

    def __init__(
        self, pipeline: Pipeline, store: Store, records: Records, emit: EmitFn | None = None
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.records = records
        self._emit_fn = emit
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}
        self._outcomes: dict[str, StageOutcome] = {}
        self._pending_cache: dict[str, dict[str, Any] | None] = {}
        self._locks: StageLocks = NoStageLocks()  # per fingerprint, shared with other runners
        self._parked: dict[str, tuple[Fingerprint, bool]] = {}  # waiting for another runner

    def emit(self, event: Event) -> None:
        if self._emit_fn is not None:
            with self._lock:
                self._emit_fn(event)

    # -- fingerprints ---------------------------------------------------------------------
    def fingerprint(
        self, node: StageNode, inputs: dict[str, ArtifactInfo]
    ) -> tuple[Fingerprint, bool]:
        """The stage fingerprint and whether its source can be known (False = always run)."""
        kind = node.kind_cls()
        ctx = StageContext(
            stage=node.name,
            run_id="plan",
            project_dir=self.pipeline.project_dir,
            work_dir=self.store.tmp,
            allow_outside_project=self.pipeline.allow_outside_project,
            store_dir=self.store.root,
            pipeline=self.pipeline.name,
            input_infos=inputs,
        )
        source = kind.source_stamp(node.params, ctx)
        code = kind.code_stamp(node.params)
        fp = stage_fingerprint(
            kind=node.kind,
            kind_version=node.kind_cls.version,
            params=node.params,
            inputs={name: info.sha256 for name, info in inputs.items()},
            source=source or "",
            code=code,
            expect=node.expect,
        )
        return fp, source is not None

    def why_stale(self, node: StageNode, fp: Fingerprint) -> str:
        last = self.records.last_stage_run(
            node.name, self.pipeline.name, ("ok", "cached", "failed")
        )
        if last is None or not last.get("components"):
            return "never run"
        import json

        reasons = diff_components(json.loads(last["components"]), fp.components)
        if not reasons:
            if last["status"] == "failed":
                return "failed last time"
            return "outputs missing from the store"
        return ", ".join(reasons)

    # -- the run ----------------------------------------------------------------------------
    def run(self, options: RunOptions) -> RunResult:
        p = self.pipeline
        selected = p.select(only=options.only, from_=options.from_, to=options.to)
        if not selected:
            msg = "the selection matches no stage"
            raise UsageError(msg, hint="Check --only/--from/--to against `ductwork plan`.")
        needed = self._needed(selected)
        run_id = new_run_id()
        started = time.time()
        self._outcomes = {}
        self._reasons = {}
        exec_kind = options.executor or p.executor.kind
        workers = options.workers if options.workers is not None else p.executor.workers
        pool = options.pool or p.executor.pool
        executor = (
            None
            if options.dry_run
            else make_executor(
                exec_kind,
                workers,
                pool,
                address=options.address or p.executor.address,
                store_root=self.store.url or str(self.store.root),  # workers reach a URL
                local_root=str(self.store.root),
            )
        )
        if not options.dry_run:
            self.records.mark_interrupted()
            self.records.start_run(
                run_id,
                p.name,
                str(p.spec_path) if p.spec_path else None,
                {
                    "only": list(options.only),
                    "from": list(options.from_),
                    "to": list(options.to),
                    "force": options.force,
                    "executor": exec_kind,
                    "workers": workers,
                    "pid": os.getpid(),
                    "argv": sys.argv[1:],
                },
            )
        self.emit(
            RunStarted(
                run_id=run_id,
                pipeline=p.name,
                stages=[s for s in p.order if s in needed],
                selected=[s for s in p.order if s in selected],
                executor=f"{exec_kind}/{executor.name if executor else 'none'}",
                workers=executor.workers if executor else 0,
                dry_run=options.dry_run,
                inputs={
                    s: [str(r) for r in p.stages[s].inputs.values()] for s in p.order if s in needed
                },
            )
        )
        self._parked = {}
        self._locks = self.records.stage_locks() if executor else NoStageLocks()
        try:
            if executor is None:
                self._walk(run_id, selected, options, executor)
            else:  # Prefect wraps the walk in a flow; the others just call it
                executor.run_walk(
                    p.name, run_id, lambda: self._walk(run_id, selected, options, executor)
                )
        except BaseException as exc:
            if executor is not None:
                executor.shutdown(cancel=True)
            if not options.dry_run:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                self.records.finish_run(run_id, status, {"error": str(exc)})
            raise
        finally:
            self._locks.close()
        if executor is not None:
            executor.shutdown()
        return self._finish(run_id, started, options)

    def _walk(
        self,
        run_id: str,
        selected: set[str],
        options: RunOptions,
        executor: Executor | None,
    ) -> None:
        p = self.pipeline
        decl = {n: i for i, n in enumerate(p.stages)}
        needed = self._needed(selected)
        deps = {n: d for n, d in p.dependencies().items() if n in needed}
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(deps)
        sorter.prepare()
        in_flight: dict[
            Future[StageResult], tuple[StageNode, Fingerprint, dict[str, ArtifactInfo]]
        ] = {}
        while sorter.is_active():
            for name in sorted(sorter.get_ready(), key=decl.__getitem__) + self._unparked():
                node = p.stages[name]
                submitted = self._start_stage(run_id, node, name in selected, options, executor)
                if submitted is None:
                    if name not in self._parked:  # parked: another runner computes it now
                        sorter.done(name)
                else:
                    in_flight[submitted[0]] = (node, submitted[1], submitted[2])
            if not in_flight:
                if self._parked:
                    time.sleep(POLL_S)
                continue
            timeout = POLL_S if self._parked else None
            done, _ = wait(list(in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
            for fut in done:
                node, fp, inputs = in_flight.pop(fut)
                self._finish_stage(run_id, node, fp, inputs, fut.result())
                sorter.done(node.name)

    def _unparked(self) -> list[str]:
        """Waiting stages whose lock came free: the other runner finished (or died)."""
        return [name for name, (fp, _) in self._parked.items() if self._locks.acquire(fp.digest)]

    def _needed(self, selected: set[str]) -> set[str]:
        """The selected stages and everything upstream of them (whose artifacts they read)."""
        return set(selected) | self.pipeline.upstream_of(selected)

    def _inputs_of(self, node: StageNode) -> dict[str, ArtifactInfo] | str:
        """Input artifacts of a stage, or the reason it cannot run."""
        outcomes = self._outcomes
        for name in node.after:
            if outcomes[name].status in ("failed", "skipped"):
                return f"stage '{name}' (after) {outcomes[name].status}"
        inputs: dict[str, ArtifactInfo] = {}
        for local, ref in node.inputs.items():
            up = outcomes[ref.stage]
            if up.status in ("failed", "skipped"):
                return f"upstream stage '{ref.stage}' {up.status}"
            if up.status in ("stale", "planned") and not up.outputs:
                return f"upstream stage '{ref.stage}' will run"
            upstream_node = self.pipeline.stages[ref.stage]
            out = ref.output or upstream_node.main_output
            inputs[local] = up.outputs[out]
        return inputs

    def _start_stage(
        self,
        run_id: str,
        node: StageNode,
        is_selected: bool,
        options: RunOptions,
        executor: Executor | None,
    ) -> tuple[Future[StageResult], Fingerprint, dict[str, ArtifactInfo]] | None:
        inputs = self._inputs_of(node)
        if isinstance(inputs, str):
            status = "stale" if options.dry_run and "will run" in inputs else "skipped"
            outcome = StageOutcome(node.name, node.kind, status, reason=inputs)
            self._conclude(run_id, outcome, None, {}, options)
            return None
        parked = self._parked.pop(node.name, None)  # back from waiting: fingerprint known
        try:
            fp, knowable = parked or self.fingerprint(node, inputs)
        except Exception as exc:  # a source that cannot be stamped (missing file, ...)
            from ductwork.core.execute import _error_dict

            err = _error_dict(exc, node.name)
            outcome = StageOutcome(node.name, node.kind, "failed", error=err, reason="fingerprint")
            self._conclude(run_id, outcome, None, inputs, options)
            return None
        entry = self._cache_get(fp.digest) if node.cache else None
        if not is_selected:
            if entry is None:
                entry = self._saved(node)
            if entry is None:
                msg = f"stage '{node.name}' is outside the selection and has no saved artifacts"
                raise UsageError(msg, hint=f"Run it first: ductwork run --to {node.name}")
            reason = "not selected: using saved artifacts"
            if entry.fingerprint != fp.digest:
                reason += f" from run {entry.run_id} (stale: {self.why_stale(node, fp)})"
            outcome = self._from_entry(node, entry, "saved", reason)
            self._conclude(run_id, outcome, fp, inputs, options)
            return None
        use_cache = node.cache and knowable and not options.force
        if use_cache and entry is not None:
            by = f"computed by another runner (run {entry.run_id})" if parked else "unchanged"
            outcome = self._from_entry(node, entry, "cached", by)
            self._conclude(run_id, outcome, fp, inputs, options)
            return None
        if options.force:
            reason = "--force"
        elif not node.cache:
            reason = "cache: false"
        elif not knowable:
            reason = "source cannot be fingerprinted: always runs"
        else:
            reason = self.why_stale(node, fp)
        task = StageTask(
            run_id=run_id,
            stage=node.name,
            kind=node.kind,
            kind_path=node.kind_path,
            params=node.params,
            inputs=inputs,
            outputs=node.outputs,
            expect=node.expect,
            fingerprint=fp.digest,
            store_root=str(self.store.root),
            store_url=self.store.url,
            project_dir=str(self.pipeline.project_dir),
            allow_outside_project=self.pipeline.allow_outside_project,
            kind_cls=node.kind_cls,
            pipeline=self.pipeline.name,
            resources=node.resources,
            retries=node.retries,
            retry_delay=node.retry_delay,
        )
        if options.dry_run or executor is None:
            outcome = StageOutcome(
                node.name, node.kind, "stale", fingerprint=fp.digest, reason=reason
            )
            if options.dry_run and _has_preview(node.kind_cls):
                outcome.preview = preview_stage(task)
            self._conclude(run_id, outcome, fp, inputs, options)
            return None
        if not self._locks.acquire(fp.digest):  # another runner computes this fingerprint
            self._parked[node.name] = (fp, knowable)
            if parked is None:
                wait_note = f"waiting for another runner computing {fp.digest[:12]}"
                self.emit(StageProgress(run_id, node.name, done=0, total=None, unit=wait_note))
            return None
        if use_cache and not parked and (entry := self._cache_get(fp.digest)) is not None:
            # recorded by another runner between the cache read above and taking the lock
            by = f"computed by another runner (run {entry.run_id})"
            self._conclude(run_id, self._from_entry(node, entry, "cached", by), fp, inputs, options)
            return None
        self.emit(
            StageStarted(
                run_id=run_id, stage=node.name, kind=node.kind, fingerprint=fp.digest, reason=reason
            )
        )
        last = [0.0]

        def progress(done: float, total: float | None, unit: str) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.1 or (total is not None and done >= total):
                last[0] = now
                self.emit(
                    StageProgress(run_id=run_id, stage=node.name, done=done, total=total, unit=unit)
                )

        try:
            fut = executor.submit(task, progress)
        except DuctworkError as exc:
            from ductwork.core.execute import _error_dict

            outcome = StageOutcome(
                node.name,
                node.kind,
                "failed",
                fingerprint=fp.digest,
                error=_error_dict(exc, node.name),
            )
            self._conclude(run_id, outcome, fp, inputs, options)
            return None
        self._reasons[node.name] = reason
        return fut, fp, inputs

    def _cache_get(self, fingerprint: str) -> CacheEntry | None:
        raw = self.records.cache_get(fingerprint)
        return self.store.entry_from_dict(raw) if raw else None

    def _saved(self, node: StageNode) -> CacheEntry | None:
        last = self.records.last_stage_run(node.name, self.pipeline.name)
        if last is None or not last.get("fingerprint"):
            return None
        return self._cache_get(last["fingerprint"])

    def _from_entry(
        self, node: StageNode, entry: CacheEntry, status: str, reason: str
    ) -> StageOutcome:
        return StageOutcome(
            stage=node.name,
            kind=node.kind,
            status=status,
            fingerprint=entry.fingerprint,
            outputs=dict(entry.outputs),
            duration_s=0.0,
            rows_in=entry.rows_in,
            rows_out=entry.rows_out,
            metrics=entry.metrics,
            reason=reason,
        )

    def _finish_stage(
        self,
        run_id: str,
        node: StageNode,
        fp: Fingerprint,
        inputs: dict[str, ArtifactInfo],
        res: StageResult,
    ) -> None:
        reason = self._reasons.pop(node.name, "")
        if res.ok:
            outcome = StageOutcome(
                stage=node.name,
                kind=node.kind,
                status="ok",
                fingerprint=fp.digest,
                outputs=res.outputs,
                duration_s=res.ended - res.started,
                rows_in=res.rows_in,
                rows_out=res.rows_out,
                metrics=res.metrics,
                reason=reason,
            )
            self._pending_cache[node.name] = (
                CacheEntry(
                    fingerprint=fp.digest,
                    stage=node.name,
                    kind=node.kind,
                    run_id=run_id,
                    outputs=res.outputs,
                    components=fp.components,
                    metrics=res.metrics,
                    rows_in=res.rows_in,
                    rows_out=res.rows_out,
                    duration_s=outcome.duration_s,
                    created=time.time(),
                ).to_dict()
                if node.cache
                else None
            )
        else:
            outcome = StageOutcome(
                stage=node.name,
                kind=node.kind,
                status="failed",
                fingerprint=fp.digest,
                duration_s=res.ended - res.started,
                rows_in=res.rows_in,
                metrics=res.metrics,
                reason=reason,
                error=res.error,
            )
        self._conclude(
            run_id, outcome, fp, inputs, RunOptions(), started=res.started, ended=res.ended
        )

    def _conclude(
        self,
        run_id: str,
        outcome: StageOutcome,
        fp: Fingerprint | None,
        inputs: dict[str, ArtifactInfo],
        options: RunOptions,
        *,
        started: float | None = None,
        ended: float | None = None,
    ) -> None:
        self._outcomes[outcome.stage] = outcome
        cache_entry = self._pending_cache.pop(outcome.stage, None)
        if not options.dry_run:
            now = time.time()
            self.records.record_stage(
                run_id=run_id,
                stage=outcome.stage,
                kind=outcome.kind,
                status=outcome.status,
                fingerprint=fp.digest if fp else None,
                components=fp.components if fp else None,
                started=started if started is not None else now,
                ended=ended if ended is not None else now,
                rows_in=outcome.rows_in,
                rows_out=outcome.rows_out,
                metrics=outcome.metrics,
                error=(outcome.error or {}).get("message") if outcome.error else None,
                inputs={k: v.to_dict() for k, v in inputs.items()},
                outputs={k: v.to_dict() for k, v in outcome.outputs.items()},
                cache_entry=cache_entry,
            )
            if fp is not None:
                self._locks.release(fp.digest)  # recorded: a waiting runner finds it cached
        self.emit(
            StageFinished(
                run_id=run_id,
                stage=outcome.stage,
                kind=outcome.kind,
                status=outcome.status,  # type: ignore[arg-type]
                fingerprint=outcome.fingerprint,
                duration_s=round(outcome.duration_s, 4),
                rows_in=outcome.rows_in,
                rows_out=outcome.rows_out,
                outputs={k: _out(v) for k, v in outcome.outputs.items()},
                metrics=outcome.metrics,
                reason=outcome.reason,
                error=_public_error(outcome.error),
                preview=outcome.preview,
            )
        )

    def _finish(self, run_id: str, started: float, options: RunOptions) -> RunResult:
        outcomes = self._outcomes
        ordered = {n: outcomes[n] for n in self.pipeline.order if n in outcomes}
        failed = [o for o in ordered.values() if o.status == "failed"]
        error = failed[0].error if failed else None
        exit_code = int(error.get("exit_code", 1)) if error else 0
        status = "failed" if failed else ("planned" if options.dry_run else "ok")
        counts: dict[str, int] = {}
        for o in ordered.values():
            counts[o.status] = counts.get(o.status, 0) + 1
        duration = time.time() - started
        resume = None
        if failed:
            spec = self.pipeline.spec_path.name if self.pipeline.spec_path else "pipeline.yaml"
            resume = f"ductwork run {spec}"
        summary = RunFinished(
            schema=SCHEMA,
            run_id=run_id,
            pipeline=self.pipeline.name,
            status=status,  # type: ignore[arg-type]
            exit_code=exit_code,
            duration_s=round(duration, 4),
            counts=counts,
            stages=[o.summary() for o in ordered.values()],
            error=_public_error(error) if error else None,
            resume=resume,
            usage=_usage(ordered.values()),
        )
        if not options.dry_run:
            self.records.finish_run(run_id, status, {"counts": counts, "exit_code": exit_code})
        self.emit(summary)
        return RunResult(
            run_id=run_id,
            pipeline=self.pipeline.name,
            status=status,
            exit_code=exit_code,
            duration_s=duration,
            stages=ordered,
            error=error,
        )
