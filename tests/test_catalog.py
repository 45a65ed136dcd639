"""The catalog (llmproxy/catalog/): ``catalog.db`` kept up with the JSONL tree, incrementally,
through prune, deletions and its own deletion, handing each new entry to indexers once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import gentree
import pytest
from genai_prices import extract_usage

from llmproxy.catalog import Catalog
from llmproxy.record import logtree, tail
from llmproxy.record.filelog import FileLogger
from llmproxy.server.prune import Pruner
from llmproxy.settings import load_settings

DAY = 86400
LATER = time.time() + 400 * DAY  # prune runs long after: every file is old enough


class Recorder:
    """An indexer that remembers every entry it was handed, and what it was told to forget."""

    name = "recorder"
    version = 1

    def __init__(self):
        self.entries: list[tuple[str, str, int | None, bytes]] = []
        self.forgotten: list[str] = []

    def create(self, db):
        db.execute("CREATE TABLE IF NOT EXISTS recorder_lines (session TEXT, line BLOB)")

    def add(self, db, entry):
        self.entries.append((entry.session, entry.kind, entry.seq, entry.line))
        db.execute("INSERT INTO recorder_lines VALUES (?, ?)", (entry.session, entry.line))

    def forget(self, db, session):
        self.forgotten.append(session)
        db.execute("DELETE FROM recorder_lines WHERE session = ?", (session,))


def settings_for(log_dir, **env):
    return load_settings({"LLM_PROXY_LOG_DIR": str(log_dir), "LLM_PROXY_ENV_FILE": "/nonexistent", **env},
                         create_dirs=False)


def prune(log_dir) -> None:
    report = Pruner(settings_for(log_dir), dry_run=False, out=io.StringIO(), now=LATER).run()
    assert report.errors == 0


def truth_tokens(call: gentree.Call) -> tuple[int, int, int, int]:
    """(input, output, cache write, cache read) of a generated call's usage, by hand."""
    u = call.usage or {}
    if "cache_creation_input_tokens" in u or call.path == "/v1/messages":
        return (u.get("input_tokens", 0), u.get("output_tokens", 0), u.get("cache_creation_input_tokens", 0),
                u.get("cache_read_input_tokens", 0))
    if "prompt_tokens" in u:
        cached = u.get("prompt_tokens_details", {}).get("cached_tokens", 0)
        return u["prompt_tokens"] - cached, u["completion_tokens"], 0, cached
    cached = u.get("input_tokens_details", {}).get("cached_tokens", 0)
    return u.get("input_tokens", 0) - cached, u.get("output_tokens", 0), 0, cached


def truth_cost(call: gentree.Call) -> float | None:
    """genai-prices' own result for the usage (its extractor for that API)."""
    if call.usage is None:
        return None
    flavor = "default" if call.path == "/v1/messages" else "chat" if "prompt_tokens" in call.usage else "responses"
    provider = "anthropic" if call.path == "/v1/messages" else "openai"
    try:
        return float(extract_usage({"model": call.model, "usage": call.usage}, provider_id=provider,
                                   api_flavor=flavor).calc_price().total_price)
    except (LookupError, ValueError):
        return None


def sums(db, where: str = "1", args=()) -> tuple:
    return db.execute(f"SELECT count(*), sum(input), sum(output), sum(cache_write), sum(cache_read), "
                      f"round(coalesce(sum(cost), 0), 9), sum(cost IS NULL AND input IS NOT NULL) FROM calls "
                      f"WHERE answered AND {where}", args).fetchone()


def expected(calls: list[gentree.Call]) -> tuple:
    tokens = [truth_tokens(c) for c in calls if c.usage is not None]
    costs = [truth_cost(c) for c in calls]
    return (len(calls), *(sum(t[i] for t in tokens) for i in range(4)),
            round(sum(c for c in costs if c is not None), 9),
            sum(1 for c, cost in zip(calls, costs) if c.usage is not None and cost is None))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("tree")
    return gentree.generate(log_dir, long=2, calls=40, short=40, days=3, seed=7)


