"""Asking a running proxy how it is: ``/health`` and ``/health/loki``, on loopback, briefly.

Plain ``http.client``: no proxy variables (``HTTP_PROXY``) are followed to reach 127.0.0.1, and
a port where nothing listens answers at once.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

TIMEOUT = 2.0


def get_json(base_url: str, path: str, timeout: float = TIMEOUT) -> tuple[int, dict] | None:
    """``(status, document)`` of a GET, or None when nothing answers with JSON."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read() or b"null")
        return (resp.status, doc) if isinstance(doc, dict) else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def health(base_url: str, timeout: float = TIMEOUT) -> dict | None:
    """The proxy's ``/health`` when an llm-proxy answers there, else None."""
    answer = get_json(base_url, "/health", timeout)
    if answer is None or answer[0] != 200 or answer[1].get("status") != "ok" or "version" not in answer[1]:
        return None
    return answer[1]
