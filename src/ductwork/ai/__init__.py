"""The AI layer: LLM providers, prompts, structured answers, response cache, embeddings, vectors.

Everything here that talks to a model needs the ``ai`` extra (anthropic, httpx, jinja2,
sentence-transformers, qdrant-client). The stage kinds in ``ductwork.stages`` import these
modules inside ``run``, so listing kinds or running an ETL pipeline never imports them, and
torch is imported only by a stage that embeds text.

The modules, bottom up:

* :mod:`ductwork.ai.llm` — the provider-neutral request/reply types, :class:`LLMError`,
  the :class:`Provider` protocol and :func:`estimate_tokens`;
* :mod:`ductwork.ai.providers` — Anthropic (official SDK) and OpenAI-compatible (httpx)
  providers; :mod:`ductwork.ai.limits` — rate limits and retries with backoff;
* :mod:`ductwork.ai.testserver` — a local HTTP server that speaks both APIs, for tests,
  benchmarks and offline demos (with injectable faults);
* :mod:`ductwork.ai.schema`, :mod:`~ductwork.ai.prompts`, :mod:`~ductwork.ai.cache`,
  :mod:`~ductwork.ai.cost`, :mod:`~ductwork.ai.enrich` — what the ``generate`` stage is made of;
* :mod:`ductwork.ai.embeddings`, :mod:`ductwork.ai.vectors` — ``embed``, ``index``, ``search``.
"""

from __future__ import annotations


def require_ai(feature: str, module: str = "jinja2") -> None:
    """Raise :class:`~ductwork.errors.MissingExtra` unless ``module`` (of the ai extra) imports."""
    from ductwork.errors import import_optional

    import_optional(module, extra="ai", feature=feature)
