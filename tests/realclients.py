"""The real Claude Code, Codex and Gemini CLIs as clients of the proxy, and recordings of what they send.

``scripts/test`` installs the CLIs pinned in ``tests/npm/package.json`` (and its lock file) into
a cache that survives between runs (``$LLM_PROXY_TEST_CACHE``, default
``~/.cache/llm-proxy-tests``; one directory per pinned set, named by the files' checksum, see
scripts/bootstrap.sh), then runs pytest in a loopback-only network namespace. Both CLIs
try to reach their vendors' hosts on their own, so they are run only where the namespace has
nothing but ``lo``: :func:`unavailable` says why not otherwise.

Each client gets a temporary ``HOME`` (and ``CODEX_HOME``), a project directory, a fake key, and
the proxy as its base URL with a fake provider behind it. The fake provider is steered through
the prompt (``fake-reply:`` / ``fake-tool:`` lines, see tests/fakeprovider.py). Claude Code in
Bedrock mode sends its calls unsigned; the proxy (started with :data:`PROXY_ENV`) signs them
with made-up AWS credentials, and the fake checks each signature (tests/fakebedrock.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import fakebedrock

from llmproxy.common.masking import mask_headers, mask_query

PACKAGES = Path(__file__).parent / "npm" / "package.json"
CACHE = Path(os.environ.get("LLM_PROXY_TEST_CACHE") or Path.home() / ".cache" / "llm-proxy-tests")
NPM = CACHE / ("npm-" + hashlib.sha256(PACKAGES.read_bytes() + PACKAGES.with_name("package-lock.json")
                                      .read_bytes()).hexdigest()[:16])
BIN = NPM / "node_modules" / ".bin"
CLIENT_TIMEOUT = 120  # seconds for one CLI run; a turn against the fake takes a few
ANTHROPIC_KEY = "sk-ant-api03-" + "R3alCl1ent" * 8 + "abcd"
OPENAI_KEY = "sk-proj-" + "R3alCl1ent" * 8 + "wxyz"
GEMINI_KEY = "AIzaSy" + "R3alCl1ent" * 3 + "gemk"
AWS_REGION = "us-east-1"
# The proxy of the real-client tests: it signs Bedrock calls with the fake's test credentials,
# and nothing of the machine's own AWS configuration takes part.
PROXY_ENV = {"LLM_PROXY_BEDROCK_REGION": AWS_REGION, "AWS_ACCESS_KEY_ID": fakebedrock.ACCESS_KEY,
             "AWS_SECRET_ACCESS_KEY": fakebedrock.SECRET_KEY, "AWS_SESSION_TOKEN": fakebedrock.SESSION_TOKEN,
             "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
             "AWS_EC2_METADATA_DISABLED": "true"}


def _jwt(claims: dict) -> str:
    def part(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{'R3alCl1ent' * 4}sign"


# A made-up ChatGPT access token: a JWT with the claims Codex reads, valid for a year from now.
CHATGPT_ACCOUNT = "acct-r3al-cl1ent"
CHATGPT_TOKEN = _jwt({"exp": 4102444800, "iat": 1764300000, "email": "dev@example.com",
                      "https://api.openai.com/auth": {"chatgpt_account_id": CHATGPT_ACCOUNT,
                                                      "chatgpt_plan_type": "plus", "chatgpt_user_id": "user-1"}})
SECRETS = (ANTHROPIC_KEY, OPENAI_KEY, CHATGPT_TOKEN, GEMINI_KEY, fakebedrock.SECRET_KEY, fakebedrock.SESSION_TOKEN,
           fakebedrock.API_KEY)


def interfaces() -> list[str]:
    """The network interfaces of this process's namespace (``/proc/net`` follows the caller)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines]


