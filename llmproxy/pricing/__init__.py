"""What a call cost: its token counts priced with genai-prices (Pydantic's price data for
Anthropic, OpenAI, Google and more), as it is bundled with the installed version.

:func:`~llmproxy.pricing.prices.priced` is all the rest of the proxy asks (an answer's usage →
its token counts and cost): a response entry records its answer as ``tokens`` and ``cost``
(record/entries.py), the catalog prices older entries with it. Offline only:
nothing here starts genai-prices' updater, the one part of it that fetches.

May import: common, providers.
Must not be imported by: common, providers.
"""

from llmproxy.pricing.prices import Cost, cost, load, priced, source

__all__ = ["Cost", "cost", "load", "priced", "source"]
