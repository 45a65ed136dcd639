"""Two minutes of the soak (tests/soak.py) beside the suite: mixed load through the real proxy into
a real Loki, with two Loki outages, two HUPs and two kill -9s; no manual step afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import soak


def test_two_minutes_of_mixed_load_with_outages_hups_and_kills_lose_nothing(tmp_path):
    run = soak.BACKGROUND or soak.start_background(tmp_path)  # started by conftest.py at collection
    if run.unavailable:
        if os.environ.get("CI"):
            pytest.fail(run.unavailable)
        pytest.skip(run.unavailable)
    report = run.result(timeout=600)
    print("\n".join(soak.describe(soak.Report(**{k: v for k, v in report.items() if k != "ok"}))))
    assert report["session_problems"] == []
    assert (report["loki_missing"], report["loki_duplicates"], report["loki_unexpected"]) == (0, 0, 0)
    assert report["loki_complete_after"] is not None
    assert report["recovered"] > 0  # the killed workers held entries, and they were pushed for them
    assert report["calls"] > 500 and report["failed"] <= 20
    # Flat: after two HUPs and two kills, the workers are no bigger than before the first fault.
    warm, end = report["warm"], report["end"]
    assert end["worker_rss_mib"] <= warm["worker_rss_mib"] * 1.5 + 20
    assert end["worker_fds"] <= warm["worker_fds"] + 20 and end["master_fds"] <= warm["master_fds"] + 5
    assert Path(run.workdir, "report.json").exists()