def unavailable() -> str | None:
    """Why the real CLIs cannot run here, or None when they can."""
    if interfaces() != ["lo"]:
        return (f"not in a loopback-only network namespace (interfaces: {', '.join(interfaces())}); "
                "./scripts/test runs the suite in one when it is root and unshare works")
    missing = [name for name in ("claude", "codex", "gemini")
               if not (NPM / ".installed").exists() or not (BIN / name).exists()]
    if missing:
        return (f"{', '.join(missing)} not installed in {BIN} (./scripts/test installs "
                f"{PACKAGES.relative_to(PACKAGES.parent.parent.parent)} with npm; see its output)")
    return None


def require(reason: str | None = None, what: str = "the real-CLI tests") -> None:
    """Skip the calling test with the reason it cannot run here (by default: why the CLIs cannot
    run); under CI, fail instead: CI must run it."""
    import pytest

    if reason is None:
        reason = unavailable()
    if reason and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} must run under CI: {reason}")
    if reason:
        pytest.skip(reason)


def versions() -> dict[str, str]:
    """The installed versions of the pinned packages, for recordings and reports."""
    lock = json.loads((NPM / "package-lock.json").read_text())
    return {name: lock["packages"][f"node_modules/{name}"]["version"]
            for name in json.loads(PACKAGES.read_text())["dependencies"]}


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> "Run":
        if self.returncode != 0:
            raise AssertionError(f"{' '.join(self.args)} exited {self.returncode}\n"
                                 f"stdout:\n{self.stdout[-4000:]}\nstderr:\n{self.stderr[-4000:]}")
        return self


