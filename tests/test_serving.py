"""The real server, started the ways a user starts it."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from proxyproc import http_get

ROOT = Path(__file__).resolve().parent.parent


def test_llm_proxy_serve_answers_health_and_stops_on_sigterm(start_proxy):
    server = start_proxy()
    status, body = http_get(server.port, "/health")
    assert status == 200
    assert body["status"] == "ok" and body["version"]
    assert len(server.worker_pids()) == 2 and body["threads"]["workers"] == 2  # start_proxy waited for both

    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=60) == 0
    assert time.monotonic() - started < 45  # graceful_timeout is the Loki flush budget + 15 s
    output = server.output()
    assert "Using worker: llmproxy.proxy.worker.ProxyWorker" in output
    assert "Shutting down: Master" in output


def test_gunicorn_with_the_checkout_config_file(start_proxy):
    server = start_proxy(command=[str(Path(sys.executable).with_name("gunicorn")),
                                  "-c", str(ROOT / "gunicorn.conf.py")])
    assert http_get(server.port, "/health")[0] == 200


def test_serve_passes_extra_arguments_to_gunicorn(start_proxy):
    server = start_proxy({"LLM_PROXY_WORKERS": "1"},
                         command=[str(Path(sys.executable).with_name("llm-proxy")), "serve",
                                  "--log-level", "debug"])
    http_get(server.port, "/health")
    assert "[DEBUG]" in server.output()


def test_gunicorn_settings_follow_configuration(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_PROXY_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("LLM_PROXY_HOST", "::1")
    monkeypatch.setenv("LLM_PROXY_PORT", "9123")
    monkeypatch.setenv("LLM_PROXY_WORKERS", "3")
    monkeypatch.setenv("LLM_PROXY_THREADS", "7")
    monkeypatch.setenv("LLM_PROXY_LOKI_SHUTDOWN_TIMEOUT", "45s")
    monkeypatch.setenv("LLM_PROXY_ENV_FILE", str(tmp_path / "none.env"))
    code = ("import llmproxy.server.gunicorn_config as c; "
            "print(c.bind, c.workers, c.threads, c.worker_class, c.graceful_timeout, c.timeout, c.wsgi_app)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.split() == ["['[::1]:9123']", "3", "7", "llmproxy.proxy.worker.ProxyWorker", "60", "60", "llmproxy.wsgi:app"]


def test_health_from_the_app_object(tmp_path):
    from llmproxy import __version__
    from llmproxy.server.app import create_app
    from llmproxy.settings import load_settings

    app = create_app(load_settings({"LLM_PROXY_LOG_DIR": str(tmp_path)}))
    response = app.test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok", "version": __version__, "file_logging": "ok",
        "threads": {"threads": 128, "busy": 0, "waiting": None, "saturated_workers": 0,
                    "saturated_seconds": 0.0, "workers": 1}}  # no gunicorn: nothing counts threads
