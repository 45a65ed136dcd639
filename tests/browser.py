"""A real headless Chromium for the explorer's pages (Debian's ``chromium``, driven by
Playwright; Playwright never downloads a browser here), and the explorer as a user starts it.

:class:`Browser` opens pages that record every console message and page error, and saves
screenshots into :data:`SHOTS` (printed by the tests that take them), to be looked at.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from proxyproc import ProxyServer, wait_until
from realclients import CACHE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("LLM_PROXY_SCREENSHOTS") or CACHE / "screenshots" / "explorer")
NARROW, WIDE = {"width": 390, "height": 844}, {"width": 1440, "height": 900}


def unavailable() -> str | None:
    if not Path(CHROMIUM).exists():
        return "chromium is not installed (./scripts/test installs Debian's chromium package)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (the test extra: pip install -e '.[test]')"
    return None


class Browser:
    """One Chromium; :meth:`page` opens a tab that keeps what went wrong in it."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.chromium = self._playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        self.problems: list[str] = []
        self.dialogs: list[str] = []

    def page(self, viewport: dict = WIDE):
        page = self.chromium.new_page(viewport=viewport)
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        return page

    def shot(self, page, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        # A whole-page picture taken while scrolled down draws the sticky header in mid-page.
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.chromium.close()
        self._playwright.stop()


class Explorer(ProxyServer):
    """``llm-proxy explore`` over a log dir, on a free loopback port, as a user starts it."""

    def __init__(self, workdir: Path, log_dir: Path, env: dict[str, str] | None = None):
        command = [str(Path(sys.executable).with_name("llm-proxy")), "explore", "--log-dir", str(log_dir)]
        super().__init__(workdir, env=env, command=command)
        self.log_dir = Path(log_dir)
        self.env["LLM_PROXY_EXPLORER_PORT"] = str(self.port)

    def wait_for_workers(self, timeout: float = 30.0) -> None:
        """One worker serves the pages: healthy is ready."""

    def get_json(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def wait_catalogued(self, sessions: int, timeout: float = 60.0) -> dict:
        """Until the sessions page lists at least ``sessions`` sessions, every call answered."""
        def listed():
            status, doc = self.get_json("/sessions.json")
            return doc if status == 200 and doc["total"] >= sessions else None

        return wait_until(listed, timeout, interval=0.2, message=f"{sessions} sessions in the catalog")
