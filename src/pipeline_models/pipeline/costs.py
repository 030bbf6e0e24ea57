"""Prices and pricing: what one billed call of an external service costs, in exact money.

The parser bills per page, the embeddings service per token. One function,
:meth:`PriceTable.price`, turns a call's usage into money; the budget reserves with it
(on an estimate before the call) and the ledger settles each call with it (on the usage
the service reported); a job's cost is the sum over its calls. Money is
:class:`~decimal.Decimal`, never a float: a million calls of $0.00000002 must add up to
the cent.

>>> prices = PriceTable.default()
>>> prices.price(Usage(tokens=1_000_000), embed_model="text-embedding-3-small")
Decimal('0.020')
>>> prices.price(Usage(pages=10))
Decimal('0.030')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

# Published list prices, as the author knew them on the "as of" date below; they were not
# re-read from the vendors' pages on that date (no machine here reaches them). Check them
# against https://www.llamaindex.ai/pricing and https://openai.com/api/pricing before
# relying on a cap, and override them in the config file's [prices] table.
PRICES_AS_OF = date(2026, 11, 23)

# LlamaParse bills in credits: 1,000 credits for $1 on pay-as-you-go, and its default
# ("cost-effective") parse mode takes 3 credits a page.
LLAMAPARSE_USD_PER_CREDIT = Decimal("0.001")
LLAMAPARSE_CREDITS_PER_PAGE = 3

# OpenAI embeddings, USD per 1M input tokens.
OPENAI_EMBEDDING_USD_PER_MILLION_TOKENS: Mapping[str, Decimal] = {
    "text-embedding-3-small": Decimal("0.02"),
    "text-embedding-3-large": Decimal("0.13"),
    "text-embedding-ada-002": Decimal("0.10"),
}

# A page of text, for estimating what a parse will bill before the parser has counted.
# Generous on purpose: an estimate only reserves budget, and a reservation too small
# could let a run overspend its cap.
ESTIMATE_BYTES_PER_PAGE = 2000
# Tokens of a text before the service has counted them: about 3 UTF-8 bytes a token is
# above OpenAI's ~4 characters a token for English, so the estimate errs high.
ESTIMATE_BYTES_PER_TOKEN = 3

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Usage:
    """What one call (or a sum of calls) used: parsed pages and embedded tokens."""

    pages: int = 0
    tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.pages + other.pages, self.tokens + other.tokens)


@dataclass(frozen=True)
class PriceTable:
    """USD per parsed page, and USD per 1M tokens for each embeddings model."""

    usd_per_page: Decimal = LLAMAPARSE_USD_PER_CREDIT * LLAMAPARSE_CREDITS_PER_PAGE
    usd_per_million_tokens: Mapping[str, Decimal] = field(
        default_factory=lambda: dict(OPENAI_EMBEDDING_USD_PER_MILLION_TOKENS)
    )
    as_of: date = PRICES_AS_OF

    @classmethod
    def default(cls) -> PriceTable:
        """Today's published list prices (see :data:`PRICES_AS_OF`)."""
        return cls()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PriceTable:
        """From a config file's ``[prices]`` table; prices are strings or integers (a float
        is refused: it has already lost the exact value).

        >>> PriceTable.from_mapping({"usd_per_page": "0.01",
        ...     "usd_per_million_tokens": {"m": "1"}}).usd_per_million_tokens["m"]
        Decimal('1')
        """
        default = cls.default()
        per_page = values.get("usd_per_page")
        tokens = dict(default.usd_per_million_tokens)
        for model, price in dict(values.get("usd_per_million_tokens", {})).items():
            tokens[str(model)] = _money(price, f"prices.usd_per_million_tokens.{model}")
        as_of = values.get("as_of", default.as_of)
        if per_page is not None:
            per_page = _money(per_page, "prices.usd_per_page")
        return cls(
            usd_per_page=default.usd_per_page if per_page is None else per_page,
            usd_per_million_tokens=tokens,
            as_of=as_of if isinstance(as_of, date) else date.fromisoformat(str(as_of)),
        )

    def price(self, usage: Usage, *, embed_model: str | None = None) -> Decimal:
        """The exact cost of ``usage``; tokens need the ``embed_model`` they were sent to."""
        cost = self.usd_per_page * usage.pages
        if usage.tokens:
            if embed_model is None or embed_model not in self.usd_per_million_tokens:
                known = ", ".join(sorted(self.usd_per_million_tokens))
                raise ValueError(
                    f"no token price for embeddings model {embed_model!r}; the price table "
                    f"knows {known}: add it under [prices.usd_per_million_tokens]"
                )
            cost += self.usd_per_million_tokens[embed_model] * usage.tokens / _MILLION
        return cost


def estimate_pages(size_bytes: int) -> int:
    """The pages a parse of ``size_bytes`` may bill, at least one (an overestimate)."""
    return max(1, math.ceil(size_bytes / ESTIMATE_BYTES_PER_PAGE))


def estimate_tokens(texts: Sequence[str]) -> int:
    """The tokens an embeddings call of ``texts`` may bill (an overestimate).

    >>> estimate_tokens(["hello world"])
    5
    """
    return sum(math.ceil(len(text.encode()) / ESTIMATE_BYTES_PER_TOKEN) + 1 for text in texts)


def _money(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(
            f'{where} must be a string like "0.02" or an integer, got {value!r}: a float '
            "cannot hold a price exactly"
        )
    amount = Decimal(value)
    if amount < 0:
        raise ValueError(f"{where} must not be negative, got {value!r}")
    return amount


__all__ = [
    "PRICES_AS_OF",
    "PriceTable",
    "Usage",
    "estimate_pages",
    "estimate_tokens",
]