@pytest.mark.parametrize("legacy", [False, True], ids=["entries-with-cost", "entries-before-cost"])
def test_every_call_is_catalogued_with_the_usage_and_cost_it_had(tmp_path, legacy):
    """Sums per session equal the generated usage, token by token, and genai-prices' own price
    of it; entries written before entries had ``cost`` are priced when catalogued."""
    tree = gentree.generate(tmp_path / "logs", long=1, calls=30, short=30, days=3, seed=3, legacy=legacy)
    catalog = Catalog(tree.log_dir, indexers=[])
    stats = catalog.update()
    assert (stats.read, stats.skipped, stats.failed) == (len(tree.sessions), 0, 0)
    assert sums(catalog.db) == expected(tree.calls)
    for session in tree.sessions:
        assert sums(catalog.db, "session = ?", (session,)) == expected([c for c in tree.calls if c.session == session])
    clients = dict(catalog.db.execute("SELECT client, count(*) FROM calls GROUP BY client").fetchall())
    assert clients == {name: sum(1 for c in tree.calls if c.client == name) for name in {c.client for c in tree.calls}}
    assert catalog.db.execute("SELECT count(*), sum(calls) FROM sessions").fetchone() == \
        (len(tree.sessions), len(tree.calls))


def test_an_update_with_nothing_new_opens_no_file(generated, tmp_path, monkeypatch):
    catalog = Catalog(generated.log_dir, indexers=[], path=tmp_path / "catalog.db")
    catalog.update()
    opened = []
    real_open = tail._consistent
    monkeypatch.setattr(tail, "_consistent", lambda *a: opened.append(a) or real_open(*a))
    stats = catalog.update()
    assert (stats.sessions, stats.read, stats.lines, opened) == (len(generated.sessions), 0, 0, [])


def _append(log_dir: Path, files: logtree.SessionFiles, line: bytes) -> None:
    path = (files.plain or files.compressed.with_name(files.session + ".jsonl"))
    with open(path, "ab") as f:
        f.write(line)


def _response_line(session: str, seq: int, usage: dict, model="claude-haiku-4-5") -> bytes:
    doc = {"type": "response", "seq": seq, "status": 200, "model": model, "usage": usage,
           "_meta": {"ts": "2026-12-01T10:00:00.000000000Z", "machine": "m", "host": "api.anthropic.com",
                     "session": session}}
    return json.dumps(doc, separators=(",", ":")).encode()


def test_a_half_written_line_waits_and_a_corrupt_one_is_counted(tmp_path):
    tree = gentree.generate(tmp_path / "logs", long=0, short=3, days=1, seed=5)
    catalog = Catalog(tree.log_dir, indexers=[])
    catalog.update()
    files = next(f for f in logtree.sessions(tree.log_dir) if f.upstream == "api.anthropic.com")
    line = _response_line(files.session, 99, {"input_tokens": 1000, "output_tokens": 10})
    _append(tree.log_dir, files, line[:40])  # the proxy is writing it
    assert (catalog.update().lines, catalog.update().skipped) == (0, 0)
    _append(tree.log_dir, files, line[40:] + b"\n" + b'{"type":"response","seq":1\n' + b"\x00garbage\n")
    stats = catalog.update()
    assert (stats.lines, stats.skipped) == (1, 2)
    assert catalog.db.execute("SELECT input, output, cost > 0 FROM calls WHERE session = ? AND seq = 99",
                              (files.session,)).fetchone() == (1000, 10, 1)
    assert catalog.db.execute("SELECT skipped FROM files WHERE session = ?", (files.session,)).fetchone() == (2,)



