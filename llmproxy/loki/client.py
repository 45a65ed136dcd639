"""Sending one push to Loki: its own HTTP session, headers, gzip, and what Loki answered; and
asking Loki what it holds (the backfill, the recovery, a replay that may repeat a push)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import requests

from llmproxy import __version__
from llmproxy.common.errors import innermost_reason
from llmproxy.loki.backoff import parse_retry_after
from llmproxy.loki.batch import Labels, compress
from llmproxy.settings import LokiSettings, redact_url

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


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


PAGE = 5000  # Loki's max_entries_limit_per_query by default


def selector(labels: Labels) -> str:
    """``{name="value", …}`` for a label set."""
    return "{" + ", ".join(f"{name}={json.dumps(value)}" for name, value in labels) + "}"


class QueryRefused(RuntimeError):
    """Loki answered a query with a 4xx: asking again will not help (a token that may only push,
    a gateway that serves only the push path)."""


class LokiClient:
    """Pushes bodies to one Loki push URL. Never the proxy's upstream session."""

    def __init__(self, settings: LokiSettings):
        self.url = settings.push_url
        self.safe_url = redact_url(self.url)
        self.use_gzip = settings.use_gzip
        self.timeout = settings.push_timeout
        self.retry_after_cap = settings.backoff_max
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
        if not self.url.endswith("/loki/api/v1/push"):
            raise ValueError(f"cannot tell Loki's query URL from the push URL {self.safe_url}")
        return self.url[: -len("push")] + "query_range"

    def query_range(self, query: str, start_ns: int, end_ns: int, limit: int = 5000,
                    direction: str = "forward") -> list[tuple[dict, int, str]]:
        """(labels, ts_ns, line) of what Loki holds, one page; raise RuntimeError if Loki says no."""
        params = {"query": query, "start": str(start_ns), "end": str(end_ns), "limit": str(limit),
                  "direction": direction}
        headers = {"Content-Encoding": None, "Content-Type": None}  # a GET has no body
        try:
            resp = self.session.get(self.query_url, params=params, headers=headers, timeout=self.timeout * 3)
        except (requests.exceptions.RequestException, OSError) as exc:
            raise RuntimeError(f"cannot query {self.safe_url}: {innermost_reason(exc)}") from None
        if resp.status_code != 200:
            error = QueryRefused if 400 <= resp.status_code < 500 and resp.status_code != 429 else RuntimeError
            raise error(f"Loki query failed: HTTP {resp.status_code}: {resp.text.strip()[:500]}")
        result = resp.json()["data"]["result"]
        return [(stream["stream"], int(ts), line) for stream in result for ts, line in stream["values"]]

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
