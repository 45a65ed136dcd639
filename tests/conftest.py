"""Shared fixtures: the real proxy under gunicorn, the fake provider, fakeloki."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from proxyproc import ProxyServer  # noqa: E402


@pytest.fixture
def start_proxy(tmp_path):
    """Start ``llm-proxy serve`` with extra environment; every server is stopped at teardown."""
    servers: list[ProxyServer] = []

    def start(env: dict[str, str] | None = None, name: str = "proxy", **kwargs) -> ProxyServer:
        server = ProxyServer(tmp_path / f"{name}{len(servers)}", env=env, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_provider():
    from fakeprovider import FakeProvider

    fake = FakeProvider().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """One real gunicorn proxy (2 workers) shared by a test module."""
    server = ProxyServer(tmp_path_factory.mktemp("proxy"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_loki(tmp_path_factory):
    """One real Grafana Loki (``../shared/tools``) for the whole run: tests keep apart by their own
    label values (a ``machine`` or ``environment`` of their own). Skips where the binary cannot
    be had; fails instead under CI."""
    import os

    from realloki import RealLoki, loki_binary

    binary, why = loki_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    loki = RealLoki(tmp_path_factory.mktemp("loki")).start()
    yield loki
    loki.stop()
