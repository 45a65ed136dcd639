"""llm-proxy prune: old session files compressed in place, expired ones deleted, nothing needed lost."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from proxyproc import wait_until

from llmproxy.loki.backfill import main as backfill_main
from llmproxy.loki.batch import LokiEntry
from llmproxy.loki.spool import Spool
from llmproxy.record import logtree
from llmproxy.server.prune import Pruner
from llmproxy.settings import load_settings

LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))
DAY = 86400


def call(server, fake, session, text="hi"):
    resp = requests.post(f"{server.url}/anthropic/{fake.upstream}/v1/messages",
                         json={"model": "m", "messages": [{"role": "user", "content": text}]},
                         headers={"X-Claude-Code-Session-Id": session}, timeout=10)
    assert resp.status_code == 200


def settings_for(log_dir, **env):
    return load_settings({"LLM_PROXY_LOG_DIR": str(log_dir), "LLM_PROXY_ENV_FILE": "/nonexistent", **env},
                         create_dirs=False)


def age(files: logtree.SessionFiles, seconds: float) -> None:
    for path in files.paths:
        t = time.time() - seconds
        os.utime(path, (t, t))


def snapshot(log_dir) -> dict[str, bytes]:
    return {f.session: logtree.read_session(f) for f in logtree.sessions(log_dir)}


def test_prune_compresses_old_files_readably_and_skips_one_still_written(start_proxy, fake_provider, real_loki):
    machine = f"prune-{os.getpid()}-{time.time_ns()}"
    server = start_proxy({"LLM_PROXY_MACHINE_ID": machine})
    for i in range(6):
        call(server, fake_provider, f"s-{i % 3}", "words " * 2000 * (i + 1))
    # each response is logged once its last byte is sent: wait for all 3 × (start + 2 × 2) lines
    wait_until(lambda: sum(d.count(b"\n") for d in snapshot(server.log_dir).values()) == 15, 10,
               message="all entries written")
    before = snapshot(server.log_dir)
    sessions = list(logtree.sessions(server.log_dir))
    assert len(sessions) == 3
    # Prune runs three days later; the third session was written a minute before that (it went on
    # past midnight, and its file stays under the day it started).
    age(sessions[2], -3 * DAY + 60)
    out = io.StringIO()
    report = Pruner(settings_for(server.log_dir), dry_run=False, out=out, now=time.time() + 3 * DAY).run()
    assert (report.compressed, report.kept, report.errors) == (2, 1, 0), out.getvalue()
    after = list(logtree.sessions(server.log_dir))
    assert [f.compressed is not None for f in after] == [True, True, False]
    assert all(f.plain is None for f in after[:2]) and after[2].plain is not None
    assert snapshot(server.log_dir) == before  # every byte reads back
    assert report.freed > 0 and f"{sessions[2].session}: keep uncompressed: written" in out.getvalue()
    # zstd -d reads it too (the window is within its default limit)
    if subprocess.run(["sh", "-c", "command -v zstd"], capture_output=True).returncode == 0:
        raw = subprocess.run(["zstd", "-dc", str(after[0].compressed)], capture_output=True, check=True).stdout
        assert raw == before[after[0].session]

    # The proxy goes on writing a compressed session (its client resumed it): a plain file
    # beside the .zst, which the next prune appends as one more frame.
    client = json.loads(before[after[0].session].split(b"\n")[0])["client_session_id"]
    call(server, fake_provider, client, "resumed")
    resumed = next(f for f in logtree.sessions(server.log_dir) if f.session == after[0].session)
    assert resumed.compressed is not None and resumed.plain is not None
    grown = wait_until(lambda: (d := logtree.read_session(resumed)) and d.count(b"\n") ==
                       before[resumed.session].count(b"\n") + 2 and d, 10, message="request and response")
    assert grown.startswith(before[resumed.session]) and b"resumed" in grown[len(before[resumed.session]):]
    Pruner(settings_for(server.log_dir), dry_run=False, out=io.StringIO(), now=time.time() + 3 * DAY).run()
    again = next(f for f in logtree.sessions(server.log_dir) if f.session == resumed.session)
    assert again.plain is None and logtree.read_session(again) == grown

    # loki-backfill reads the compressed files: every line reaches Loki byte for byte.
    out = io.StringIO()
    code = backfill_main(["--log-dir", str(server.log_dir)], out=out,
                         environ={"LLM_PROXY_LOKI_URL": real_loki.url, "LLM_PROXY_ENV_FILE": "/nonexistent",
                                  "LLM_PROXY_LOG_DIR": str(server.log_dir)})
    assert code == 0, out.getvalue()
    lines = [ln for data in snapshot(server.log_dir).values() for ln in data.decode().splitlines()]
    assert sorted(line for _, line in real_loki.lines(f'{{app="llm-proxy", machine="{machine}"}}')) == sorted(lines)


def test_retention_deletes_only_what_is_no_longer_needed(tmp_path):
    log_dir = tmp_path / "logs"
    now = time.time()
    old_day = time.strftime("%Y-%m-%d", time.gmtime(now - 40 * DAY))
    paths = {}
    for name in ("20990101-000000-aaaaaaaa", "20990101-000000-bbbbbbbb", "20990101-000000-cccccccc"):
        path = log_dir / "api.anthropic.com" / old_day / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'{"type":"session_start"}\n' * 50)
        paths[name] = path
    for name in ("20990101-000000-aaaaaaaa", "20990101-000000-bbbbbbbb"):
        t = now - 35 * DAY
        os.utime(paths[name], (t, t))
    # the third was appended to last week (a resumed session): not expired yet
    os.utime(paths["20990101-000000-cccccccc"], (now - 7 * DAY, now - 7 * DAY))
    spool_dir = tmp_path / "spool"
    env = {"LLM_PROXY_LOG_RETENTION": "30d", "LLM_PROXY_LOKI_ENABLED": "true",
           "LLM_PROXY_LOKI_URL": "http://127.0.0.1:9", "LLM_PROXY_LOKI_SPOOL_DIR": str(spool_dir)}
    # an entry from before the files' last write still waits in the spool (Loki was away)
    Spool(spool_dir, 10**9).write([LokiEntry(int((now - 36 * DAY) * 1e9), b"{}", (("app", "llm-proxy"),))])

    out = io.StringIO()
    report = Pruner(settings_for(log_dir, **env), dry_run=False, out=out).run()
    assert (report.deleted, report.kept) == (0, 3), out.getvalue()
    assert "keep: its entries may still wait in the Loki spool" in out.getvalue()
    assert all(p.exists() for p in paths.values())

    for f in Spool(spool_dir, 10**9).files():
        f.path.unlink()  # the spool was replayed
    dry = io.StringIO()
    report = Pruner(settings_for(log_dir, **env), dry_run=True, out=dry).run()
    assert (report.deleted, report.kept, report.freed) == (2, 1, 2 * 50 * 25)
    assert "would delete" in dry.getvalue() and all(p.exists() for p in paths.values())
    report = Pruner(settings_for(log_dir, **env), dry_run=False, out=io.StringIO()).run()
    assert report.deleted == 2
    assert [p.exists() for p in paths.values()] == [False, False, True]


def test_prune_command_dry_run_prints_actions_and_bytes(tmp_path):
    log_dir = tmp_path / "logs"
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 5 * DAY))
    path = log_dir / "api.openai.com" / day / "20990101-000000-dddddddd.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"type":"request","body":"%s"}\n' % (b"abc" * 10000))
    os.utime(path, (time.time() - 4 * DAY,) * 2)
    env = {**os.environ, "LLM_PROXY_LOG_DIR": str(log_dir), "LLM_PROXY_ENV_FILE": "/nonexistent"}
    dry = subprocess.run([LLM_PROXY, "prune", "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"api.openai.com/{day}/20990101-000000-dddddddd: would compress 29.3 KiB →" in dry.stdout
    assert "prune: 1 compressed, 0 deleted, 0 kept, 0 failed; would free" in dry.stdout
    assert path.exists() and not path.with_name(path.stem + ".jsonl.zst").exists()
    real = subprocess.run([LLM_PROXY, "prune"], capture_output=True, text=True, env=env, timeout=60)
    assert real.returncode == 0 and "; freed" in real.stdout
    assert not path.exists() and path.with_name(path.name + ".zst").exists()
    bad = subprocess.run([LLM_PROXY, "prune"], capture_output=True, text=True, timeout=60,
                         env={**env, "LLM_PROXY_LOG_RETENTION": "forever"})
    assert bad.returncode == 2 and "LLM_PROXY_LOG_RETENTION='forever' is not valid" in bad.stderr
    assert subprocess.run([LLM_PROXY, "prune", "--help"], capture_output=True, timeout=60).returncode == 0


def test_an_unreadable_compressed_file_is_reported_not_lost(tmp_path):
    day_dir = tmp_path / "api.anthropic.com" / "2026-01-01"
    day_dir.mkdir(parents=True)
    (day_dir / "20260101-000000-eeeeeeee.jsonl.zst").write_bytes(b"not zstd at all")
    plain = day_dir / "20260101-000000-eeeeeeee.jsonl"
    plain.write_bytes(b'{"type":"request"}\n')
    os.utime(plain, (time.time() - 10 * DAY,) * 2)
    files = next(logtree.sessions(tmp_path))
    with pytest.raises(ValueError, match="not readable as zstd"):
        logtree.read_session(files)
    out = io.StringIO()
    report = Pruner(settings_for(tmp_path), dry_run=False, out=out).run()
    assert report.errors == 1 and "failed, left as it was: not readable as zstd" in out.getvalue()
    assert plain.read_bytes() == b'{"type":"request"}\n'


def _line(n: int) -> bytes:
    return b'{"type":"request","n":%d,"pad":"%s"}' % (n, b"x" * (n % 700))


def _write(log_dir, path: str, n: int) -> None:
    from types import SimpleNamespace

    from llmproxy.record.filelog import FileLogger

    assert FileLogger(log_dir).write(SimpleNamespace(path=path, line=_line(n))) is None


def _numbers(data: bytes) -> list[int]:
    return [json.loads(line)["n"] for line in data.splitlines()]


OLD_DAY = "2026-01-01"
SESSION = "20260101-000000-ffffffff"
LATER = time.time() + 400 * DAY  # prune runs long after: every file is old enough


def test_a_line_written_while_prune_swaps_files_is_kept_and_read_once(tmp_path, monkeypatch):
    """The moments that lost a line (written between prune's last check and the removal) or showed
    one twice (read between the .zst's rename and the removal): both made to happen."""
    import llmproxy.server.prune

    path = f"api.anthropic.com/{OLD_DAY}/{SESSION}.jsonl"
    for n in range(50):
        _write(tmp_path, path, n)
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        _write(tmp_path, path, 50)           # the proxy appends, just before the swap
        real_replace(src, dst)
        seen.append(_numbers(logtree.read_session(next(logtree.sessions(tmp_path)))))  # a reader, just after

    monkeypatch.setattr(llmproxy.server.prune.os, "replace", replace)
    report = Pruner(settings_for(tmp_path), dry_run=False, out=io.StringIO(), now=LATER).run()
    assert (report.compressed, report.errors) == (1, 0)
    assert seen == [list(range(51))]
    files = next(logtree.sessions(tmp_path))
    assert files.compressed is not None and files.plain is not None and files.aside is None
    assert _numbers(logtree.read_session(files)) == list(range(51))
    monkeypatch.setattr(llmproxy.server.prune.os, "replace", real_replace)
    Pruner(settings_for(tmp_path), dry_run=False, out=io.StringIO(), now=LATER).run()
    files = next(logtree.sessions(tmp_path))
    assert files.plain is None and _numbers(logtree.read_session(files)) == list(range(51))


def test_prune_running_while_the_proxy_writes_and_readers_read_loses_and_doubles_nothing(tmp_path):
    """One writer appends numbered lines as fast as it can while prune compresses the file again
    and again; every read shows lines 0..k, each once, in order."""
    import threading

    path = f"api.anthropic.com/{OLD_DAY}/{SESSION}.jsonl"
    _write(tmp_path, path, 0)
    stop = threading.Event()
    written, reads, problems = [1], [], []

    def writer():
        while not stop.is_set():
            _write(tmp_path, path, written[0])
            written[0] += 1

    def reader():
        while not stop.is_set():
            numbers = _numbers(logtree.read_session(next(logtree.sessions(tmp_path))))
            if numbers != list(range(len(numbers))):
                problems.append(numbers)
            reads.append(len(numbers))

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    compressed = 0
    try:
        for _ in range(8):
            report = Pruner(settings_for(tmp_path), dry_run=False, out=io.StringIO(), now=LATER).run()
            assert report.errors == 0
            compressed += report.compressed
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not problems, problems[0]
    assert compressed >= 4 and len(reads) >= 2 and written[0] > 100, (compressed, len(reads), written[0])
    assert _numbers(logtree.read_session(next(logtree.sessions(tmp_path)))) == list(range(written[0]))


def test_an_interrupted_prune_is_read_right_and_finished_by_the_next(tmp_path):
    import zstandard

    day = tmp_path / "api.anthropic.com" / OLD_DAY
    day.mkdir(parents=True)
    first = b"".join(_line(n) + b"\n" for n in range(10))
    second = b"".join(_line(n) + b"\n" for n in range(10, 20))
    third = b"".join(_line(n) + b"\n" for n in range(20, 30))
    zst = day / f"{SESSION}.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(first))
    # set aside, not compressed yet (the .zst is still as large as the name says); new lines went on
    aside = day / logtree.aside_name(SESSION, zst.stat().st_size)
    aside.write_bytes(second)
    (day / f"{SESSION}.jsonl").write_bytes(third)
    files = next(logtree.sessions(tmp_path))
    assert files.aside == aside and files.paths == [zst, aside, day / f"{SESSION}.jsonl"]
    assert _numbers(logtree.read_session(files)) == list(range(30))
    assert logtree.first_line(files) == _line(0)
    # compressed into the .zst already, the aside file not yet removed: not read twice
    grown = zst.read_bytes() + zstandard.ZstdCompressor().compress(second)
    done_day = tmp_path / "api.openai.com" / OLD_DAY
    done_day.mkdir(parents=True)
    (done_day / f"{SESSION}.jsonl.zst").write_bytes(grown)
    (done_day / aside.name).write_bytes(second)
    other = next(f for f in logtree.sessions(tmp_path) if f.upstream == "api.openai.com")
    assert _numbers(logtree.read_session(other)) == list(range(20))

    report = Pruner(settings_for(tmp_path), dry_run=False, out=io.StringIO(), now=LATER).run()
    assert report.errors == 0
    for f in logtree.sessions(tmp_path):
        assert f.aside is None and f.plain is None
    assert [_numbers(logtree.read_session(f)) for f in logtree.sessions(tmp_path)] == \
        [list(range(30)), list(range(20))]


def test_a_line_still_being_written_is_not_read(tmp_path):
    """A reader that catches a write half-way sees the lines before it, never half a line."""
    day = tmp_path / "127.0.0.1:9" / "2026-12-01"
    day.mkdir(parents=True)
    (day / "20261201-000000-0000abcd.jsonl").write_bytes(b'{"n":0}\n{"n":1}\n{"n":2, "half')
    assert logtree.read_session(next(logtree.sessions(tmp_path))) == b'{"n":0}\n{"n":1}\n'
