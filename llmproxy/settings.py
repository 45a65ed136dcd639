"""Configuration: every setting is an environment variable, optionally read from a ``.env`` file.

:func:`load_settings` builds one immutable :class:`Settings` at start-up; everything else receives
the piece it needs. A bad value raises :class:`SettingsError`, whose message is the single line a
user sees before the process exits with status 2.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values

from llmproxy.common.masking import mask_token
from llmproxy.providers import APIS, credential_problems


# Every API's default upstreams (llmproxy/providers/), and this machine.
def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Two workers per core, 2 to 8. A worker is one GIL: under load it spends part of its time
# waiting for its own GIL between I/O calls, so one worker per core leaves cores idle; with two
# per core, 16 clients got some 30 % more calls a second through a 2-core machine than with two
# workers (docs/performance.rst). Past 8, more workers mostly cost memory and sessions.db turns.
DEFAULT_WORKERS = min(8, max(2, 2 * usable_cores()))

DEFAULT_ALLOWED_UPSTREAMS = (
    *sorted(host for api in APIS for host in api.HOSTS),
    "localhost",
    "127.0.0.1",
    "::1",
)


class SettingsError(ValueError):
    """A setting has a value the proxy cannot use. ``str()`` is the one line to show."""

    def __init__(self, variable: str, value: str, accepted: str):
        self.variable = variable
        self.value = value
        self.accepted = accepted
        super().__init__(f"{variable}={value!r} is not valid: {accepted}")


# --- parsers: each takes the raw string and returns the value, or raises ValueError(accepted) ---

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_duration(text: str) -> float:
    """``250ms``, ``5s``, ``1m30s``, ``1h``, ``7d`` → seconds. A bare ``0`` means zero."""
    accepted = "a duration such as 250ms, 5s or 1m30s"
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            raise ValueError(accepted)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(accepted)
    return total


def parse_size(text: str) -> int:
    """``262144``, ``256KiB``, ``64MiB``, ``1GiB`` → bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError("a size in bytes such as 262144, 256KiB or 64MiB")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("one of true/false, 1/0, yes/no")


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        accepted = f"a whole number from {low} to {high}" if high else f"a whole number, at least {low}"
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(accepted) from None
        if value < low or (high is not None and value > high):
            raise ValueError(accepted)
        return value

    return parse


