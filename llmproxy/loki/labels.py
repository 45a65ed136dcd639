"""The Loki labels of an entry: few, and of low cardinality only.

``app``, ``provider``, ``environment``, ``machine``, ``log_type``. Session and request ids stay in
the line (``|= "<session>"`` finds them) or go in structured metadata: as labels they would make a
stream per session, which Loki's index cannot afford.
"""

from __future__ import annotations

from llmproxy.loki.batch import Labels

APP_LABEL = "llm-proxy"


class LabelMaker:
    """Loki labels, low cardinality only: app, provider, environment, machine, log_type.

    Session and request ids stay in the line (``|= "<session>"`` finds them)."""

    def __init__(self, environment: str, machine: str):
        self.environment = environment
        self.machine = machine
        self._cache: dict[tuple[str, str], Labels] = {}

    def __call__(self, provider: str, log_type: str) -> Labels:
        key = (provider, log_type)
        labels = self._cache.get(key)
        if labels is None:
            labels = self._cache[key] = (("app", APP_LABEL), ("provider", provider),
                                         ("environment", self.environment), ("machine", self.machine),
                                         ("log_type", log_type))
        return labels