class Client:
    """One user's machine: a home, a project and one CLI pointed at ``proxy`` → ``fake``."""

    def __init__(self, workdir: Path, proxy_url: str, fake_upstream: str):
        self.home = Path(workdir) / "home"
        self.codex_home = self.home / ".codex"
        self.project = Path(workdir) / "project"
        for path in (self.codex_home, self.project):
            path.mkdir(parents=True, exist_ok=True)
        self.proxy_url = proxy_url
        self.upstream = fake_upstream
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                    "CODEX_HOME": str(self.codex_home), "TERM": "dumb", "LANG": "C.UTF-8",
                    "TMPDIR": os.environ.get("TMPDIR", "/tmp")}

    def setup(self, *args: str) -> str:
        """What ``llm-proxy env ARGS`` tells a user of this proxy, the fake standing in for the real hosts."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PROXY_")}
        env.update(LLM_PROXY_HOST="127.0.0.1", LLM_PROXY_PORT=str(urlsplit(self.proxy_url).port),
                   LLM_PROXY_ENV_FILE=str(self.home / "no-such.env"))
        out = subprocess.run([str(Path(sys.executable).with_name("llm-proxy")), "env", *args], env=env,
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return re.sub(r"/(api\.anthropic\.com|api\.openai\.com|generativelanguage\.googleapis\.com)\b",
                      f"/{self.upstream}", out)

    def run(self, name: str, *args: str, env: dict[str, str] | None = None) -> Run:
        argv = [str(BIN / name), *args]
        proc = subprocess.run(argv, env={**self.env, **(env or {})}, cwd=self.project,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=CLIENT_TIMEOUT)
        return Run([name, *args], proc.returncode, proc.stdout, proc.stderr)

    # Claude Code ---------------------------------------------------------------------------

    def claude(self, *args: str) -> Run:
        base_url, = re.findall(r"^export ANTHROPIC_BASE_URL=(\S+)$", self.setup(), re.MULTILINE)
        return self.run("claude", *args, env={"ANTHROPIC_BASE_URL": base_url,
                                              "ANTHROPIC_API_KEY": ANTHROPIC_KEY}).check()

    def claude_bedrock(self, *args: str) -> Run:
        """Claude Code in Bedrock mode, unsigned (``CLAUDE_CODE_SKIP_BEDROCK_AUTH``): the proxy signs."""
        base_url = f"{self.proxy_url}/bedrock/{self.upstream}"  # docs/clients.rst: /bedrock/<region>
        return self.run("claude", *args, env={"CLAUDE_CODE_USE_BEDROCK": "1", "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
                                              "ANTHROPIC_BEDROCK_BASE_URL": base_url, "AWS_REGION": AWS_REGION}).check()

    def claude_bedrock_key(self, *args: str) -> Run:
        """Claude Code in Bedrock mode with a Bedrock API key (``AWS_BEARER_TOKEN_BEDROCK``): it
        sends ``Authorization: Bearer`` itself, which the proxy forwards as it is."""
        base_url = f"{self.proxy_url}/bedrock/{self.upstream}"
        return self.run("claude", *args, env={"CLAUDE_CODE_USE_BEDROCK": "1", "AWS_BEARER_TOKEN_BEDROCK": fakebedrock.API_KEY,
                                              "ANTHROPIC_BEDROCK_BASE_URL": base_url, "AWS_REGION": AWS_REGION}).check()

    def claude_session_ids(self) -> list[str]:
        """Claude Code's own session ids: its transcripts, ``~/.claude/projects/*/<id>.jsonl``."""
        return sorted(p.stem for p in (self.home / ".claude" / "projects").glob("*/*.jsonl"))

    # Gemini CLI ------------------------------------------------------------------------------

    def gemini(self, *args: str) -> Run:
        """``gemini --skip-trust ARGS`` with an API key, the proxy as ``GOOGLE_GEMINI_BASE_URL``.

        Headless it needs the auth type chosen in its settings; usage statistics off keeps it
        from its telemetry host, one attempt from minutes of retries when a test goes wrong."""
        settings = self.home / ".gemini" / "settings.json"
        if not settings.exists():
            settings.parent.mkdir(parents=True, exist_ok=True)
            settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}},
                                            "privacy": {"usageStatisticsEnabled": False},
                                            "general": {"maxAttempts": 1}}))
        base_url, = re.findall(r"^export GOOGLE_GEMINI_BASE_URL=(\S+)$", self.setup(), re.MULTILINE)
        return self.run("gemini", "--skip-trust", *args,
                        env={"GOOGLE_GEMINI_BASE_URL": base_url, "GEMINI_API_KEY": GEMINI_KEY}).check()

    def gemini_session_ids(self) -> list[str]:
        """Gemini CLI's own sessions: ``~/.gemini/tmp/<project>/chats/session-<time>-<id>.jsonl``
        (a resumed session may get a file of a later time, with the same id)."""
        return sorted({p.stem.rsplit("-", 1)[1] for p in (self.home / ".gemini" / "tmp").glob("*/chats/session-*.json*")})

    # Codex -----------------------------------------------------------------------------------

    def configure_codex(self, choose_provider: bool = True) -> None:
        """``llm-proxy env --codex`` as config.toml, its provider for a key in $OPENAI_API_KEY chosen
        there (``choose_provider``) or left for ``codex -c model_provider=llm-proxy``."""
        config = self.setup("--codex")
        if choose_provider:
            config = config.replace('# model_provider = "llm-proxy"', 'model_provider = "llm-proxy"', 1)
        (self.codex_home / "config.toml").write_text(config)

    def chatgpt_sign_in(self) -> None:
        """What ``codex login`` leaves for a ChatGPT account, the token made up (the fake takes any)."""
        (self.codex_home / "auth.json").write_text(json.dumps({
            "auth_mode": "chatgpt", "OPENAI_API_KEY": None, "last_refresh": "2099-01-01T00:00:00Z",
            "tokens": {"id_token": CHATGPT_TOKEN, "access_token": CHATGPT_TOKEN,
                       "refresh_token": "rt-r3al-cl1ent", "account_id": CHATGPT_ACCOUNT}}))

    def codex(self, *args: str) -> Run:
        return self.run("codex", *args, env={"OPENAI_API_KEY": OPENAI_KEY}).check()

    def codex_session_ids(self) -> list[str]:
        """Codex's own session ids: ``$CODEX_HOME/sessions/Y/M/D/rollout-<time>-<id>.jsonl``."""
        ids = [re.search(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.jsonl$", p.name)
               for p in (self.codex_home / "sessions").rglob("rollout-*.jsonl")]
        return sorted(m.group(1) for m in ids if m)


def recording(received) -> list[dict]:
    """What a client sent, one dict per request, secrets masked: a corpus file's lines."""
    lines = []
    for number, request in enumerate(received, 1):
        line = {"n": number, "method": request.method, "path": mask_query(request.path),
                "headers": mask_headers([(n, v) for n, v in request.headers if n.lower() != "host"])}
        try:
            text = request.body.decode()
            line["body"] = json.loads(text) if text else None
        except ValueError:  # not UTF-8 JSON, e.g. a zstd-compressed body
            line["body"], line["body_encoding"] = base64.b64encode(request.body).decode(), "base64"
        lines.append(line)
    dumped = json.dumps(lines)
    leaked = [s for s in SECRETS if s in dumped]
    if leaked:
        raise AssertionError("a key would be written into the recording")
    return lines


# Scenarios: what a user does; the tests assert on them and tests/corpus/record.py records them. ----

MARKER = "kiwi-5150"  # in the project's notes.txt; a tool's output must carry it back


@dataclass
class Session:
    """A scenario's outcome: every run, the answer each printed is expected to contain."""
    runs: list[Run]
    expected: list[str]
    client_ids: list[str]


def claude_turns(client: Client, turns: int = 4) -> Session:
    """``claude -p`` then ``claude -p --continue`` until ``turns`` prompts were answered."""
    expected = [f"claude-answer-{n}" for n in range(1, turns + 1)]
    runs = [client.claude("-p", f"First question.\nfake-reply: {expected[0]}")]
    runs += [client.claude("-p", "--continue", f"Question {n}.\nfake-reply: {expected[n - 1]}")
             for n in range(2, turns + 1)]
    return Session(runs, expected, client.claude_session_ids())


def claude_tools(client: Client) -> Session:
    """A tool loop: the fake asks for ``Read``, then (next turn) ``Bash``; the CLI runs them."""
    notes = client.project / "notes.txt"
    notes.write_text(f"{MARKER}\n")
    read = json.dumps({"file_path": str(notes)})
    bash = json.dumps({"command": "tr a-z A-Z < notes.txt", "description": "Shout the notes"})
    runs = [client.claude("-p", f"What do the notes say?\nfake-tool: Read {read}"),
            client.claude("-p", "--continue", "--allowedTools=Bash",
                          f"And louder?\nfake-tool: Bash {bash}")]
    return Session(runs, [MARKER, MARKER.upper()], client.claude_session_ids())


def claude_resume(client: Client) -> Session:
    """``claude -p`` then ``claude -p --resume <its session id>``."""
    first = client.claude("-p", "--output-format", "json", "Remember this.\nfake-reply: resume-answer-1")
    session_id = json.loads(first.stdout)["session_id"]
    second = client.claude("-p", "--resume", session_id, "Recall it.\nfake-reply: resume-answer-2")
    return Session([first, second], ["resume-answer-1", "resume-answer-2"], client.claude_session_ids())


def codex_turns(client: Client, turns: int = 3) -> Session:
    """``codex exec`` then ``codex exec resume --last`` until ``turns`` prompts were answered,
    the custom provider chosen per run."""
    client.configure_codex(choose_provider=False)
    expected = [f"codex-answer-{n}" for n in range(1, turns + 1)]
    provider = ("-c", "model_provider=llm-proxy", "--skip-git-repo-check")
    runs = [client.codex("exec", *provider, f"First question.\nfake-reply: {expected[0]}")]
    runs += [client.codex("exec", "resume", "--last", *provider, f"Question {n}.\nfake-reply: {expected[n - 1]}")
             for n in range(2, turns + 1)]
    return Session(runs, expected, client.codex_session_ids())


def codex_tools(client: Client) -> Session:
    """A Codex tool loop: the fake asks for ``exec_command``; Codex runs it in its sandbox."""
    client.configure_codex()
    (client.project / "notes.txt").write_text(f"{MARKER}\n")
    call = json.dumps({"cmd": "cat notes.txt"})
    runs = [client.codex("exec", "--skip-git-repo-check", f"What do the notes say?\nfake-tool: exec_command {call}"),
            client.codex("exec", "resume", "--last", "--skip-git-repo-check", "Thanks.\nfake-reply: codex-done")]
    return Session(runs, [MARKER, "codex-done"], client.codex_session_ids())


def codex_chatgpt(client: Client) -> Session:
    """Signed in with ChatGPT, the built-in provider at ``openai_base_url``: WebSocket, 2 turns.

    Without ``features.apps=false`` Codex also starts its connectors, which go to chatgpt.com
    directly (not through ``openai_base_url``) and, finding no network, hold each run ~20 s longer.
    """
    client.configure_codex(choose_provider=False)
    client.chatgpt_sign_in()
    flags = ("-c", "features.apps=false", "--skip-git-repo-check")
    runs = [client.codex("exec", *flags, "Signed in.\nfake-reply: chatgpt-answer-1"),
            client.codex("exec", "resume", "--last", *flags, "Again.\nfake-reply: chatgpt-answer-2")]
    return Session(runs, ["chatgpt-answer-1", "chatgpt-answer-2"], client.codex_session_ids())


def gemini_turns(client: Client, turns: int = 3) -> Session:
    """``gemini -p`` then ``gemini --resume latest -p`` until ``turns`` prompts were answered."""
    expected = [f"gemini-answer-{n}" for n in range(1, turns + 1)]
    runs = [client.gemini("-o", "json", "-p", f"First question.\nfake-reply: {expected[0]}")]
    runs += [client.gemini("--resume", "latest", "-o", "json", "-p", f"Question {n}.\nfake-reply: {expected[n - 1]}")
             for n in range(2, turns + 1)]
    return Session(runs, expected, client.gemini_session_ids())


def gemini_tools(client: Client) -> Session:
    """A Gemini CLI tool loop: the fake asks for ``read_file`` (the CLI runs it without asking),
    then, resumed, for nothing more."""
    notes = client.project / "notes.txt"
    notes.write_text(f"{MARKER}\n")
    read = json.dumps({"file_path": str(notes)})
    runs = [client.gemini("-o", "json", "-p", f"What do the notes say?\nfake-tool: read_file {read}"),
            client.gemini("--resume", "latest", "-o", "json", "-p", "Thanks.\nfake-reply: gemini-done")]
    return Session(runs, [MARKER, "gemini-done"], client.gemini_session_ids())


def bedrock_claude(client: Client) -> Session:
    """Claude Code in Bedrock mode: a ``Read`` tool call, then ``--continue`` with a plain answer."""
    notes = client.project / "notes.txt"
    notes.write_text(f"{MARKER}\n")
    read = json.dumps({"file_path": str(notes)})
    runs = [client.claude_bedrock("-p", f"What do the notes say?\nfake-tool: Read {read}"),
            client.claude_bedrock("-p", "--continue", "And now?\nfake-reply: bedrock-answer-2")]
    return Session(runs, [MARKER, "bedrock-answer-2"], client.claude_session_ids())


def bedrock_claude_api_key(client: Client) -> Session:
    """Claude Code in Bedrock mode with a Bedrock API key: one turn."""
    runs = [client.claude_bedrock_key("-p", "Hello?\nfake-reply: bedrock-key-answer")]
    return Session(runs, ["bedrock-key-answer"], client.claude_session_ids())


# What tests/corpus/record.py records (plain HTTP); test_real_clients.py runs these and CHATGPT.
SCENARIOS = {"claude-4-turns": claude_turns, "claude-tool-loop": claude_tools, "claude-resume": claude_resume,
             "codex-3-turns": codex_turns, "codex-tool-loop": codex_tools,
             "gemini-3-turns": gemini_turns, "gemini-tool-loop": gemini_tools, "bedrock-claude-tool-loop": bedrock_claude}
CHATGPT = {"codex-chatgpt": codex_chatgpt}
BEDROCK_API_KEY = {"bedrock-claude-api-key": bedrock_claude_api_key}   # its calls are the signed ones
