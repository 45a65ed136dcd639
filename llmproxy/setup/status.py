"""``llm-proxy status``: how this user's installation is doing, gathered from what is there.

The running server (``/health``, its presence file: pid, start time), the service manager's
view of the service, the log tree (where, how big), today's sessions, calls and cost, the Loki
export (``/health/loki``) and where the shell integration and Codex's config are.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from llmproxy.loki.check import verdict
from llmproxy.record import logtree
from llmproxy.server import presence
from llmproxy.settings import Settings, redact_url
from llmproxy.setup import codex, probe, shells, textfile
from llmproxy.setup.installer import Installation

RUNNING, NOT_RUNNING = 0, 3   # like `systemctl status`


@dataclass
class Report:
    running: bool
    headline: str
    rows: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return RUNNING if self.running else NOT_RUNNING

    def text(self) -> str:
        width = max((len(label) for label, _ in self.rows), default=0)
        return "\n".join([self.headline, *(f"  {label:<{width}}  {value}" for label, value in self.rows)]) + "\n"


@dataclass(frozen=True)
class Today:
    """One UTC day's traffic."""

    sessions: int
    calls: int
    cost: float | None      # USD of the calls that have a cost; None: no call has one
    priced: int
    source: str

    def line(self) -> str:
        sessions = plural(self.sessions, "session")
        if not self.calls:
            return f"{sessions}, no calls ({self.source})"
        if self.cost is None:
            cost = "cost not recorded"
        else:
            cost = f"${self.cost:,.2f}" + (f" ({plural(self.calls - self.priced, 'call')} unpriced)"
                                          if self.priced < self.calls else "")
        return f"{sessions}, {plural(self.calls, 'call')}, {cost} ({self.source})"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


_COST = re.compile(rb'"cost":\{"total":(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)')
_REQUEST = b'{"type":"request"'
_RESPONSE = b'{"type":"response"'


def today(log_dir: Path, day: str | None = None) -> Today:
    """TODAY'S NUMBERS: the one place that knows where they come from.

    From the catalog (``{log_dir}/catalog.db``, issue "Usage and cost") when it exists, brought
    up to date first (only what the tree gained is read); else from today's day directories of
    the log tree. A status must stay quick, so it never builds a catalog from nothing."""
    day = day or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    try:
        from llmproxy.catalog import Catalog, catalog_path
    except ImportError:  # an llm-proxy without the catalog
        return _today_from_files(log_dir, day)
    if not catalog_path(log_dir).exists():
        return _today_from_files(log_dir, day)
    catalog = Catalog(log_dir)
    try:
        catalog.update()
        sessions, calls, priced, cost = catalog.db.execute(
            "SELECT count(DISTINCT session), count(*), count(cost), total(cost) FROM calls WHERE day = ?",
            (day,)).fetchone()
    finally:
        catalog.close()
    return Today(sessions, calls, cost if priced else None, priced, f"catalog, {day} UTC")


def _today_from_files(log_dir: Path, day: str) -> Today:
    """The sessions of the day directories named ``day`` (a session resumed today but started
    earlier counts on its first day), their requests, and ``cost.total`` of the responses."""
    sessions = calls = priced = 0
    cost = 0.0
    for upstream, name, directory in logtree.day_dirs(log_dir):
        if name != day:
            continue
        for files in logtree.sessions_in(upstream, name, directory):
            sessions += 1
            for line in logtree.read_session(files).split(b"\n"):
                if line.startswith(_REQUEST):
                    calls += 1
                elif line.startswith(_RESPONSE):
                    match = _COST.search(line, 0, 4096)
                    if match:
                        priced += 1
                        cost += float(match.group(1))
    return Today(sessions, calls, cost if priced else None, priced, f"log files, {day} UTC")


def tree_size(root: Path) -> tuple[int, int]:
    """``(bytes, files)`` under a directory."""
    total = count = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
                count += 1
            except OSError:
                pass
    return total, count


def log_tree(log_dir: Path) -> str:
    """Where the session logs are and how much they hold: ``~/.llm-provider-logs (2.0 KiB in 1 file)``."""
    size, files = tree_size(log_dir)
    return f"{log_dir} ({human_bytes(size)} in {plural(files, 'file')})"


def human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)} s"
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    return " ".join(p for p in parts if p)


def gather(installation: Installation, settings: Settings) -> Report:
    home = installation.home
    base = settings.base_url
    health = probe.health(base)
    here = presence.read(presence.path(settings))
    if here is not None and here.base_url != base:
        here = None   # another server's file: not the one at this port
    if health:
        pid = str(here.pid) if here else "?"
        up = human_duration(time.time() - here.started) if here else "?"
        report = Report(True, f"llm-proxy {health.get('version')} is running: pid {pid}, {base}, up {up}")
    else:
        report = Report(False, f"llm-proxy is not running: nothing answers at {base}")

    rows = report.rows
    services = [r["name"] for r in installation.manifest.all("service")]
    manager = installation.manager
    if not services:
        rows.append(("service", "none installed (llm-proxy setup installs one)"))
    elif manager is None or (why := manager.unavailable()):
        rows.append(("service", f"{', '.join(services)}: {why if manager else 'no service manager here'}"))
    else:
        for name in services:
            state = manager.state(name)
            rows.append(("service", f"{name} ({manager.kind}): {state.active}, "
                                    f"{'enabled' if state.installed else 'not enabled'}"))
        rows.append(("server log", manager.logs(services[0])))

    if settings.log_dir.is_dir():
        rows.append(("session logs", log_tree(settings.log_dir)))
    else:
        rows.append(("session logs", f"{settings.log_dir} (none yet)"))
    rows.append(("today", today(settings.log_dir).line()))

    if health:
        answer = probe.get_json(base, "/health/loki")
        said = verdict(answer[1], None, None, None, None)[1] if answer else "no answer"
        rows.append(("Loki export", said.removeprefix("Loki export ")))   # the row names it already
    else:
        rows.append(("Loki export", f"enabled, to {redact_url(settings.loki.push_url or '')}"
                                     if settings.loki.enabled else "disabled"))

    installed = shells.installed_in(home)
    rows.append(("shells", ", ".join(home.short(p) for p in installed) if installed
                 else "not set up (llm-proxy setup)"))
    config = textfile.read(home.codex_config) or ""
    rows.append(("codex", f"{home.short(home.codex_config)} (model_providers.{codex.PROVIDER})"
                 if f"model_providers.{codex.PROVIDER}" in config else "not set up (llm-proxy setup --codex)"))
    return report