def _min_size(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_size(text)
        if value < low:
            raise ValueError(f"a size of at least {low} bytes, such as 256KiB")
        return value

    return parse


def _positive(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        value = parse(text)
        if value <= 0:
            raise ValueError(f"{what} greater than zero")
        return value

    return check


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise ValueError("one of " + ", ".join(LOG_LEVELS))
    return value


def _retention(text: str) -> float | None:
    """A duration, or ``off`` (keep everything)."""
    if text.strip().lower() == "off":
        return None
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("a duration such as 30d, or off")
    return value


def _text(text: str) -> str:
    return text.strip()


def _nonempty_text(text: str) -> str:
    if not text.strip():
        raise ValueError("a non-empty value")
    return text.strip()


def _label_value(text: str) -> str:
    # Loki refuses label values longer than 2,048 bytes; anything printable is fine.
    value = text.strip()
    if not value or len(value.encode()) > 2048 or not value.isprintable():
        raise ValueError("a printable value of 1 to 2048 bytes")
    return value


_AWS_REGION = re.compile(r"[a-z]{2,4}(-[a-z]+)+-\d{1,2}")


def _aws_region(text: str) -> str:
    value = text.strip()
    if not _AWS_REGION.fullmatch(value):
        raise ValueError("an AWS region such as us-east-1")
    return value


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return value

    return parse


_LABEL = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\*)"
_HOST_PATTERN = re.compile(rf"(\*|{_LABEL}(\.{_LABEL})*|[0-9A-Fa-f:]+)")


def parse_host_list(text: str) -> tuple[str, ...]:
    """Comma-separated host names; ``*.example.com`` wildcards, a ``*`` label
    (``bedrock-runtime.*.amazonaws.com``) and ``*`` are allowed (llmproxy/common/hosts.py)."""
    hosts = tuple(h.strip().lower().strip("[]") for h in text.split(",") if h.strip())
    if not hosts or not all(_HOST_PATTERN.fullmatch(h) for h in hosts):
        raise ValueError("comma-separated host names, e.g. api.anthropic.com,*.example.com or *")
    return hosts


def _url(text: str) -> str:
    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL such as http://localhost:3100")
    return value


def loki_push_url(url: str) -> str:
    """A bare ``http://host:3100`` gets Loki's push path; a URL with a path is kept as given."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/loki/api/v1/push")
    return urlunsplit(parts)


def redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part, for logs and ``check-config``."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _secret(text: str) -> str:
    value = text.strip()
    if len(value) < 16 or not value.isprintable() or " " in value:
        raise ValueError("at least 16 printable characters without spaces, e.g. from: openssl rand -hex 16")
    return value


def local_url(host: str, port: int) -> str:
    """``http://…`` where a client on this machine reaches a server bound to ``host``: a
    wildcard address is reached at loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether a bind address or host name reaches this machine only."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --- the settings objects ---


@dataclass(frozen=True)
class LokiSettings:
    """What the Loki exporter needs."""

    enabled: bool = False
    url: str | None = None
    batch_size: int = 1000
    batch_bytes: int = 1024**2
    batch_wait: float = 5.0
    retry_max: int = 5
    use_gzip: bool = True
    environment: str = "development"
    auth_token: str | None = None
    username: str | None = None
    password: str | None = None
    tenant_id: str | None = None
    buffer_size: int = 10_000
    buffer_bytes: int = 64 * 1024**2
    shutdown_timeout: float = 30.0
    spool_dir: Path | None = None
    spool_max_bytes: int = 1024**3
    max_line_bytes: int = 256 * 1024
    structured_metadata: str = "auto"   # auto | true | false
    # Backoff is a value, not scattered sleeps (the spec's numbers).
    backoff_min: float = 0.1
    backoff_max: float = 10.0
    jitter: float = 0.25
    push_timeout: float = 10.0

    @property
    def push_url(self) -> str | None:
        return loki_push_url(self.url) if self.url else None


DEFAULT_LOG_DIR = "~/.llm-provider-logs"


@dataclass(frozen=True)
class ExplorerSettings:
    """What ``llm-proxy explore`` needs: where it listens, and the token a request must carry
    (without one it listens on loopback only)."""

    host: str = "127.0.0.1"
    port: int = 8081
    token: str | None = None

    def check_exposure(self) -> None:
        """Refuse a non-loopback address without a token (:class:`SettingsError`)."""
        if not self.token and not is_loopback(self.host):
            raise SettingsError("LLM_PROXY_EXPLORER_HOST", self.host,
                                "a loopback address (127.0.0.1, ::1, localhost) unless "
                                "LLM_PROXY_EXPLORER_TOKEN is set")


@dataclass(frozen=True)
class Settings:
    """The proxy's whole configuration, built once by :func:`load_settings`."""

    host: str = "127.0.0.1"
    port: int = 8080
    log_dir: Path = Path(DEFAULT_LOG_DIR).expanduser()
    workers: int = DEFAULT_WORKERS
    threads: int = 128
    machine_id: str = ""
    allowed_upstreams: tuple[str, ...] = DEFAULT_ALLOWED_UPSTREAMS
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    env_file: Path | None = None
    log_level: str = "info"
    log_compress_after: float = 2 * 86400.0
    log_retention: float | None = None  # None: keep everything
    # AWS Bedrock: the proxy signs its clients' calls (llmproxy/providers/bedrock.py). The region
    # of calls that do not name one; a profile of ~/.aws instead of the default credential chain.
    bedrock_region: str | None = None
    bedrock_profile: str | None = None
    loki: LokiSettings = LokiSettings()
    explorer: ExplorerSettings = ExplorerSettings()

    @property
    def base_url(self) -> str:
        return local_url(self.host, self.port)

    @property
    def graceful_timeout(self) -> int:
        """gunicorn's graceful timeout: the Loki flush budget on shutdown, plus time for in-flight
        calls to finish before it."""
        return int(self.loki.shutdown_timeout) + 15

    @property
    def run_dir(self) -> Path:
        """Where workers leave small runtime files (per-worker exporter stats)."""
        return self.log_dir / ".run"


@dataclass(frozen=True)
class Variable:
    """One environment variable: which setting it fills and how its text is parsed.
    (Defaults are the dataclasses'; docs/configuration.rst documents every variable.)"""

    name: str
    field: str
    parse: Callable[[str], Any]
    secret: bool = False


def _default_machine_id() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


_DURATION = _positive(parse_duration, "a duration")
_SIZE_ARG = _positive(parse_size, "a size")


def _path(text: str) -> Path:
    return Path(_nonempty_text(text)).expanduser()


VARIABLES: tuple[Variable, ...] = (
    Variable("LLM_PROXY_HOST", "host", _nonempty_text),
    Variable("LLM_PROXY_PORT", "port", _int_range(1, 65535)),
    Variable("LLM_PROXY_LOG_DIR", "log_dir", _path),
    Variable("LLM_PROXY_WORKERS", "workers", _int_range(1, 64)),
    Variable("LLM_PROXY_THREADS", "threads", _int_range(1, 1024)),
    Variable("LLM_PROXY_MACHINE_ID", "machine_id", _label_value),
    Variable("LLM_PROXY_ALLOWED_UPSTREAMS", "allowed_upstreams", parse_host_list),
    Variable("LLM_PROXY_UPSTREAM_CONNECT_TIMEOUT", "upstream_connect_timeout", _DURATION),
    Variable("LLM_PROXY_UPSTREAM_READ_TIMEOUT", "upstream_read_timeout", _DURATION),
    Variable("LLM_PROXY_ENV_FILE", "env_file", _path),
    Variable("LLM_PROXY_LOG_LEVEL", "log_level", _log_level),
    Variable("LLM_PROXY_LOG_COMPRESS_AFTER", "log_compress_after", _DURATION),
    Variable("LLM_PROXY_LOG_RETENTION", "log_retention", _retention),
    Variable("LLM_PROXY_BEDROCK_REGION", "bedrock_region", _aws_region),
    Variable("LLM_PROXY_BEDROCK_PROFILE", "bedrock_profile", _nonempty_text),
    Variable("LLM_PROXY_LOKI_ENABLED", "loki.enabled", parse_bool),
    Variable("LLM_PROXY_LOKI_URL", "loki.url", _url),
    Variable("LLM_PROXY_LOKI_BATCH_SIZE", "loki.batch_size", _int_range(1, 100_000)),
    Variable("LLM_PROXY_LOKI_BATCH_BYTES", "loki.batch_bytes", _SIZE_ARG),
    Variable("LLM_PROXY_LOKI_BATCH_WAIT", "loki.batch_wait", _DURATION),
    Variable("LLM_PROXY_LOKI_RETRY_MAX", "loki.retry_max", _int_range(0, 100)),
    Variable("LLM_PROXY_LOKI_USE_GZIP", "loki.use_gzip", parse_bool),
    Variable("LLM_PROXY_LOKI_ENVIRONMENT", "loki.environment", _label_value),
    Variable("LLM_PROXY_LOKI_AUTH_TOKEN", "loki.auth_token", _text, secret=True),
    Variable("LLM_PROXY_LOKI_USERNAME", "loki.username", _text),
    Variable("LLM_PROXY_LOKI_PASSWORD", "loki.password", _text, secret=True),
    Variable("LLM_PROXY_LOKI_TENANT_ID", "loki.tenant_id", _text),
    Variable("LLM_PROXY_LOKI_BUFFER_SIZE", "loki.buffer_size", _int_range(1, 10_000_000)),
    Variable("LLM_PROXY_LOKI_BUFFER_BYTES", "loki.buffer_bytes", _SIZE_ARG),
    Variable("LLM_PROXY_LOKI_SHUTDOWN_TIMEOUT", "loki.shutdown_timeout", _DURATION),
    Variable("LLM_PROXY_LOKI_BACKOFF_MIN", "loki.backoff_min", _DURATION),
    Variable("LLM_PROXY_LOKI_BACKOFF_MAX", "loki.backoff_max", _DURATION),
    Variable("LLM_PROXY_LOKI_TIMEOUT", "loki.push_timeout", _DURATION),
    Variable("LLM_PROXY_LOKI_SPOOL_DIR", "loki.spool_dir", _path),
    Variable("LLM_PROXY_LOKI_SPOOL_MAX_BYTES", "loki.spool_max_bytes", _SIZE_ARG),
    Variable("LLM_PROXY_LOKI_MAX_LINE_BYTES", "loki.max_line_bytes", _min_size(1024)),
    Variable("LLM_PROXY_LOKI_STRUCTURED_METADATA", "loki.structured_metadata", _one_of("auto", "true", "false")),
    Variable("LLM_PROXY_EXPLORER_HOST", "explorer.host", _nonempty_text),
    Variable("LLM_PROXY_EXPLORER_PORT", "explorer.port", _int_range(1, 65535)),
    Variable("LLM_PROXY_EXPLORER_TOKEN", "explorer.token", _secret, secret=True),
)

def _env_file(environ: Mapping[str, str]) -> Path:
    """The dotenv file: LLM_PROXY_ENV_FILE (from the real environment), else .env here."""
    return Path(environ.get("LLM_PROXY_ENV_FILE") or ".env").expanduser()


def user_settings_file(environ: Mapping[str, str] | None = None) -> Path:
    """The user's own settings: ``$XDG_CONFIG_HOME/llm-proxy/llm-proxy.env`` (``~/.config/…``),
    where ``llm-proxy setup`` keeps the workstation's port and its user service reads them."""
    environ = os.environ if environ is None else environ
    config = environ.get("XDG_CONFIG_HOME") or Path(environ.get("HOME") or Path.home()) / ".config"
    return Path(config).expanduser() / "llm-proxy" / "llm-proxy.env"


def settings_files(environ: Mapping[str, str]) -> list[Path]:
    """The dotenv files read, lowest first: the one LLM_PROXY_ENV_FILE names alone (a service's);
    else the user's settings file, then ``.env`` in the working directory."""
    if environ.get("LLM_PROXY_ENV_FILE"):
        return [_env_file(environ)]
    return [user_settings_file(environ), _env_file(environ)]


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment over the settings files' values (the real environment wins)."""
    environ = dict(os.environ if environ is None else environ)
    merged: dict[str, str] = {}
    for path in settings_files(environ):
        if path.is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(environ)
    return merged


def load_settings(environ: Mapping[str, str] | None = None, *, create_dirs: bool = True) -> Settings:
    """Build the settings from the environment (and ``.env``); raise :class:`SettingsError`."""
    env = read_environment(environ)
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = env.get(var.name)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[var.field] = var.parse(raw)
        except ValueError as exc:  # a secret is named masked, even when it is a bad one
            raise SettingsError(var.name, mask_token(raw.strip()) if var.secret else raw, str(exc)) from None

    loki_values = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("loki.")}
    explorer_values = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("explorer.")}
    top = {k: v for k, v in values.items() if "." not in k}
    top.setdefault("machine_id", _default_machine_id())
    top.setdefault("env_file", _env_file(env))
    settings = Settings(**top)

    loki = LokiSettings(**loki_values)
    if loki.enabled and not loki.url:
        raise SettingsError("LLM_PROXY_LOKI_URL", "", "a URL is required when LLM_PROXY_LOKI_ENABLED is true")
    if loki.spool_dir is None:
        loki = replace(loki, spool_dir=settings.log_dir / ".loki-spool")
    settings = replace(settings, loki=loki, explorer=ExplorerSettings(**explorer_values))

    if create_dirs:
        _ensure_dir("LLM_PROXY_LOG_DIR", settings.log_dir)
        if loki.enabled:
            _ensure_dir("LLM_PROXY_LOKI_SPOOL_DIR", loki.spool_dir)
    return settings