def test_a_call_whose_fields_come_in_another_order_is_catalogued(tmp_path):
    """Another writer's lines: ``seq`` not right after ``type``. The line is parsed whole."""
    day = tmp_path / "logs" / "api.anthropic.com" / "2026-12-01"
    day.mkdir(parents=True)
    session = "20261201-100000-0e0e0e0e"
    meta = {"ts": "2026-12-01T10:00:00.000000000Z", "machine": "m", "host": "api.anthropic.com", "session": session}
    request = {"type": "request", "method": "POST", "path": "/v1/messages", "seq": 1, "model": "claude-haiku-4-5",
               "headers": {"user-agent": "curl/8.5.0"}, "body": "{}", "size": 2, "_meta": meta}
    response = {"type": "response", "status": 200, "seq": 1, "model": "claude-haiku-4-5",
                "usage": {"input_tokens": 1000, "output_tokens": 10}, "_meta": meta}
    (day / f"{session}.jsonl").write_text("".join(json.dumps(d, separators=(",", ":")) + "\n" for d in (request, response)))
    catalog = Catalog(tmp_path / "logs", indexers=[])
    stats = catalog.update()
    assert (stats.lines, stats.skipped) == (2, 0)
    assert catalog.db.execute("SELECT seq, path, client, answered, input, cost > 0 FROM calls").fetchall() == \
        [(1, "/v1/messages", "curl", 1, 1000, 1)]
    catalog.close()


def test_compressed_files_are_never_read_twice(tmp_path, monkeypatch):
    """Read as plain files, then compressed by prune: the new frames are stepped over by their
    headers. A part read in part before prune: its frame is decompressed once for the rest."""
    tree = gentree.generate(tmp_path / "logs", long=1, calls=8, short=6, days=2, seed=11)
    recorder = Recorder()
    catalog = Catalog(tree.log_dir, indexers=[recorder])
    first = catalog.update()
    decompressed = []
    real_frame = tail.stream_frame
    monkeypatch.setattr(tail, "stream_frame", lambda f: decompressed.append(f.tell()) or real_frame(f))

    prune(tree.log_dir)
    assert all(f.plain is None for f in logtree.sessions(tree.log_dir))
    stats = catalog.update()
    assert (stats.read, stats.lines, stats.bytes, decompressed) == (first.read, 0, 0, [])

    files = next(logtree.sessions(tree.log_dir))  # resumed after prune: a new plain file beside the .zst
    _append(tree.log_dir, files, _response_line(files.session, 50, {"input_tokens": 5, "output_tokens": 5}) + b"\n")
    assert catalog.update().lines == 1
    _append(tree.log_dir, next(logtree.sessions(tree.log_dir)),
            _response_line(files.session, 51, {"input_tokens": 7, "output_tokens": 7}) + b"\n")
    prune(tree.log_dir)  # seq 51 was never read: its frame is the only one decompressed
    stats = catalog.update()
    assert (stats.lines, len(decompressed)) == (1, 1)
    assert catalog.update().read == 0
    assert len(recorder.entries) == len({e for e in recorder.entries}) == \
        sum(len(logtree.read_session(f).splitlines()) for f in logtree.sessions(tree.log_dir))
    rebuilt = Catalog(tree.log_dir, indexers=[], path=tmp_path / "fresh.db")
    rebuilt.update()
    assert sums(rebuilt.db) == sums(catalog.db)


def test_a_mark_that_no_longer_fits_reads_the_session_again(tmp_path):
    tree = gentree.generate(tmp_path / "logs", long=0, short=2, days=1, seed=2)
    recorder = Recorder()
    catalog = Catalog(tree.log_dir, indexers=[recorder])
    catalog.update()
    files = next(f for f in logtree.sessions(tree.log_dir) if len(f.plain.read_bytes().splitlines()) > 3)
    lines = files.plain.read_bytes().splitlines(keepends=True)
    files.plain.write_bytes(b"".join(lines[:-2]))  # edited by hand: the last call taken out
    stats = catalog.update()
    assert stats.reread == 1 and files.session in recorder.forgotten
    assert catalog.db.execute("SELECT count(*) FROM calls WHERE session = ? AND answered", (files.session,)
                              ).fetchone()[0] == sum(1 for c in tree.calls if c.session == files.session) - 1


def test_deleted_sessions_leave_the_catalog(generated, tmp_path):
    log_dir = tmp_path / "logs"
    subprocess.run(["cp", "-a", str(generated.log_dir), str(log_dir)], check=True)
    recorder = Recorder()
    catalog = Catalog(log_dir, indexers=[recorder])
    catalog.update()
    gone = next(logtree.sessions(log_dir))
    for path in gone.paths:
        path.unlink()
    stats = catalog.update()
    assert stats.removed == 1 and recorder.forgotten == [gone.session]
    for table in ("calls", "sessions", "files", "recorder_lines"):
        assert catalog.db.execute(f"SELECT count(*) FROM {table} WHERE session = ?", (gone.session,)
                                  ).fetchone() == (0,), table
    assert catalog.db.execute("SELECT count(DISTINCT session) FROM calls").fetchone()[0] == \
        len(generated.sessions) - 1


