"""What LLM calls cost: list prices per million tokens for a few known models.

The table holds the providers' published standard (non-batch, non-cached) prices in USD per
million input and output tokens, as of the date below; prices change, so a stage can set its
own (``price: {input_per_mtok, output_per_mtok}``), which always wins. A model not in the
table has no price: its cost is reported as unknown (``null``) while its tokens are still
counted. Guessing a price from a similar name would make a budget in dollars look enforced
when it is not, so dated variants are matched (``claude-haiku-4-5-20251001`` is
``claude-haiku-4-5``) and nothing else is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ductwork.ai.llm import Usage

PRICES_AS_OF = "2025-11"


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    source: str = "table"  # "table" (KNOWN_PRICES) or "params"

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_per_mtok": self.input_per_mtok,
            "output_per_mtok": self.output_per_mtok,
            "source": self.source,
        }


KNOWN_PRICES: dict[str, Price] = {
    # Anthropic
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-opus-4": Price(15.0, 75.0),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    "claude-3-haiku": Price(0.25, 1.25),
    # OpenAI
    "gpt-5": Price(1.25, 10.0),
    "gpt-5-mini": Price(0.25, 2.0),
    "gpt-5-nano": Price(0.05, 0.4),
    "gpt-4.1": Price(2.0, 8.0),
    "gpt-4.1-mini": Price(0.4, 1.6),
    "gpt-4.1-nano": Price(0.1, 0.4),
    "gpt-4o": Price(2.5, 10.0),
    "gpt-4o-mini": Price(0.15, 0.6),
}

# a date or "latest" after the family name: -20251001, -2024-08-06, -latest
_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


def known_price(model: str) -> Price | None:
    """The table's price of ``model`` (exact name or a dated variant of one), else None."""
    name = model.strip().lower()
    if name in KNOWN_PRICES:
        return KNOWN_PRICES[name]
    m = _DATED.match(name)
    if m and m.group("base") in KNOWN_PRICES:
        return KNOWN_PRICES[m.group("base")]
    return None


def resolve_price(model: str, override: Any = None) -> Price | None:
    """The price to charge: the stage's ``price`` param when set, else the table's, else None."""
    if override is not None:
        if isinstance(override, Price):
            return override
        doc: dict[str, Any] = (
            dict(override)
            if isinstance(override, dict)
            else {k: getattr(override, k) for k in ("input_per_mtok", "output_per_mtok")}
        )
        return Price(float(doc["input_per_mtok"]), float(doc["output_per_mtok"]), "params")
    return known_price(model)


def cost_usd(usage: Usage, price: Price | None) -> float | None:
    """The cost of ``usage`` at ``price``; None when the price is unknown."""
    if price is None:
        return None
    return price.cost(usage.input_tokens, usage.output_tokens)
