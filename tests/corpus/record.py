"""Record what the real CLIs send: ``.venv/bin/python tests/corpus/record.py [SCENARIO…]``.

Runs each scenario of tests/realclients.py through a real proxy against its own fake provider,
in a loopback-only network namespace (re-running itself under ``unshare -n`` when it is not in
one), and writes the requests the fake received, secrets masked, to ``tests/corpus/NAME.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import realclients  # noqa: E402
from fakeprovider import FakeProvider  # noqa: E402
from proxyproc import ProxyServer  # noqa: E402


def record(name: str, proxy: ProxyServer, workdir: Path) -> str:
    fake = FakeProvider().start()
    fake.aws_region, fake.aws_token = realclients.AWS_REGION, realclients.fakebedrock.SESSION_TOKEN
    try:
        session = realclients.SCENARIOS[name](realclients.Client(workdir / name, proxy.url, fake.upstream))
        lines = realclients.recording(fake.received)
    finally:
        fake.stop()
    missing = [want for run, want in zip(session.runs, session.expected) if want not in run.stdout]
    if missing:
        raise AssertionError(f"{name}: answers not printed: {missing}\n{session.runs[-1]}")
    with open(HERE / f"{name}.jsonl", "w") as out:
        for line in lines:
            out.write(json.dumps(line, sort_keys=True) + "\n")
    return f"{name}: {len(lines)} requests, client sessions {session.client_ids}"


def main(names: list[str]) -> int:
    if realclients.interfaces() != ["lo"]:
        os.execvp("unshare", ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                              sys.executable, *sys.argv])
    reason = realclients.unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="llm-proxy-record-") as tmp, \
            ProxyServer(Path(tmp) / "proxy", env=realclients.PROXY_ENV) as proxy, ThreadPoolExecutor(len(names)) as pool:
        for line in pool.map(lambda name: record(name, proxy, Path(tmp)), names):
            print(line)
    print(f"versions: {realclients.versions()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or list(realclients.SCENARIOS)))
