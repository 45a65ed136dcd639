"""Report records from Loki (``llm-proxy usage --loki``): the calls of every machine that ships
to the Loki in ``LLM_PROXY_LOKI_URL``, added up by Loki itself.

Each number of a :class:`~llmproxy.usage.report.Record` is one LogQL metric query over the
response entries of the exporter's environment, summed ``by`` the report's key and the model:
``count_over_time`` for calls (and for unpriced ones), ``sum_over_time`` of an unwrapped field
for each kind of tokens and for the cost, ``max_over_time`` of the entry's time for the newest
call. Loki answers numbers, never lines.

A call is what the catalog counts: an answer's entry. Its line filter names a field only the
entry itself has: a line shipped in parts (:mod:`llmproxy.loki.split`) carries its fields in
its first part, and the later parts hold them only escaped inside their ``chunk``, where the
filter cannot match, so a split entry counts once. Its model is the structured metadata's
``model`` (the answer's model, else the request's: the catalog's rule), or the line's where
Loki keeps no structured metadata. Unpriced: ``tokens`` and no ``cost``.

Loki's limits shape the questions. The range is asked a UTC day at a time and the answers are
added up: far within ``max_query_length`` (721 h), and Loki's work grows with the hours a query
spans while a day without calls costs one query, not eight. An answer holds at most 500 series
(``max_query_series``), so a day whose answer would hold more (a session report of a busy
team) is asked again in halves. A window is exact to the nanosecond: an instant query at its
last nanosecond over its length.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone

from llmproxy import pricing
from llmproxy.loki.client import LokiClient, selector
from llmproxy.loki.labels import APP_LABEL
from llmproxy.usage.report import Filters, Kind, Record, Report, build

DAY_NS = 86400 * 10**9
MIN_WINDOW_NS = 60 * 10**9    # a window is halved no further than this
MIN_SLOW_WINDOW_NS = 3 * 3600 * 10**9   # nor, when Loki was too slow for it, than this
PARALLEL = 4                  # queries in flight at once
# What Loki says when an answer would be too big or too slow: ask again for less. Too slow may
# also be a Loki (or the gateway before it) that answers nothing at all: halving stops sooner.
TOO_MUCH = ("maximum number of series", "exceeds the limit")
TOO_SLOW = ("timeout", "deadline exceeded", "HTTP 504")
RANGE = "$RANGE"

# The entry's own fields, as a line filter (see the module's docstring) and as ``| json`` paths.
CALL = '|= "\\"status\\":"'
WITH_TOKENS = '|= "\\"tokens\\":"'
PRICED = '|= "\\"cost\\":"'
UNPRICED = '|= "\\"tokens\\":" != "\\"cost\\":"'
# ``model`` is taken by structured metadata: the line's model is extracted as model_name.
MODEL_LABELS = ("model", "model_name")
# The newest call's time as Unix seconds, to the nanosecond a float keeps.
WHEN = 'label_format t=`{{ unixEpoch __timestamp__ }}{{ __timestamp__ | date ".000000000" }}`'


@dataclass(frozen=True)
class Metric:
    """One number of a record: the line filter, the field unwrapped (None: lines are counted)
    and how the values of a window add up."""

    name: str
    line_filter: str
    field: str | None = None
    over_time: str = "sum_over_time"
    across: str = "sum"


METRICS = (
    Metric("calls", CALL, over_time="count_over_time"),
    Metric("input", WITH_TOKENS, "tokens.input"),
    Metric("output", WITH_TOKENS, "tokens.output"),
    Metric("cache_write", WITH_TOKENS, "tokens.cache_write"),
    Metric("cache_read", WITH_TOKENS, "tokens.cache_read"),
    Metric("cost", PRICED, "cost.total"),
    Metric("unpriced", UNPRICED, over_time="count_over_time"),
    Metric("last", CALL, over_time="max_over_time", across="max"),
)

# The report's key: a label of the answer (the ``| json`` path it is extracted from, or None for
# a stream label), or None where it is the model, or the window's own (days, months).
KEY_LABELS: dict[str, tuple[str, str | None] | None] = {
    "day": None, "month": None, "model": None, "session": ("session", "_meta.session"),
    "machine": ("machine", None), "client": ("client", "client"),
}


@dataclass(frozen=True)
class Window:
    """The calls of ``[start_ns, end_ns)``; ``key`` names their row (a day, a month), else the
    key is a label of Loki's answer."""

    start_ns: int
    end_ns: int
    key: str | None = None


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _contains(text: str) -> str:
    """An RE2 pattern matching names that contain ``text``, in any case (SQLite's ``instr`` of
    ``lower``), quoted for LogQL."""
    escaped = "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in text)
    return _quoted(f"(?i).*{escaped}.*")


def query(metric: Metric, kind: Kind, filters: Filters, environment: str) -> str:
    """The LogQL of one number of a report, with :data:`RANGE` standing for the window's length."""
    labels = [("app", APP_LABEL), ("environment", environment), ("log_type", "response")]
    labels += [(name, value) for name, value in (("provider", filters.provider), ("machine", filters.machine)) if value]
    key = KEY_LABELS[kind.key]
    extract = ['model_name="model"']
    if key and key[1]:
        extract.append(f"{key[0]}={_quoted(key[1])}")
    if metric.field:
        extract.append(f"v={_quoted(metric.field)}")
    stages = [metric.line_filter, "| json " + ", ".join(extract)]
    if filters.model:  # a split-free way to say "the model": both labels hold it when both exist
        stages.append(f"| model=~{_contains(filters.model)} or model_name=~{_contains(filters.model)}")
    group = [*MODEL_LABELS, *([key[0]] if key else [])]
    value = "t" if metric.over_time == "max_over_time" else "v" if metric.field else None
    if metric.over_time == "max_over_time":
        stages.append("| " + WHEN)
    # Only the labels the answer is grouped by (and the value): every other one, the request id
    # of structured metadata above all, would make a series per call inside Loki.
    stages.append("| keep " + ", ".join(group + ([value] if value else [])))
    if value:
        stages.append(f'| unwrap {value} | __error__=""')
    logs = selector(labels) + " " + " ".join(stages)
    return f"{metric.across} by ({', '.join(group)}) ({metric.over_time}({logs} [{RANGE}]))"


