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


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size)``: a directory on a tmpfs of ``size`` (e.g. ``"8m"``), to fill up. Needs the
    right to mount (root, as ./scripts/test runs here); skips with the reason where it has not."""
    import subprocess

    mounted = []

    def make(size: str) -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill up: {done.stderr.strip() or done.returncode}")
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)



def pytest_collection_finish(session):
    """The two-minute soak (tests/test_soak.py) starts at once, in a process of its own, and runs
    beside the rest of the suite; its test collects the result."""
    if any(item.path.name == "test_soak.py" for item in session.items):
        import soak

        soak.start_background(session.config._tmp_path_factory.mktemp("soak"))