def test_a_deleted_catalog_is_rebuilt_even_under_an_open_one(generated, tmp_path):
    """Deleted (with its -wal and -shm) while a long-running reader holds it open: both the
    next reader and the open one rebuild from the files and agree."""
    path = tmp_path / "catalog.db"
    holder = Catalog(generated.log_dir, indexers=[], path=path)
    holder.update()
    before = sums(holder.db)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fresh = Catalog(generated.log_dir, indexers=[], path=path)
    assert fresh.update().read == len(generated.sessions)
    assert sums(fresh.db) == before
    assert holder.update().read == 0 and sums(holder.db) == before  # it found the new file


@pytest.mark.parametrize("damage", [b"", b"not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_damaged_catalog_is_rebuilt(generated, tmp_path, damage):
    path = tmp_path / "catalog.db"
    path.write_bytes(damage)
    catalog = Catalog(generated.log_dir, indexers=[], path=path)
    catalog.update()
    assert sums(catalog.db) == expected(generated.calls)


def test_a_new_indexer_or_version_rebuilds_the_catalog(generated, tmp_path):
    path = tmp_path / "catalog.db"
    Catalog(generated.log_dir, indexers=[], path=path).update()
    recorder = Recorder()
    Catalog(generated.log_dir, indexers=[recorder], path=path).update()
    lines = sum(len(logtree.read_session(f).splitlines()) for f in logtree.sessions(generated.log_dir))
    assert len(recorder.entries) == lines  # it saw every entry, not only new ones
    again = Recorder()
    assert Catalog(generated.log_dir, indexers=[again], path=path).update().read == 0
    again.version = 2
    assert Catalog(generated.log_dir, indexers=[again], path=path).update().read == len(generated.sessions)


def test_indexers_get_the_parsed_entry_and_requests_only_on_demand(tmp_path):
    tree = gentree.generate(tmp_path / "logs", long=1, calls=2, short=0, days=1, seed=1)
    recorder = Recorder()
    got = []
    recorder.add = lambda db, entry: got.append(entry)
    Catalog(tree.log_dir, indexers=[recorder]).update()
    assert [e.kind for e in got] == ["session_start", "request", "response", "request", "response"]
    request = got[1]
    assert request._doc is None and request.doc["body"].startswith("{") and request.seq == 1
    assert got[2].doc["tokens"]["cache_write"] > 0 and got[0].seq is None


WRITER = """
import json, sys, time
from pathlib import Path
from types import SimpleNamespace
from llmproxy.record.filelog import FileLogger
log = FileLogger(sys.argv[1])
stop, paths = Path(sys.argv[2]), sys.argv[3:]
deadline = time.monotonic() + 60
n = 0
while not stop.exists() and time.monotonic() < deadline:
    for path in paths:
        line = json.dumps({"type": "response", "seq": n, "status": 200, "model": "claude-haiku-4-5",
                           "usage": {"input_tokens": n, "output_tokens": 1}, "pad": "x" * (n % 500),
                           "_meta": {"ts": "2026-01-01T00:00:00.000000000Z"}}, separators=(",", ":"))
        assert log.write(SimpleNamespace(path=path, line=line.encode())) is None
    n += 1
    time.sleep(0.002)  # a busy proxy's pace, not a disk's: prune and the updaters get their turns
print("wrote", n)
"""

UPDATER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from llmproxy.catalog import Catalog
from test_catalog import Recorder
catalog = Catalog(Path(sys.argv[1]), indexers=[Recorder()], path=Path(sys.argv[2]))
stop, progress = Path(sys.argv[3]), Path(sys.argv[5])
updates = 0
deadline = time.monotonic() + 60
while not stop.exists() and time.monotonic() < deadline:
    catalog.update()
    updates += 1
    progress.write_text(str(updates))
print("updates", updates)
"""


def test_the_catalog_survives_a_concurrent_prune_and_other_updaters(tmp_path):
    """A writer appends as the proxy does, prune compresses the files again and again, two other
    processes update the same catalog all the while: at the end every line is there once."""
    log_dir = tmp_path / "logs"
    paths = [f"api.anthropic.com/2026-01-01/20260101-00000{i}-0000000{i}.jsonl" for i in range(3)]
    path, stop = tmp_path / "catalog.db", tmp_path / "stop"
    progress = [tmp_path / f"updater{i}" for i in range(2)]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log_dir), str(stop), *paths],
                              stdout=subprocess.PIPE, text=True)
    catalog = Catalog(log_dir, indexers=[Recorder()], path=path)
    catalog.update()  # created before the others start
    updaters = [subprocess.Popen([sys.executable, "-c", UPDATER, str(log_dir), str(path), str(stop),
                                  str(Path(__file__).parent), str(mine)], stdout=subprocess.PIPE, text=True)
                for mine in progress]

    def updates(p: Path) -> int:
        return int(p.read_text() or 0) if p.exists() else 0

    prunes = 0
    deadline = time.monotonic() + 60
    try:
        while (prunes < 6 or min(map(updates, progress)) < 5) and time.monotonic() < deadline:
            if any(logtree.sessions(log_dir)):
                prune(log_dir)
                prunes += 1
            catalog.update()
    finally:
        stop.touch()
        out = [p.communicate(timeout=60)[0] for p in (writer, *updaters)]
    assert writer.returncode == 0 and all(p.returncode == 0 for p in updaters), out
    assert prunes >= 6 and all(int(o.split()[1]) >= 5 for o in out[1:]), (prunes, out)
    written = int(out[0].split()[1])
    prune(log_dir)
    catalog.update()
    rows = catalog.db.execute("SELECT session, count(*), sum(input), min(seq), max(seq) FROM calls GROUP BY session"
                              ).fetchall()
    assert [r[1:] for r in rows] == [(written, written * (written - 1) // 2, 0, written - 1)] * 3
    # each line handed to the indexers once, by whichever process read it
    assert catalog.db.execute("SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT session, line "
                              "FROM recorder_lines)) FROM recorder_lines").fetchone() == (3 * written, 3 * written)
    assert catalog.db.execute("SELECT sum(skipped), count(problem) FROM files").fetchone() == (0, 0)


def test_an_unreadable_compressed_file_is_reported_and_tried_again_only_when_it_changes(tmp_path):
    tree = gentree.generate(tmp_path / "logs", long=0, short=4, days=1, seed=4)
    prune(tree.log_dir)
    broken = next(logtree.sessions(tree.log_dir))
    broken.compressed.write_bytes(broken.compressed.read_bytes()[:-40] + b"\x00" * 40)
    catalog = Catalog(tree.log_dir, indexers=[])
    stats = catalog.update()
    assert (stats.failed, stats.read) == (1, len(tree.sessions) - 1)
    problem = catalog.db.execute("SELECT problem FROM files WHERE session = ?", (broken.session,)).fetchone()[0]
    assert "zstd" in problem
    assert catalog.update().failed == 0  # not retried until its files change


def test_frames_are_found_from_their_headers_without_decompressing():
    import zstandard

    from llmproxy.server.prune import compressor

    pieces = [compressor().compress(os.urandom(5000) * 3),                           # content size in the header
              zstandard.ZstdCompressor(write_content_size=False).compress(b"x\n" * 100000),  # none
              b"\x50\x2a\x4d\x18" + (7).to_bytes(4, "little") + b"skipped",            # a skippable frame
              compressor().compress(b"")]
    data = b"".join(pieces)
    found = list(tail.frames(io.BytesIO(data), 0, len(data)))
    assert [(f.offset, f.length, f.content_size) for f in found] == [
        (0, len(pieces[0]), 15000), (len(pieces[0]), len(pieces[1]), None),
        (len(data) - len(pieces[3]), len(pieces[3]), 0)]
    with pytest.raises(ValueError):
        list(tail.frames(io.BytesIO(b"not zstd"), 0, 8))