def _day_start(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) * 10**9


def _day_of(ns: int) -> date:
    return datetime.fromtimestamp(ns // 10**9, tz=timezone.utc).date()


def windows(kind: Kind, since: date, until: date, now_ns: int) -> list[Window]:
    """The report's range as the windows it is asked in: its UTC days, keyed by day (daily) or
    month (monthly), else by the labels of Loki's answers."""
    # Whole seconds: the windows' lengths are LogQL durations. Nothing is asked of the future.
    start, end = _day_start(since), min(_day_start(until) + DAY_NS, (now_ns // 10**9 + 1) * 10**9)
    keys = {"day": lambda day: day.isoformat(), "month": lambda day: day.isoformat()[:7]}
    key = keys.get(kind.key, lambda day: None)
    return [Window(at, min(at + DAY_NS, end), key(_day_of(at))) for at in range(start, end, DAY_NS)]


class LokiUsage:
    """Records of a report, asked of one Loki (the exporter's URL, auth and tenant)."""

    def __init__(self, client: LokiClient, environment: str):
        self.client = client
        self.environment = environment

    def records(self, kind: Kind, filters: Filters, since: date, until: date, now_ns: int) -> list[Record]:
        """One record per (key, model) of the calls in ``since`` … ``until`` (UTC days, included)
        that pass the filters."""
        queries = {m.name: query(m, kind, filters, self.environment) for m in METRICS}
        key = KEY_LABELS[kind.key]
        sums: dict[tuple[str, str], dict[str, float]] = {}

        def add(window: Window, metric: Metric, answer: list[tuple[dict, float]]) -> None:
            for labels, value in answer:
                model = labels.get("model") or labels.get("model_name") or ""
                numbers = sums.setdefault((labels.get(key[0], "") if key else window.key or model, model), {})
                if metric.across == "max":
                    numbers[metric.name] = max(numbers.get(metric.name, value), value)
                else:
                    numbers[metric.name] = numbers.get(metric.name, 0) + value

        calls, *rest = METRICS
        pool = ThreadPoolExecutor(PARALLEL)
        try:
            counted = [pool.submit(self._ask, queries[calls.name], window)
                       for window in windows(kind, since, until, now_ns)]
            jobs = []
            for job in counted:
                for window, answer in job.result():
                    add(window, calls, answer)
                    # The rest only where there were calls (each query costs Loki its whole
                    # window), and in the pieces the calls needed (the rest have no more series).
                    if answer:
                        jobs += [(window, metric, pool.submit(self._ask, queries[metric.name], window))
                                 for metric in rest]
            for _, metric, job in jobs:
                for window, answer in job.result():
                    add(window, metric, answer)
        finally:  # one failed query fails the report: the queries not yet asked are not
            pool.shutdown(cancel_futures=True)
        # In (key, model) order, as the catalog's GROUP BY gives them: rows then add up their
        # costs in the same order.
        return [Record(key_, model, calls=round(n["calls"]),
                       **{name: round(n.get(name, 0)) for name in ("input", "output", "cache_write", "cache_read",
                                                                   "unpriced")},
                       cost=n.get("cost", 0.0), last=n.get("last"))
                for (key_, model), n in sorted(sums.items()) if n.get("calls")]

    def _ask(self, template: str, window: Window) -> list[tuple[Window, list[tuple[dict, float]]]]:
        """Loki's answer for one window: at its last nanosecond, over its length (both ends
        exact); in halves, each with its answer, when Loki finds it too big or too slow."""
        length = window.end_ns - window.start_ns
        try:
            return [(window, self.client.metric(template.replace(RANGE, f"{length // 10**9}s"), window.end_ns - 1))]
        except RuntimeError as exc:
            smallest = (MIN_WINDOW_NS if any(s in str(exc) for s in TOO_MUCH) else
                        MIN_SLOW_WINDOW_NS if any(s in str(exc) for s in TOO_SLOW) else None)
            if smallest is None or length < 2 * smallest:
                raise
        middle = window.start_ns + length // 2 // 10**9 * 10**9
        return [*self._ask(template, replace(window, end_ns=middle)),
                *self._ask(template, replace(window, start_ns=middle))]


def report(client: LokiClient, environment: str, kind: Kind, filters: Filters,
           today: date | None = None, now_ns: int | None = None) -> Report:
    """The report of every machine that ships to this Loki: from ``filters.since`` (else 30 days
    back: Loki keeps a limited time, and says nothing of what it no longer has) to
    ``filters.until`` (else today)."""
    import time

    now_ns = now_ns if now_ns is not None else time.time_ns()
    today = today or _day_of(now_ns)
    since = filters.since or today - timedelta(days=30)
    until = filters.until or today
    shown = replace(filters, since=since)
    records = LokiUsage(client, environment).records(kind, filters, since, until, now_ns)
    out = build(kind, records, shown, pricing.source())
    where = client.safe_url.removesuffix("/loki/api/v1/push")
    out.notes.append(f"Every machine in Loki at {where}, environment {environment}.")
    return out