def _ensure_dir(variable: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SettingsError(variable, str(path), f"a directory that can be created and written ({reason})") from None


def describe(settings: Settings) -> list[tuple[str, str]]:
    """``(variable, effective value)`` pairs for ``check-config``, secrets masked."""
    rows = []
    for var in VARIABLES:
        obj: Any = settings
        for part in var.field.split("."):
            obj = getattr(obj, part)
        if obj is None and var.parse is _retention:
            shown = "off"
        elif obj is None or obj == "":
            shown = "-"
        elif var.secret:
            shown = mask_token(str(obj))
        elif isinstance(obj, tuple):
            shown = ",".join(obj)
        elif isinstance(obj, bool):
            shown = "true" if obj else "false"
        elif var.name == "LLM_PROXY_LOKI_URL":
            shown = redact_url(settings.loki.push_url or "")
        else:
            shown = str(obj)
        rows.append((var.name, shown))
    return rows


def option_type(name: str) -> Callable[[str], Any]:
    """An argparse ``type`` for a command's option that sets what variable ``name`` sets: the
    variable's own parser, so that both are held to the same rule."""
    variable = next(var for var in VARIABLES if var.name == name)

    def parse(text: str) -> Any:
        try:
            return variable.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: {exc}") from None

    return parse


EXIT_BAD_CONFIG = 2


def load_settings_or_exit(environ: Mapping[str, str] | None = None, *, create_dirs: bool = True,
                          credentials: bool = False) -> Settings:
    """Settings (of ``environ``, default the process's), or one line on stderr and exit status 2
    (no traceback) when one is bad. With ``credentials`` (the server's start), an API configured
    to sign its calls (Bedrock) must also find its credentials."""
    try:
        settings = load_settings(environ, create_dirs=create_dirs)
    except SettingsError as exc:
        print(f"llm-proxy: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_CONFIG) from None
    problems = credential_problems(settings) if credentials else []
    if problems:
        print(f"llm-proxy: {problems[0]}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_CONFIG)
    return settings
