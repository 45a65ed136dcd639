"""Pricing a call's :class:`~llmproxy.providers.summary.Counts` with genai-prices.

genai-prices finds a model's price (by the upstream's host, else the price list its API names,
then the model name) and prices a usage in about 100 µs, most of it spent working out which of
its units the usage fills. The lookup is done once per (host, list, model) and the prices it
finds once per price set; the few units a call of these APIs fills (input, cache write and
read, output, web searches, a price per request) are then priced here, with genai-prices'
own :func:`~genai_prices.types.calc_unit_price` (tiers included), in a few microseconds. A price
set with any other unit (audio, images, a modality of its own) goes through genai-prices'
``calc_price`` whole. tests/test_pricing.py holds both ways equal for every Anthropic and OpenAI
model the data has.

genai-prices counts cached tokens as part of ``input_tokens``; :class:`Counts` keeps them apart
(``input`` is the uncached part), so the usage handed over is ``input_tokens = prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

from llmproxy import providers
from llmproxy.providers.summary import Counts

MILLION = 1_000_000
THOUSAND = 1_000
MODELS_KEPT = 4096  # lookups remembered; model names come from the traffic, so the memory is bounded

# The price keys the fast way prices, and those it may leave aside because a call of these APIs
# never fills their unit (tool calls other than web searches, durations, characters, pages…).
TOKEN_PRICES = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")
COUNT_PRICES = ("web_searches_kcount", "requests_kcount")
UNFILLED = frozenset({"storage_searches_kcount", "social_searches_kcount", "code_executions_kcount",
                      "rerank_searches_kcount", "input_mchars", "audio_hours", "input_audio_hours",
                      "output_audio_hours", "input_gpixels", "input_document_kpages",
                      "input_annotated_document_kpages", "input_text_messages_kcount"})


@dataclass(frozen=True)
class Cost:
    """What a call cost in USD: ``total`` and its parts as the price data splits them (a part
    the model has no price of is None: its tokens are priced as input). Web searches and a
    price per request count in ``total`` only."""

    total: float
    input: float | None = None
    output: float | None = None
    cache_write: float | None = None
    cache_read: float | None = None
    source: str = ""

    def fields(self) -> dict[str, Any]:
        """The entry's ``cost``."""
        out: dict[str, Any] = {"total": self.total}
        for name in ("input", "output", "cache_write", "cache_read"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["source"] = self.source
        return out


@lru_cache(maxsize=1)
def source() -> str:
    """``genai-prices 0.2.5``: which prices a cost is in."""
    from importlib.metadata import version

    return f"genai-prices {version('genai-prices')}"


class _Rates:
    """One price set, split for the fast way (None: the set needs genai-prices' own)."""

    def __init__(self, prices: Any):
        self.prices = prices  # keeps the object whose id keys the cache alive
        found = {k: v for k, v in vars(prices).items() if v is not None and not k.startswith("_")}
        self.fast = found.get("input_mtok") is not None and \
            set(found) <= set(TOKEN_PRICES) | set(COUNT_PRICES) | UNFILLED
        self.input, self.output, self.cache_read, self.cache_write, self.cache_write_1h = (
            found.get(k) for k in TOKEN_PRICES)
        self.web_searches, self.requests = (found.get(k) for k in COUNT_PRICES)


class PriceList:
    """genai-prices' bundled data, with what it looks up remembered. Thread-safe: a race only
    looks a thing up twice."""

    def __init__(self) -> None:
        from genai_prices import data_snapshot
        from genai_prices.types import calc_unit_price

        self._snapshot = data_snapshot.get_snapshot()
        self._unit = calc_unit_price
        self._models: dict[tuple[str, str, str], Any] = {}
        self._rates: dict[int, _Rates] = {}

    def model(self, model: str, upstream: str, priced_as: str):
        """(provider, model info) of genai-prices, or None when it has no price for the model."""
        key = (model, upstream, priced_as)
        try:
            return self._models[key]
        except KeyError:
            pass
        snapshot = self._snapshot
        try:
            try:
                provider = snapshot.find_provider(None, None, f"https://{upstream}")
            except LookupError:  # a host it does not know (a local gateway, the ChatGPT backend)
                provider = snapshot.find_provider(None, priced_as, None)
            found = snapshot.find_provider_model(model, provider, None, None)
        except LookupError:
            found = None
        if len(self._models) >= MODELS_KEPT:
            self._models.clear()  # a client naming ever new models: look the few real ones up again
        self._models[key] = found
        return found

    def cost(self, counts: Counts, model: str, upstream: str, priced_as: str, when: datetime) -> Cost | None:
        found = self.model(model, upstream, priced_as)
        if found is None:
            return None
        provider, info = found
        prices = info.get_prices(when)
        rates = self._rates.get(id(prices))
        if rates is None or rates.prices is not prices:
            rates = self._rates[id(prices)] = _Rates(prices)
        if rates.fast:
            return self._fast(rates, counts)
        return self._whole(info, provider, counts, when)

    def _fast(self, rates: _Rates, counts: Counts) -> Cost | None:
        """genai-prices' arithmetic for these units: each priced unit takes its own tokens, which
        its parent unit (input, then cache write) does not count again."""
        prompt, unit = counts.prompt, self._unit
        hour = counts.cache_write_1h if rates.cache_write_1h is not None else 0
        written = counts.cache_write - hour if rates.cache_write is not None else 0
        read = counts.cache_read if rates.cache_read is not None else 0
        plain = prompt - hour - written - read
        if plain < 0 or written < 0:
            return None  # more cache tokens than input: genai-prices refuses such a usage too
        parts = [unit(rates.input, plain, prompt, MILLION), unit(rates.output, counts.output, prompt, MILLION)]
        cache_write = unit(rates.cache_write, written, prompt, MILLION) + \
            unit(rates.cache_write_1h, hour, prompt, MILLION)
        cache_read = unit(rates.cache_read, read, prompt, MILLION)
        other = unit(rates.web_searches, counts.web_searches, prompt, THOUSAND) + \
            unit(rates.requests, 1, prompt, THOUSAND)
        total = parts[0] + parts[1] + cache_write + cache_read + other
        has_write = rates.cache_write is not None or rates.cache_write_1h is not None
        return Cost(float(total), float(parts[0]), float(parts[1]),
                    float(cache_write) if has_write else None,
                    float(cache_read) if rates.cache_read is not None else None, source())

    def _whole(self, info, provider, counts: Counts, when: datetime) -> Cost | None:
        try:
            calculated = info.calc_price(usage(counts), provider, genai_request_timestamp=when)
        except (ValueError, ArithmeticError):  # a usage its units cannot take
            return None
        return Cost(float(calculated.total_price), float(calculated.input_price),
                    float(calculated.output_price), source=source())


def usage(counts: Counts):
    """:class:`Counts` as a genai-prices ``Usage`` (whose ``input_tokens`` counts cached ones)."""
    from genai_prices import Usage

    return Usage(input_tokens=counts.prompt, output_tokens=counts.output, cache_write_tokens=counts.cache_write,
                 cache_read_tokens=counts.cache_read, cache_write_1h_tokens=counts.cache_write_1h or None,
                 web_searches=counts.web_searches or None)  # None: not reported


_prices: PriceList | None = None


def load() -> None:
    """Read genai-prices' data now. The gunicorn master calls this before it forks: the workers
    then share its pages (some 16 MiB) instead of each reading a copy at its first priced
    answer (about 0.2 s of that request's thread)."""
    global _prices
    if _prices is None:
        try:
            _prices = PriceList()
        except Exception:  # as in cost(): pricing never stops the proxy; a worker tries again
            pass


def cost(counts: Counts | None, model: str | None, upstream: str, priced_as: str | None,
         when: float | datetime) -> Cost | None:
    """What a call cost (``when`` its time, for prices that changed), or None when it has no
    token counts or genai-prices no price for the model. Never raises."""
    global _prices
    if counts is None or not model or not priced_as:
        return None
    if isinstance(when, (int, float)):
        when = datetime.fromtimestamp(when, tz=timezone.utc)
    try:
        if _prices is None:
            _prices = PriceList()
        return _prices.cost(counts, model, upstream, priced_as, when)
    except Exception:  # a surprise in the price data never loses the entry
        return None


def priced(api, usage: Any, model: str | None, upstream: str, when: float | datetime) -> tuple[Counts | None, Cost | None]:
    """An answer's usage (in its API's names) as counts and what they cost: what a response
    entry records as ``tokens`` and ``cost``, and what the catalog works out for an entry
    written without them."""
    counts = providers.token_counts(api, usage)
    return counts, cost(counts, model, upstream, getattr(api, "PRICED_AS", None), when)
