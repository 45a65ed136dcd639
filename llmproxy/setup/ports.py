"""The workstation's port: 8080 unless something else has it, then another free one."""

from __future__ import annotations

import socket

DEFAULT = 8080
EXPLORER = 8081   # `llm-proxy explore`'s default: never handed to the proxy
CANDIDATES = (DEFAULT, *range(8082, 8100))


def explorer_address(settings) -> tuple[str, int]:
    """Where ``llm-proxy explore`` listens: its settings (LLM_PROXY_EXPLORER_HOST, _PORT) in an
    llm-proxy that has the explorer, else its defaults."""
    explorer = getattr(settings, "explorer", None)
    return getattr(explorer, "host", "127.0.0.1"), getattr(explorer, "port", EXPLORER)


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as gunicorn binds: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def choose(host: str) -> int:
    """8080, else the first free one of 8082–8099, else any the system hands out."""
    for port in CANDIDATES:
        if bindable(host, port):
            return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
