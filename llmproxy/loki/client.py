"""Sending one push to Loki: its own HTTP session, headers, gzip, and what Loki answered; and
asking Loki what it holds (the backfill, the recovery, a replay that may repeat a push)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import requests

from llmproxy import __version__
from llmproxy.common.errors import innermost_reason
from llmproxy.loki.backoff import parse_retry_after
from llmproxy.loki.batch import Labels, compress
from llmproxy.settings import LokiSettings, redact_url

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
PAGE = 5000  # lines per query: Loki's default max_entries_limit_per_query
# Loki's querier hands an answer to its frontend in one gRPC message of at most 4 MiB by default
# (grpc_server_max_send_msg_size): a page of long lines fails whole with a 500 saying so.
_TOO_LARGE = re.compile(r"message larger than max \((\d+) vs\. (\d+)\)")


ANSWER_BUDGET = 3 * 1024 * 1024  # of the 4 MiB, leaving room for labels and framing


def selector(labels: Labels) -> str:
    """``{name="value", …}`` for a label set."""
    return "{" + ", ".join(f"{name}={json.dumps(value)}" for name, value in labels) + "}"


class QueryRefused(RuntimeError):
    """Loki answered a query with a 4xx: asking again will not help (a token that may only push,
    a gateway that serves only the push path)."""


class AnswerTooLarge(RuntimeError):
    """Loki could not send a query's answer: ``size`` bytes, over its ``limit``. Ask for fewer lines."""

    def __init__(self, message: str, size: int, limit: int):
        super().__init__(message)
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class PushResult:
    status: int | None      # None: no HTTP answer (refused, timed out, reset)
    message: str            # Loki's own text, or the connection error
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRYABLE_STATUS

    def describe(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.status is not None else self.message


class LokiClient:
    """Pushes bodies to one Loki push URL. Never the proxy's upstream session."""

    def __init__(self, settings: LokiSettings):
        self.url = settings.push_url
        self.safe_url = redact_url(self.url)
        self.use_gzip = settings.use_gzip
        self.timeout = settings.push_timeout
        self.retry_after_cap = settings.backoff_max
        self.max_line_bytes = settings.max_line_bytes
        self.session = requests.Session()
        headers = {"Content-Type": "application/json", "User-Agent": f"llm-proxy/{__version__}"}
        if settings.use_gzip:
            headers["Content-Encoding"] = "gzip"
        if settings.tenant_id:
            headers["X-Scope-OrgID"] = settings.tenant_id
        if settings.auth_token:
            headers["Authorization"] = f"Bearer {settings.auth_token}"
        elif settings.username or settings.password:
            self.session.auth = (settings.username or "", settings.password or "")
        self.session.headers.update(headers)

    def push(self, body: bytes, timeout: float | None = None) -> PushResult:
        """POST one JSON push body; gzip it first when configured."""
        data = compress(body) if self.use_gzip else body
        try:
            resp = self.session.post(self.url, data=data, timeout=timeout or self.timeout)
        except requests.exceptions.Timeout:
            return PushResult(None, f"no answer from {self.safe_url} within {timeout or self.timeout:g}s")
        except (requests.exceptions.RequestException, OSError) as exc:
            return PushResult(None, f"cannot reach {self.safe_url}: {innermost_reason(exc)}")
        message = resp.text.strip()[:2000]
        retry_after = None
        if resp.status_code in (429, 503):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self.retry_after_cap)
        return PushResult(resp.status_code, message, retry_after)

    def probe(self, timeout: float | None = None) -> PushResult:
        """Is Loki there at all? Any HTTP answer (Loki says 405 to a GET on push) counts."""
        try:
            resp = self.session.get(self.url, timeout=timeout or self.timeout)
        except requests.exceptions.Timeout:
            return PushResult(None, f"no answer from {self.safe_url} within {timeout or self.timeout:g}s")
        except (requests.exceptions.RequestException, OSError) as exc:
            return PushResult(None, f"cannot reach {self.safe_url}: {innermost_reason(exc)}")
        return PushResult(204, f"reachable (HTTP {resp.status_code} to GET)")

    @property
    def query_url(self) -> str:
        """Loki's ``query_range`` next to its push URL."""
        return self._api_url("query_range")

    def _api_url(self, name: str) -> str:
        if not self.url.endswith("/loki/api/v1/push"):
            raise ValueError(f"cannot tell Loki's query URL from the push URL {self.safe_url}")
        return self.url[: -len("push")] + name

    def _get(self, name: str, params: dict) -> dict:
        """Loki's answer to a GET of its query API; raise RuntimeError if Loki says no."""
        headers = {"Content-Encoding": None, "Content-Type": None}  # a GET has no body
        try:
            resp = self.session.get(self._api_url(name), params=params, headers=headers, timeout=self.timeout * 3)
        except (requests.exceptions.RequestException, OSError) as exc:
            raise RuntimeError(f"cannot query {self.safe_url}: {innermost_reason(exc)}") from None
        if resp.status_code != 200:
            message = f"Loki query failed: HTTP {resp.status_code}: {resp.text.strip()[:500]}"
            if too_large := _TOO_LARGE.search(resp.text):
                raise AnswerTooLarge(message, int(too_large[1]), int(too_large[2]))
            if 400 <= resp.status_code < 500 and resp.status_code != 429:
                raise QueryRefused(message)
            raise RuntimeError(message)
        return resp.json()["data"]

    def query_range(self, query: str, start_ns: int, end_ns: int, limit: int = PAGE,
                    direction: str = "forward") -> list[tuple[dict, int, str]]:
        """(labels, ts_ns, line) of what Loki holds, one page; raise RuntimeError if Loki says no."""
        result = self._get("query_range", {"query": query, "start": str(start_ns), "end": str(end_ns),
                                           "limit": str(limit), "direction": direction})["result"]
        return [(stream["stream"], int(ts), line) for stream in result for ts, line in stream["values"]]

    def metric(self, query: str, at_ns: int) -> list[tuple[dict, float]]:
        """(labels, value) of each series a metric query answers at one instant."""
        data = self._get("query", {"query": query, "time": str(at_ns)})
        if data["resultType"] != "vector":
            raise RuntimeError(f"Loki answered a {data['resultType']}, not a vector, to {query}")
        return [(series["metric"], float(series["value"][1])) for series in data["result"]]

    def page_for(self, query: str, start_ns: int, end_ns: int, page: int = PAGE) -> int:
        """Lines a page of ``query`` can hold within Loki's answer size limit, by the average size
        of its lines in the range (asked of Loki first: an answer over the limit fails only after
        Loki's own retries, many seconds)."""
        window = f"[{max(1, -(-(end_ns - start_ns) // 10**9))}s]"
        try:
            lines = sum(v for _, v in self.metric(f"sum(count_over_time({query} {window}))", end_ns))
            size = sum(v for _, v in self.metric(f"sum(bytes_over_time({query} {window}))", end_ns))
        except RuntimeError:
            return page  # a Loki that will not count: page as asked, and shrink if it must
        if not lines or size <= ANSWER_BUDGET:
            return page
        return max(1, min(page, int(ANSWER_BUDGET * lines / size)))

    def query_all(self, query: str, start_ns: int, end_ns: int, page: int = PAGE) -> list[tuple[int, str]]:
        """(ts, line) of everything a log query matches in [start, end), oldest first, each once:
        paged past Loki's per-query line limit and its answer size limit."""
        seen: set[tuple[int, str]] = set()
        rows: list[tuple[int, str]] = []
        page = self.page_for(query, start_ns, end_ns, page)
        while start_ns < end_ns:
            try:
                got = self.query_range(query, start_ns, end_ns, limit=page, direction="forward")
            except AnswerTooLarge as exc:
                if page == 1:
                    raise
                # The average misled (long lines bunch): as many lines as fit at the longest.
                page = max(1, min(page // 2, int(exc.limit * 0.8) // (self.max_line_bytes + 1024)))
                continue
            new = [(ts, line) for _, ts, line in got if (ts, line) not in seen]
            seen.update(new)
            rows.extend(new)
            if len(got) < page:
                break
            last = max(ts for _, ts, _ in got)
            # Next page from the last timestamp (inclusive: more entries may share it); a page full
            # of one single nanosecond cannot move on otherwise. What was seen is skipped, as are
            # the duplicates Loki 3's stream sharding can return.
            start_ns = last if new and last > start_ns else last + 1
        rows.sort(key=lambda r: r[0])
        return rows

    def held(self, selector: str, start_ns: int, end_ns: int) -> Counter:
        """``(ts_ns, line length in bytes)`` of each entry Loki holds for a stream selector in
        ``[start_ns, end_ns)``, a duplicate counted twice. Only lengths come back (``line_format``):
        asking for the lines of a megabyte request would ship them all. A full page of results
        is asked again in halves, so nothing is cut off by the page limit."""
        query = f'{selector} | line_format "{{{{ len __line__ }}}}"'
        found: Counter = Counter()
        windows = [(start_ns, end_ns)]
        while windows:
            start, end = windows.pop()
            page = self.query_range(query, start, end, limit=PAGE, direction="forward")
            if len(page) >= PAGE and end - start > 1:
                middle = (start + end) // 2
                windows += [(start, middle), (middle, end)]
                continue
            found.update((ts, int(line)) for _, ts, line in page)
        return found

    def close(self) -> None:
        self.session.close()
