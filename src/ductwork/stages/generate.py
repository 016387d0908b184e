"""The ``generate`` stage kind: one structured LLM answer per row, validated, cached, budgeted.

A table input gives one request per row (the row's fields are the prompt template's
variables); a json or text input gives ONE request whose content is the variable ``input``.
The answer's structure is declared in ``answer:`` (:mod:`ductwork.ai.schema`): the model is
asked for exactly that (Anthropic: a forced tool call; OpenAI-compatible: a JSON-schema
response format) and every answer is validated against it. An invalid answer is re-asked
with the validation error (``repairs`` times); one still invalid, or one whose request kept
failing, goes to ``quarantine`` with the error. **rows in = validated + quarantined**, an
invariant checked after every run.

Every reply is kept in the response cache under the store (``llm/cache.sqlite``) the moment
it arrives, keyed by everything that decides the answer: a re-run, a run resumed after a
failure or a budget stop, or a run whose other params changed (concurrency, budget) sends
nothing that was answered before. So ``llm_validated`` is a function of the inputs and the
params: the same rows give the same bytes, and stages downstream are reused.

The stage's fingerprint is its params (the template text, the ``prompt_file``'s content as the
source stamp, the answer spec, provider, model, base URL) — never an API key: keys are read
from the environment variable named by ``api_key_env`` when the first request is sent (a fully
cached run needs none).

This module imports neither jinja2 nor an HTTP client: ``run`` and ``preview`` import the ai
layer, so ``ductwork kinds`` and ``ductwork check`` work without the ``ai`` extra.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ductwork.core.contract import (
    ArtifactInfo,
    InputArtifact,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, SourceError, StageFailed, did_you_mean

if TYPE_CHECKING:
    import polars as pl

    from ductwork.ai.enrich import EnrichResult, Job, RowResult
    from ductwork.ai.schema import AnswerSpec

ROW = "_row"
META = ("_model", "_input_tokens", "_output_tokens")
QUARANTINE_META = ("_error", "_raw_text", "_attempts")
PREVIEW_ROWS = 3
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
_STRUCTURED = {
    "anthropic": ("auto", "tool", "prompt"),
    "openai": ("auto", "json_schema", "json_object", "json_object_schema", "prompt"),
}


class BudgetParams(StageParams):
    max_tokens: int | None = Field(
        default=None, gt=0, description="Input + output tokens this run may spend."
    )
    max_cost_usd: float | None = Field(
        default=None, gt=0, description="Dollars this run may spend (needs a known price)."
    )


class PriceParams(StageParams):
    input_per_mtok: float = Field(ge=0, description="USD per million input tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per million output tokens.")


class ContextParams(StageParams):
    index: str = Field(min_length=1, description="The input holding an index stage's output.")
    k: int = Field(default=3, ge=1, le=100, description="Hits per row.")
    query: str = Field(min_length=1, description="jinja2 template over the row: the search text.")


class GenerateParams(StageParams):
    provider: Literal["anthropic", "openai"] = Field(
        default="anthropic", description="anthropic, or openai (any OpenAI-compatible server)."
    )
    model: str = Field(min_length=1, description="The model name the provider knows.")
    base_url: str | None = Field(default=None, description="The server (default: the provider's).")
    api_key_env: str | None = Field(
        default=None,
        description="The NAME of the env var holding the key (default ANTHROPIC_API_KEY / "
        "OPENAI_API_KEY).",
    )
    structured: Literal[
        "auto", "tool", "json_schema", "json_object", "json_object_schema", "prompt"
    ] = Field(
        default="auto",
        description="How the answer's structure is asked for (auto: the provider's best).",
    )
    system: str | None = Field(default=None, description="The system prompt (a template).")
    prompt: str | None = Field(default=None, description="The user prompt: a jinja2 template.")
    prompt_file: str | None = Field(
        default=None, description="A template file in the project, instead of `prompt`."
    )
    answer: dict[str, Any] = Field(description="The structured answer: field -> spec.")
    key: str | None = Field(
        default=None, description="A unique column identifying rows (default: the row number)."
    )
    keep: list[str] | None = Field(
        default=None, description="Input columns copied to the outputs (default: all)."
    )
    max_tokens: int = Field(default=512, ge=1, description="Output tokens per answer.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    concurrency: int = Field(default=8, ge=1, le=512, description="Requests in flight.")
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_retries: int = Field(
        default=5, ge=0, le=20, description="HTTP retries (429, 5xx, overloaded, timeouts)."
    )
    retry_delay_s: float = Field(
        default=1.0, ge=0, le=600, description="Base delay of the exponential backoff."
    )
    repairs: int = Field(
        default=1, ge=0, le=5, description="Re-asks with the validation error per row."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per HTTP request.")
    budget: BudgetParams = Field(default_factory=BudgetParams)
    on_budget: Literal["fail", "keep"] = Field(
        default="fail", description="When the budget stops the run: fail, or keep what was done."
    )
    price: PriceParams | None = Field(
        default=None, description="USD per million tokens (default: the known-models table)."
    )
    cache: bool = Field(default=True, description="Use the response cache under the store.")
    max_error_share: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Fail the stage when more than this share of the rows end in an HTTP error "
        "after retries (they are quarantined otherwise); every row failing always fails it.",
    )
    context: ContextParams | None = Field(
        default=None, description="Retrieval: top-k hits of an index as `context`."
    )

    @field_validator("answer")
    @classmethod
    def _answer_spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        from ductwork.ai.schema import parse_answer_spec

        parse_answer_spec(value)  # AnswerSpecError (a ValueError) names the field
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and (not _ENV_NAME.match(value) or len(value) > 100):
            # never echo the value: it may be a pasted key
            msg = (
                "must be the NAME of an environment variable (letters, digits, '_'), such as "
                "ANTHROPIC_API_KEY, not the key itself"
            )
            raise ValueError(msg)
        return value

    @field_validator("keep")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            seen: set[str] = set()
            for column in value:
                if column in seen:
                    msg = f"keep column '{column}' is listed twice"
                    raise ValueError(msg)
                seen.add(column)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GenerateParams:
        modes = _STRUCTURED[self.provider]
        if self.structured not in modes:
            msg = (
                f"structured: {self.structured} is not available with provider {self.provider}; "
                f"use one of {', '.join(modes)}"
            )
            raise ValueError(msg)
        if (self.prompt is None) == (self.prompt_file is None):
            msg = "set exactly one of prompt (a template) and prompt_file (a template file)"
            raise ValueError(msg)
        templates = {"prompt": self.prompt, "system": self.system}
        if self.context is not None:
            templates["context.query"] = self.context.query
        problem = _syntax_problem(templates)
        if problem:
            raise ValueError(problem)
        if self.budget.max_cost_usd is not None and self.price is None:
            from ductwork.ai.cost import known_price

            if known_price(self.model) is None:
                msg = (
                    f"budget.max_cost_usd needs a price, and model '{self.model}' is not in the "
                    "table of known prices: set price: {input_per_mtok: ..., output_per_mtok: ...}"
                    " or use budget.max_tokens"
                )
                raise ValueError(msg)
        return self

    def provider_config(self) -> Any:
        from ductwork.ai.llm import ProviderConfig

        return ProviderConfig(
            provider=self.provider,
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            structured=self.structured,
        )


def _syntax_problem(templates: Mapping[str, str | None]) -> str | None:
    """A template syntax error at ``check`` time; skipped when jinja2 is not installed."""
    try:
        from ductwork.ai.prompts import compile_check
    except ImportError:
        return None
    for name, source in templates.items():
        if source is not None:
            problem = compile_check(source, name)
            if problem:
                return problem
    return None


@dataclass
class _Prepared:
    """Everything a run or a preview needs, made without a call."""

    spec: AnswerSpec
    jobs: list[Job]
    keys: list[Any]
    frame: pl.DataFrame | None  # the table input (None for a json / text input)
    key_column: str
    keep: list[str]
    data_name: str


class Generate(StageKind[GenerateParams]):
    """One structured LLM answer per row: validated, cached, retried, repaired and budgeted."""

    name = "generate"
    version = "1"
    Params = GenerateParams
    summary = "LLM answers per row with a declared structure (validated, cached, budgeted)"
    min_inputs = 1
    max_inputs = 2
    outputs: ClassVar[dict[str, Output]] = {
        "llm_validated": Output(
            "table", description="key + kept columns + the answer fields, typed as declared"
        ),
        "llm_raw": Output(
            "text", description="JSONL: every HTTP exchange and cache hit, as sent and received"
        ),
        "quarantine": Output(
            "table", description="rows without a valid answer: key + kept + _error, _raw_text"
        ),
        "usage": Output("json", description="requests, cache hits, retries, tokens, cost, rows"),
    }

    # -- fingerprint ------------------------------------------------------------------------
    def source_stamp(self, params: GenerateParams, ctx: StageContext) -> str | None:
        """The prompt file's content (the LLM is not external data: the cache pins it)."""
        if params.prompt_file is None:
            return ""
        path = ctx.resolve_path(params.prompt_file, what="prompt_file")
        if not path.is_file():
            msg = f"stage '{ctx.stage}': prompt_file '{params.prompt_file}' does not exist"
            raise DataError(msg, hint=f"Looked for {path}")
        return hashlib.sha256(path.read_bytes()).hexdigest()

    # -- run --------------------------------------------------------------------------------
    def run(self, params: GenerateParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.ai import require_ai

        require_ai("the generate stage", module="jinja2")
        require_ai(
            f"the generate stage (provider {params.provider})",
            module="anthropic" if params.provider == "anthropic" else "httpx",
        )
        from ductwork.ai.cache import ResponseCache
        from ductwork.ai.cost import resolve_price
        from ductwork.ai.enrich import (
            Budget,
            FatalLLMError,
            Settings,
            enrich,
            run_coroutine,
            validate_reply,
        )

        prep = _prepare(params, inputs, ctx)  # every input and template error before a call
        from ductwork.ai.limits import RateLimiter, RetryPolicy
        from ductwork.ai.providers import make_provider

        model = prep.spec.model()
        price = resolve_price(params.model, params.price)
        budget = Budget(
            max_tokens=params.budget.max_tokens,
            max_cost_usd=params.budget.max_cost_usd,
            price=price,
        )
        limiter = (
            RateLimiter(params.requests_per_minute, params.tokens_per_minute)
            if params.requests_per_minute is not None or params.tokens_per_minute is not None
            else None
        )
        settings = Settings(
            provider=params.provider,
            model=params.model,
            base_url=params.base_url,
            concurrency=params.concurrency,
            repairs=params.repairs,
            policy=RetryPolicy(
                max_retries=params.max_retries,
                base_delay_s=params.retry_delay_s,
                max_delay_s=max(params.retry_delay_s * 32, 30.0),
            ),
            limiter=limiter,
        )
        config = params.provider_config()
        cache = ResponseCache.in_store(ctx.store_root) if params.cache else None
        total = len(prep.jobs)
        ctx.progress(0, total, "rows")
        try:
            result: EnrichResult = run_coroutine(
                enrich(
                    prep.jobs,
                    settings,
                    provider_factory=lambda: make_provider(config),
                    validate=lambda reply: validate_reply(
                        reply, lambda data: prep.spec.validate(model, data)
                    ),
                    cache=cache,
                    budget=budget,
                    on_done=lambda done, n: ctx.progress(done, n, "rows"),
                )
            )
        except FatalLLMError as exc:
            msg = (
                f"stage '{ctx.stage}': the {params.provider} API refused the request for row "
                f"{exc.key!r}: {exc.error.message}"
            )
            env = params.api_key_env or _DEFAULT_KEY_ENV[params.provider]
            hint = (
                f"Check the key in ${env} and the model name '{params.model}'"
                + (f" at {params.base_url}" if params.base_url else "")
                + "; answers received before the error are in the response cache."
            )
            raise SourceError(msg, hint=hint) from None
        finally:
            if cache is not None:
                cache.close()
        return self._outputs(params, prep, result, price, ctx)

    def _outputs(
        self,
        params: GenerateParams,
        prep: _Prepared,
        result: EnrichResult,
        price: Any,
        ctx: StageContext,
    ) -> dict[str, Any]:
        rows = result.rows
        good = [r for r in rows if r.status == "validated"]
        bad = [r for r in rows if r.status != "validated"]
        not_sent = [r for r in rows if r.status == "not_sent"]
        stats, budget = result.stats, result.budget
        cost = price.cost(stats.input_tokens, stats.output_tokens) if price else None
        usage = {
            "provider": params.provider,
            "model": params.model,
            "requests": stats.requests,
            "calls": stats.calls,
            "cache_hits": stats.cache_hits,
            "retries": stats.retries,
            "repairs": stats.repairs,
            "http_errors": stats.http_errors,
            "input_tokens": stats.input_tokens,
            "output_tokens": stats.output_tokens,
            "cost_usd": cost,
            "price": price.to_dict() if price else None,
            "rows_in": len(rows),
            "rows_validated": len(good),
            "rows_quarantined": len(bad),
            "rows_not_sent": len(not_sent),
            "rows_cached": sum(1 for r in rows if r.cached and r.turns),
            "budget": {
                "max_tokens": params.budget.max_tokens,
                "max_cost_usd": params.budget.max_cost_usd,
            },
            "budget_spent_tokens": budget.spent_tokens,
            "budget_spent_usd": budget.spent_cost,
            "budget_stopped": budget.stopped,
            "budget_reason": budget.reason or None,
        }
        ctx.metric(
            llm_requests=stats.requests,
            llm_cache_hits=stats.cache_hits,
            llm_input_tokens=stats.input_tokens,
            llm_output_tokens=stats.output_tokens,
            llm_cost_usd=cost,
            rows_validated=len(good),
            rows_quarantined=len(bad),
        )
        if not_sent and params.on_budget == "fail":
            answered = len(rows) - len(not_sent)
            total_cost = budget.spent_cost
            spent = f"{budget.spent_tokens:,} tokens" + (
                f" (${total_cost:.4f})" if total_cost is not None else ""
            )
            msg = (
                f"the budget ({budget.reason}) is spent: the answers cost {spent}, "
                f"{stats.input_tokens + stats.output_tokens:,} tokens of it paid by "
                f"{stats.calls:,} requests in this run; {answered:,} of {len(rows):,} rows "
                f"answered, {len(not_sent):,} not sent"
            )
            hint = (
                "Every answer received is in the response cache: re-run with a higher budget "
                "and only the unanswered rows are sent (nothing is paid twice), or set "
                "on_budget: keep to publish the answered rows and quarantine the rest."
            )
            raise StageFailed(ctx.stage, msg, hint=hint)
        failed = [r for r in rows if r.status == "http_error"]
        sent = len(rows) - len(not_sent)
        if failed and (len(failed) == sent or len(failed) / len(rows) > params.max_error_share):
            last = failed[-1].error or "no reply"
            msg = (
                f"{len(failed):,} of {len(rows):,} rows got no answer from the {params.provider} "
                f"API after {params.max_retries} retries (e.g. row {failed[-1].key!r}: {last})"
            )
            hint = (
                "The provider is down or refusing requests; the rows answered are in the "
                "response cache, so a re-run (`ductwork run --only "
                f"{ctx.stage}`) sends only the others."
                + (" Raise max_error_share to keep partial results." if len(failed) < sent else "")
            )
            raise StageFailed(ctx.stage, msg, hint=hint)
        return {
            "llm_validated": _validated_frame(prep, good),
            "llm_raw": "".join(line + "\n" for line in result.raw),
            "quarantine": _quarantine_frame(prep, bad),
            "usage": usage,
        }

    # -- dry run ----------------------------------------------------------------------------
    def preview(self, params: GenerateParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        """What a run would send and may cost: rendered prompts, token estimates; no call."""
        from ductwork.ai import require_ai

        require_ai("the generate stage", module="jinja2")
        from ductwork.ai.cache import ResponseCache
        from ductwork.ai.cost import resolve_price
        from ductwork.ai.enrich import estimate_request_tokens

        prep = _prepare(params, inputs, ctx)
        estimates = [estimate_request_tokens(job.request) for job in prep.jobs]
        cached: set[str] = set()
        if params.cache:
            with ResponseCache.in_store(ctx.store_root, readonly=True) as cache:
                cached = cache.contains(_first_keys(params, prep.jobs))
        keys = _first_keys(params, prep.jobs)
        uncached = [i for i, k in enumerate(keys) if k not in cached]
        rows = len(prep.jobs)
        total_in = sum(estimates)
        to_send_in = sum(estimates[i] for i in uncached)
        max_out = rows * params.max_tokens
        price = resolve_price(params.model, params.price)
        cost: dict[str, float] | None = None
        if price is not None:
            cost = {
                "low": price.cost(to_send_in, 0),
                "high": price.cost(to_send_in, len(uncached) * params.max_tokens),
            }
        prompts = [
            {
                "key": _jsonable(job.key),
                "system": job.request.system,
                "prompt": job.request.prompt,
                "estimated_input_tokens": estimates[i],
            }
            for i, job in enumerate(prep.jobs[:PREVIEW_ROWS])
        ]
        lines = [f"generate '{ctx.stage}': {params.provider} {params.model}, {rows:,} rows"]
        for p in prompts:
            lines.append(f"--- row {p['key']!r} (~{p['estimated_input_tokens']:,} input tokens)")
            if p["system"]:
                lines.append(f"[system] {p['system']}")
            lines.append(f"[user] {p['prompt']}")
        if rows > PREVIEW_ROWS:
            lines.append(f"--- ... and {rows - PREVIEW_ROWS:,} more rows")
        lines.append(
            f"estimated input tokens: {total_in:,} (all rows); output at most {max_out:,} "
            f"({params.max_tokens:,} per row)"
        )
        lines.append(f"cached: {len(cached):,} of {rows:,} rows (sent again: none of them)")
        if cost is not None and price is not None:
            lines.append(
                f"estimated cost of the {len(uncached):,} uncached rows: "
                f"${cost['low']:.4f} - ${cost['high']:.4f} (price {price.source}: "
                f"${price.input_per_mtok:g} / ${price.output_per_mtok:g} per million tokens "
                "in / out; repairs and retries add to it)"
            )
        else:
            lines.append(
                f"estimated cost: unknown (model '{params.model}' has no known price; set price:)"
            )
        return {
            "text": "\n".join(lines),
            "rows": rows,
            "prompts": prompts,
            "estimated_input_tokens": total_in,
            "max_output_tokens": max_out,
            "estimated_cost_usd": cost,
            "cached_rows": len(cached),
        }

    # -- invariants -------------------------------------------------------------------------
    def check(
        self,
        params: GenerateParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        data = _data_input(params, inputs, ctx.stage)
        rows_in = data.rows if data.info.type == "table" else 1
        good, bad = outputs["llm_validated"].rows, outputs["quarantine"].rows
        if rows_in is None or good is None or bad is None:
            return []
        if good + bad != rows_in:
            return [
                f"complete: validated ({good}) + quarantined ({bad}) = {good + bad} rows, "
                f"but the input has {rows_in}"
            ]
        return []


# ----------------------------------------------------------------------------- preparation
def _data_input(params: GenerateParams, inputs: Inputs, stage: str) -> InputArtifact:
    names = list(inputs)
    if params.context is not None:
        if params.context.index not in inputs:
            msg = (
                f"stage '{stage}': context.index '{params.context.index}' is not an input"
                f"{did_you_mean(params.context.index, names)}"
            )
            raise DataError(msg, hint=f"Inputs: {', '.join(names)}")
        rest = [n for n in names if n != params.context.index]
    else:
        rest = names
    if len(rest) != 1:
        msg = (
            f"stage '{stage}': generate takes one data input"
            + (" and the index named by context.index" if params.context else "")
            + f", got {', '.join(names)}"
        )
        hint = (
            None
            if params.context
            else "A second input is for retrieval: set context: {index: <input>, query: ...}."
        )
        raise DataError(msg, hint=hint)
    return inputs[rest[0]]


def _template_source(params: GenerateParams, ctx: StageContext) -> tuple[str, str]:
    if params.prompt is not None:
        return params.prompt, "prompt"
    assert params.prompt_file is not None
    path = ctx.resolve_path(params.prompt_file, what="prompt_file")
    try:
        return path.read_text(encoding="utf-8"), params.prompt_file
    except OSError as exc:
        msg = f"stage '{ctx.stage}': cannot read prompt_file '{params.prompt_file}': {exc}"
        raise DataError(msg) from None


def _prepare(params: GenerateParams, inputs: Inputs, ctx: StageContext) -> _Prepared:
    from ductwork.ai.enrich import Job
    from ductwork.ai.llm import LLMRequest
    from ductwork.ai.prompts import PromptTemplate
    from ductwork.ai.schema import parse_answer_spec

    where = f"stage '{ctx.stage}': "
    spec = parse_answer_spec(params.answer)
    schema = spec.json_schema()
    source, template_name = _template_source(params, ctx)
    prompt = PromptTemplate(source, name=template_name, where=where)
    system = PromptTemplate(params.system, name="system", where=where) if params.system else None
    query = (
        PromptTemplate(params.context.query, name="context.query", where=where)
        if params.context
        else None
    )
    data = _data_input(params, inputs, ctx.stage)
    frame: pl.DataFrame | None = None
    if data.info.type == "table":
        frame = data.frame()
        columns = list(frame.columns)
        what = f"input '{data.name}'"
        variables: list[dict[str, Any]] = frame.to_dicts()
    elif data.info.type in ("json", "text"):
        columns = ["input"]
        what = f"the {data.info.type} input '{data.name}'"
        value = data.json() if data.info.type == "json" else data.text()
        variables = [{"input": value}]
    else:
        msg = f"{where}input '{data.name}' is a {data.info.type} artifact; generate reads a table, json or text"
        raise DataError(msg)
    if params.key is not None and frame is None:
        msg = f"{where}key '{params.key}' is for a table input; '{data.name}' is one {data.info.type} document"
        raise DataError(msg, hint="Remove key: (the one request's key is row 0).")

    # the key and the kept columns
    key_column = params.key or ROW
    keys = _row_keys(frame, params.key, where) if frame is not None else [0]
    keep = _kept_columns(params, columns if frame is not None else [], key_column, where)
    taken = [key_column, *keep, *META]
    for name in spec.names:
        if name in taken:
            msg = f"{where}answer field '{name}' has the name of an output column (a kept input column or {', '.join(META)})"
            hint = "Rename the answer field, or leave the column out of keep."
            raise DataError(msg, hint=hint)

    # templates against the columns, before anything is rendered
    available = [*columns, "context"] if params.context else columns
    prompt.check_variables(available, what=what)
    if system is not None:
        system.check_variables(available, what=what)
    if query is not None:
        query.check_variables(columns, what=what)
        contexts = _retrieve(params, inputs, ctx, query, variables, keys)
        for row, hits in zip(variables, contexts, strict=True):
            row["context"] = hits

    jobs: list[Job] = []
    for i, (row, key) in enumerate(zip(variables, keys, strict=True)):
        request = LLMRequest(
            prompt=prompt.render(row, row=key),
            system=system.render(row, row=key) if system is not None else None,
            schema=schema,
            schema_name="answer",
            max_tokens=params.max_tokens,
            temperature=params.temperature,
        )
        jobs.append(Job(index=i, key=key, request=request))
    return _Prepared(
        spec=spec,
        jobs=jobs,
        keys=keys,
        frame=frame,
        key_column=key_column,
        keep=keep,
        data_name=data.name,
    )


def _row_keys(frame: pl.DataFrame, key: str | None, where: str) -> list[Any]:
    import polars as pl

    if key is None:
        return list(range(frame.height))
    if key not in frame.columns:
        msg = f"{where}key column '{key}' not found in the input{did_you_mean(key, frame.columns)}"
        raise DataError(msg, hint=f"Columns: {', '.join(frame.columns)}")
    column = frame[key]
    nulls = column.null_count()
    if nulls:
        msg = f"{where}key column '{key}' has {nulls:,} null values; every row needs a key"
        raise DataError(msg, hint="Fill or drop them upstream, or leave key unset (row numbers).")
    dupes = (
        frame.group_by(key, maintain_order=True).agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    )
    if dupes.height:
        shown = ", ".join(f"{_jsonable(v)!r} ({n} rows)" for v, n in dupes.head(5).iter_rows())
        more = f" and {dupes.height - 5:,} more" if dupes.height > 5 else ""
        msg = f"{where}key column '{key}' is not unique: {shown}{more}"
        hint = "A key identifies one row (and its answer): pick a unique column, or leave key unset to use the row number."
        raise DataError(msg, hint=hint)
    return [_jsonable(v) for v in column.to_list()]


def _kept_columns(
    params: GenerateParams, columns: list[str], key_column: str, where: str
) -> list[str]:
    wanted = columns if params.keep is None else params.keep
    for column in wanted:
        if column not in columns:
            msg = f"{where}keep column '{column}' not found in the input{did_you_mean(column, columns)}"
            raise DataError(msg, hint=f"Columns: {', '.join(columns) or 'none'}")
    return [c for c in wanted if c != key_column]


def _retrieve(
    params: GenerateParams,
    inputs: Inputs,
    ctx: StageContext,
    query: Any,
    variables: list[dict[str, Any]],
    keys: list[Any],
) -> list[list[dict[str, Any]]]:
    """Top-k hits of the index for every row's query, as plain dicts for the template."""
    from ductwork.ai.vectors import search

    assert params.context is not None
    index = inputs[params.context.index]
    if index.info.type != "json":
        msg = (
            f"stage '{ctx.stage}': context.index '{index.name}' is a {index.info.type} artifact, "
            "not an index stage's output (a json manifest)"
        )
        raise DataError(msg)
    manifest = index.json()
    queries = [query.render(row, row=key) for row, key in zip(variables, keys, strict=True)]
    if not queries:
        return []
    found = search(
        manifest,
        queries,
        params.context.k,
        store_root=ctx.store_root,
        project_dir=ctx.project_dir,
    )
    out: list[list[dict[str, Any]]] = []
    for hits in found:
        rows = []
        for hit in hits:
            # payload fields at the top ({{ hit.text }}), and as they are ({{ hit.payload }})
            doc = {**hit.payload, "payload": dict(hit.payload)}
            doc["id"] = hit.id
            doc["score"] = hit.score
            rows.append(doc)
        out.append(rows)
    return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.loads(json.dumps(value, default=str))


def _first_keys(params: GenerateParams, jobs: list[Job]) -> list[str]:
    return [j.request.cache_key(params.provider, params.model, params.base_url) for j in jobs]


# ---------------------------------------------------------------------------------- outputs
def _base_frame(prep: _Prepared, results: list[RowResult]) -> pl.DataFrame:
    """The key and kept columns of the given rows, in input order, with the input's types."""
    import polars as pl

    indices = [r.index for r in results]
    if prep.frame is None:
        return pl.DataFrame({ROW: pl.Series(ROW, indices, dtype=pl.Int64)})
    columns = [prep.key_column, *prep.keep] if prep.key_column != ROW else prep.keep
    base = prep.frame.select(columns)[indices] if indices else prep.frame.select(columns).clear()
    if prep.key_column == ROW:
        base = base.insert_column(0, pl.Series(ROW, indices, dtype=pl.Int64))
    return base


def _validated_frame(prep: _Prepared, good: list[RowResult]) -> pl.DataFrame:
    import polars as pl

    base = _base_frame(prep, good)
    answers = {
        name: pl.Series(name, [(r.data or {}).get(name) for r in good], dtype=dtype)
        for name, dtype in prep.spec.polars_schema().items()
    }
    meta = {
        "_model": pl.Series("_model", [r.model for r in good], dtype=pl.String),
        "_input_tokens": pl.Series(
            "_input_tokens", [r.usage.input_tokens for r in good], dtype=pl.Int64
        ),
        "_output_tokens": pl.Series(
            "_output_tokens", [r.usage.output_tokens for r in good], dtype=pl.Int64
        ),
    }
    return base.hstack([*answers.values(), *meta.values()])


def _quarantine_frame(prep: _Prepared, bad: list[RowResult]) -> pl.DataFrame:
    import polars as pl

    base = _base_frame(prep, bad)
    return base.hstack(
        [
            pl.Series("_error", [r.error for r in bad], dtype=pl.String),
            pl.Series("_raw_text", [r.raw_text for r in bad], dtype=pl.String),
            pl.Series("_attempts", [r.turns for r in bad], dtype=pl.Int64),
        ]
    )
