"""``setup`` and ``uninstall`` as plans: a list of steps, checked before the first one runs.

A :class:`Step` says what it does (``write ~/.config/systemd/user/llm-proxy.service``), what
must hold for it (``~/.bashrc is not writable``) and does it. :meth:`Installation.setup_plan`
looks at what is there and plans only what differs, so a second ``setup`` plans nothing;
:func:`carry_out` checks every step first (any failure: one line each, nothing changed), then
runs them in order, each recorded in the manifest the moment it is done. A step that still
fails leaves the ones before it listed, and ``uninstall`` undoes those like any others.
"""

from __future__ import annotations

import getpass
import importlib.util
import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TextIO

from dotenv import dotenv_values

from llmproxy.server import presence
from llmproxy.settings import DEFAULT_LOG_DIR, Settings, SettingsError, load_settings
from llmproxy.setup import codex, ports, probe, service, shells, textfile
from llmproxy.setup.home import Home
from llmproxy.setup.manifest import Manifest

OURS = "`llm-proxy setup`"   # every file setup writes whole says so (llm-proxy uninstall looks for it)
SETTINGS_HEADER = """\
# llm-proxy settings of this user (`llm-proxy setup` wrote it), KEY=VALUE lines: the user
# service and every llm-proxy command read them. docs/workstation.rst; README lists the variables.
"""


class SetupError(Exception):
    """Setup or uninstall cannot go on; ``str()`` is the one line to show, ``code`` the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Step:
    todo: str                                   # "write ~/.bashrc": what --dry-run prints after "would"
    apply: Callable[[], None]
    check: Callable[[], str | None] = lambda: None  # why it cannot be done (before anything is), or None
    done: str = ""                              # what is printed once it is done

    def __post_init__(self):
        self.done = self.done or past(self.todo)


_PAST = {"write": "wrote", "update": "updated", "add": "added", "run": "ran", "remove": "removed",
         "create": "created", "put": "put", "stop": "stopped", "restore": "restored"}


def past(todo: str) -> str:
    verb, _, rest = todo.partition(" ")
    return f"{_PAST.get(verb, verb)} {rest}"


@dataclass
class Options:
    codex: bool = False
    explorer: bool = False
    service: bool = True
    port: int | None = None


@dataclass
class Plan:
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    settings: Settings | None = None


def explorer_available() -> bool:
    """Whether this installation has ``llm-proxy explore`` (the log explorer, its own issue)."""
    return importlib.util.find_spec("llmproxy.explorer") is not None


class Installation:
    """One user's installation of llm-proxy: what ``setup`` adds and ``uninstall`` takes away."""

    def __init__(self, home: Home, runner: service.Runner = service.run, exe: Path | None = None):
        self.home = home
        self.runner = runner
        self.exe = exe
        self.manager = service.manager(home, runner)
        self.manifest = Manifest.load(home.manifest)

    # --- what is there ---

    def file_settings(self) -> dict[str, str]:
        """The user's settings file as dotenv reads it (empty when there is none)."""
        text = textfile.read(self.home.settings_file)
        if not text:
            return {}
        return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}

    def service_settings(self, values: dict[str, str] | None = None) -> Settings:
        """The settings the service gets: the settings file alone (its environment is systemd's,
        not this shell's), the log dir under this home unless the file says otherwise."""
        default_log_dir = self.home.path / Path(DEFAULT_LOG_DIR).relative_to("~")
        environ = {"LLM_PROXY_ENV_FILE": os.devnull, "LLM_PROXY_LOG_DIR": str(default_log_dir),
                   **(self.file_settings() if values is None else values)}
        try:
            return load_settings(environ, create_dirs=False)
        except SettingsError as exc:
            raise SetupError(f"{self.home.short(self.home.settings_file)}: {exc}", 2) from None

    def presence_file(self, settings: Settings) -> Path:
        return presence.path(settings)

    # --- setup ---

    def setup_plan(self, options: Options) -> Plan:
        if options.service:
            if self.manager is None:
                raise SetupError(f"no user service manager on {self.home.platform}: nothing changed; "
                                 "`llm-proxy setup --no-service` sets up the rest")
            why = self.manager.unavailable()
            if why:
                raise SetupError(f"{why}: nothing changed; `llm-proxy setup --no-service` sets up the rest")
        if options.explorer and not explorer_available():
            raise SetupError("--explorer: this llm-proxy has no `llm-proxy explore` (the log explorer) yet: "
                             "nothing changed")
        plan = Plan([])
        values = self.file_settings()
        settings = self.service_settings(values)
        add_port = None
        if "LLM_PROXY_PORT" in values:
            if options.port and options.port != settings.port:
                raise SetupError(f"LLM_PROXY_PORT={settings.port} is set in "
                                 f"{self.home.short(self.home.settings_file)} already: change it there")
        else:
            port = options.port or ports.choose(settings.host)
            settings = replace(settings, port=port)
            add_port = f"LLM_PROXY_PORT={port}"
            plan.steps.append(self._settings_step(add_port))
        plan.settings = settings
        self._check_ports(settings, options)

        activation: list[Step] = []
        if options.service:
            units = self.manager.units(settings, self.home.settings_file, options.explorer, self.exe)
            changed = set()
            for unit in units:
                if textfile.read(unit.path) != unit.text:
                    plan.steps.append(self._file_step(unit.path, unit.text))
                    changed.add(unit.name)
            # A server that listens elsewhere than the settings say started before they changed.
            running = presence.read(self.presence_file(settings))
            stale = add_port is not None or (running is not None and running.base_url != settings.base_url)
            for argv in self.manager.activation(units, changed, settings_changed=stale):
                names = [u.name for u in units if u.name in argv or str(u.path) in argv]
                activation.append(self._command_step(argv, services=names))

        proc = self.home.platform.startswith("linux")
        for shell in shells.shells(self.home):
            text = shell.text(self.presence_file(settings), proc)
            current = textfile.read(shell.rc)
            if shell.whole_file and current != text:
                plan.steps.append(self._file_step(shell.rc, text))
            elif not shell.whole_file and textfile.block_of(current) != text:
                plan.steps.append(self._block_step(shell.rc, text, current))

        if options.codex:
            path = self.home.codex_config
            record = self.manifest.find("toml", path) or {}
            ours = {tuple(k[:-1]): k[-1] for k in record.get("keys", [])}
            try:
                edit = codex.plan(path, textfile.read(path), settings.base_url, ours)
            except codex.ConfigError as exc:
                raise SetupError(f"{exc}: nothing changed") from None
            for kept in edit.kept:
                plan.notes.append(f"kept your {kept} in {self.home.short(path)}; through the proxy per run:\n"
                                  f"  codex -c model_provider={codex.PROVIDER}")
            if edit.changes:
                plan.steps.append(self._codex_step(path, edit))
        plan.steps += activation
        return plan

    def _check_ports(self, settings: Settings, options: Options) -> None:
        """The proxy's port (and the explorer's) must be free, or held by what setup installed."""
        settings_file = self.home.short(self.home.settings_file)
        wanted = [(settings.host, settings.port, service.PROXY,
                   ("--port", "choose another with --port") if options.port else
                   (f"LLM_PROXY_PORT in {settings_file}", "set another LLM_PROXY_PORT there"))]
        if options.explorer:
            wanted.append((*ports.explorer_address(settings), service.EXPLORER,
                           ("llm-proxy explore's", f"set LLM_PROXY_EXPLORER_PORT in {settings_file}")))
        for host, port, name, (what, remedy) in wanted:
            if ports.bindable(host, port):
                continue
            unit = name if self.home.platform == "darwin" else f"{name}.service"
            if options.service and self.manager.state(unit).running:
                continue
            base = f"http://{host}:{port}"
            if name == service.PROXY and not options.service and probe.health(base):
                continue  # an llm-proxy this user runs by hand: the shells will find it
            taker = "an llm-proxy the service did not start" if probe.health(base) else "another program"
            raise SetupError(f"port {port} ({what}) is taken by {taker}: nothing changed; {remedy}")

    def _mkdirs(self, directory: Path) -> None:
        """Create a directory and its missing parents, each recorded (uninstall removes them if empty)."""
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
        for path in reversed(missing):
            self.manifest.put({"kind": "dir", "path": str(path)})

    def _settings_step(self, line: str) -> Step:
        path = self.home.settings_file
        text = textfile.read(path)

        def apply():
            if text is None:
                self._mkdirs(textfile.target(path).parent)
                content = SETTINGS_HEADER + line + "\n"
                textfile.write(path, content, mode=0o600)
                self.manifest.put({"kind": "file", "path": str(path), "digest": codex.digest(content),
                                   "line": line})
            else:
                textfile.write(path, textfile.with_line(text, line))
                self.manifest.put({"kind": "line", "path": str(path), "line": line,
                                   "added_break": not text.endswith("\n")})

        todo = f"write {self.home.short(path)} ({line})" if text is None else f"add {line} to {self.home.short(path)}"
        return Step(todo, apply, lambda: textfile.unwritable(path))

    def _file_step(self, path: Path, text: str) -> Step:
        """A file setup owns whole (a unit, a plist, fish's conf.d file)."""
        current = textfile.read(path)

        def check():
            if current is not None and not ours(current) and not self.manifest.find("file", path):
                return f"{path} exists and llm-proxy setup did not write it: move it away first"
            return textfile.unwritable(path)

        def apply():
            self._mkdirs(textfile.target(path).parent)
            textfile.write(path, text)
            self.manifest.put({"kind": "file", "path": str(path), "digest": codex.digest(text)})

        return Step(f"{'update' if current is not None else 'write'} {self.home.short(path)}", apply, check)

    def _block_step(self, rc: Path, block: str, current: str | None) -> Step:
        def apply():
            text = textfile.read(rc)
            if text is None:
                self._mkdirs(textfile.target(rc).parent)
            earlier = self.manifest.find("block", rc)
            created = earlier["created"] if earlier else text is None
            self.manifest.put({"kind": "block", "path": str(rc), "created": created})
            textfile.write(rc, textfile.with_block(text, block))

        verb = "update the shell block in" if textfile.block_of(current) else "add the shell block to"
        link = f" (a link to {textfile.target(rc)})" if rc.is_symlink() else ""
        return Step(f"{verb} {self.home.short(rc)}{link}", apply, lambda: textfile.unwritable(rc))

    def _codex_step(self, path: Path, edit: codex.Edit) -> Step:
        def apply():
            earlier = self.manifest.find("toml", path)
            keys = {tuple(k[:-1]): k[-1] for k in (earlier or {}).get("keys", [])} | edit.keys
            if edit.before is None:
                self._mkdirs(textfile.target(path).parent)
            self.manifest.put({"kind": "toml", "path": str(path),
                               "keys": [[*k, v] for k, v in keys.items()],
                               "before": earlier["before"] if earlier else edit.before,
                               "created": earlier["created"] if earlier else edit.before is None,
                               "after": codex.digest(edit.after)})
            textfile.write(path, edit.after)

        what = " and ".join(dict.fromkeys(k[0] if len(k) == 1 else f"[{k[0]}.{k[1]}]" for k in edit.keys))
        return Step(f"{'add' if edit.before is None else 'update'} {what} {'to' if edit.before is None else 'in'} "
                    f"{self.home.short(path)}", apply,
                    lambda: textfile.unwritable(path))

    def _command_step(self, argv: list[str], services: list[str] = (), stop: bool = False) -> Step:
        def apply():
            if not stop:  # recorded first: a start that fails may have enabled the unit all the same
                for name in services:
                    self.manifest.put({"kind": "service", "manager": self.manager.kind, "name": name})
            result = self.runner(argv)
            if result.returncode != 0:
                logs = f" (see {self.manager.logs(services[0])})" if services and not stop else ""
                raise SetupError(f"{' '.join(argv)}: {result.line}{logs}")
            if stop:
                for record in [r for r in self.manifest.all("service") if r.get("name") in services]:
                    self.manifest.drop(record)

        return Step(f"run {' '.join(argv)}", apply)

    # --- uninstall ---

    def uninstall_plan(self) -> Plan:
        plan = Plan([])
        home, manifest = self.home, self.manifest
        try:
            plan.settings = self.service_settings()
        except SetupError:  # a bad settings file does not stop its own removal
            pass

        services = [r["name"] for r in manifest.all("service")]
        unit_records = [r for r in manifest.all("file") if r["path"] != str(home.settings_file)]
        found_units = self._units_on_disk()
        for path in found_units:
            if not any(r["path"] == str(path) for r in unit_records):
                unit_records.append({"kind": "file", "path": str(path)})
                name = path.stem if path.suffix == ".plist" else path.name
                if path.suffix in (".plist", ".service") and name not in services:
                    services.append(name)
        # Asked once (it runs systemctl or launchctl): None when there is no manager at all.
        why = self.manager.unavailable() if self.manager is not None and (services or unit_records) else None
        if services and self.manager is not None:
            if why:
                plan.notes.append(f"{why}: the service files are removed, but nothing could stop "
                                  f"{', '.join(services)}")
            else:
                for argv in self.manager.deactivation(services):
                    plan.steps.append(self._command_step(argv, services=services, stop=True))
        for record in unit_records:
            plan.steps.append(self._remove_file_step(record))
        if unit_records and self.manager is not None and not why:
            plan.steps += [self._command_step(argv) for argv in self.manager.after_removal()]

        blocks = {r["path"]: r for r in manifest.all("block")}
        for shell in shells.all_shells(home):
            if not shell.whole_file and str(shell.rc) not in blocks and textfile.block_of(textfile.read(shell.rc)):
                blocks[str(shell.rc)] = {"kind": "block", "path": str(shell.rc), "created": False}
        for record in blocks.values():
            if textfile.block_of(textfile.read(Path(record["path"]))):
                plan.steps.append(self._remove_block_step(record))
            elif record in manifest.records:
                plan.steps.append(Step(f"forget {home.short(Path(record['path']))}", lambda r=record: manifest.drop(r),
                                       done=f"{home.short(Path(record['path']))} holds no block any more"))

        for record in manifest.all("line"):
            plan.steps.append(self._remove_line_step(record))
        settings_record = manifest.find("file", home.settings_file)
        if settings_record:
            plan.steps.append(self._remove_settings_step(settings_record))
        for record in manifest.all("toml"):
            try:
                plan.steps.append(self._undo_codex_step(record))
            except codex.ConfigError as exc:  # the rest goes all the same; the record stays for later
                plan.notes.append(str(exc))
        if not manifest.find("toml") and codex.PROVIDER in (textfile.read(home.codex_config) or ""):
            plan.notes.append(f"{home.short(home.codex_config)}: no record of what setup added there; left as it is")
        dirs = manifest.all("dir")
        if dirs:
            plan.steps.append(Step("remove the directories setup created, where empty", lambda: self._remove_dirs(dirs),
                                   done="removed the directories setup created, where empty"))
        return plan

    def _units_on_disk(self) -> list[Path]:
        """Unit files or plists setup wrote, found by their text (when the manifest is gone)."""
        found = []
        for directory, pattern in ((self.home.systemd_units, "llm-proxy*.service"),
                                   (self.home.launch_agents, "llm-proxy*.plist")):
            for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
                if ours(textfile.read(path) or ""):
                    found.append(path)
        fish = self.home.fish_conf_d / shells.FISH_FILE
        if ours(textfile.read(fish) or ""):
            found.append(fish)
        return found

    def _remove_file_step(self, record: dict) -> Step:
        path = Path(record["path"])

        def apply():
            textfile.target(path).unlink(missing_ok=True)
            if path.is_symlink():
                path.unlink()
            if record in self.manifest.records:
                self.manifest.drop(record)

        return Step(f"remove {self.home.short(path)}", apply, lambda: textfile.unwritable(path))

    def _remove_block_step(self, record: dict) -> Step:
        rc = Path(record["path"])

        def apply():
            text = textfile.without_block(textfile.read(rc) or "")
            if record.get("created") and text == "":
                textfile.target(rc).unlink()
            else:
                textfile.write(rc, text)
            if record in self.manifest.records:
                self.manifest.drop(record)

        return Step(f"remove the shell block from {self.home.short(rc)}", apply, lambda: textfile.unwritable(rc))

    def _remove_line_step(self, record: dict) -> Step:
        path = Path(record["path"])

        def apply():
            text = textfile.read(path)
            if text is not None:
                textfile.write(path, textfile.without_line(text, record["line"], record.get("added_break", False)))
            self.manifest.drop(record)

        return Step(f"remove {record['line']} from {self.home.short(path)}", apply, lambda: textfile.unwritable(path))

    def _remove_settings_step(self, record: dict) -> Step:
        path = Path(record["path"])
        text = textfile.read(path)
        untouched = text is None or codex.digest(text) == record.get("digest")

        def apply():
            if untouched:
                textfile.target(path).unlink(missing_ok=True)
            else:
                textfile.write(path, textfile.without_line(text, record["line"], False))
            self.manifest.drop(record)

        if untouched:
            return Step(f"remove {self.home.short(path)}", apply, lambda: textfile.unwritable(path))
        return Step(f"remove {record['line']} from {self.home.short(path)} (the rest is yours)", apply,
                    lambda: textfile.unwritable(path))

    def _undo_codex_step(self, record: dict) -> Step:
        path = Path(record["path"])
        keys = {tuple(k[:-1]): k[-1] for k in record.get("keys", [])}
        text = textfile.read(path)
        short = self.home.short(path)
        new, how = codex.undo(path, text, keys, record.get("before"), record.get("after"), record.get("created", False))

        def apply():
            if new is None:
                textfile.target(path).unlink(missing_ok=True)
            elif new != text:
                textfile.write(path, new)
            self.manifest.drop(record)

        if how == "created":
            return Step(f"remove {short} (setup created it)", apply, lambda: textfile.unwritable(path))
        if how == "restored":
            return Step(f"put back {short} as it was before setup", apply, lambda: textfile.unwritable(path))
        return Step(f"remove {how or 'nothing (changed since)'} from {short} (edited since setup; the rest stays)",
                    apply, lambda: textfile.unwritable(path))

    def _remove_dirs(self, records: list[dict]) -> None:
        for record in records:  # first: the manifest itself goes with the last record
            self.manifest.drop(record)
        for record in reversed(records):
            try:
                Path(record["path"]).rmdir()
            except OSError:  # gone, or not empty: something else lives there now
                pass


def ours(text: str) -> bool:
    """Whether a file's text is one setup wrote whole (a unit and fish's file say so; a plist is
    known by its label)."""
    return OURS in text or (text.startswith("<?xml") and "<string>llm-proxy" in text)


def carry_out(plan: Plan, dry_run: bool, out: TextIO, err: TextIO, prog: str) -> int:
    """Check every step, then (unless ``dry_run``) do them in order. 0 done, 1 not done."""
    problems = [why for why in (step.check() for step in plan.steps) if why]
    if problems:
        for why in problems:
            print(f"{prog}: {why}: nothing changed", file=err)
        return 1
    for step in plan.steps:
        if dry_run:
            print(f"would {step.todo}", file=out)
            continue
        try:
            step.apply()
        except (OSError, SetupError) as exc:
            reason = exc if isinstance(exc, SetupError) else (exc.strerror or exc)
            print(f"{prog}: {step.todo} failed: {reason}", file=err)
            done = plan.steps[:plan.steps.index(step)]
            if done:
                print(f"{prog}: done before it: {'; '.join(s.done for s in done)} "
                      "(`llm-proxy uninstall` undoes them)", file=err)
            return 1
        print(step.done, file=out)
    return 0


def setup_summary(installation: Installation, plan: Plan, options: Options) -> list[str]:
    """What a person reads once ``setup`` has done its steps: where the proxy runs, and who uses it."""
    lines = []
    base_url = plan.settings.base_url
    if options.service:
        lines.append(f"llm-proxy runs as a {installation.manager.kind} on {base_url}")
        if installation.manager.kind.startswith("systemd") and not lingering():
            lines.append("it runs while you are logged in; to run it from boot on: loginctl enable-linger")
    else:
        lines.append(f"no service: `llm-proxy serve` starts the proxy on {base_url}")
    found = [s.name for s in shells.shells(installation.home)]
    if found:
        names = f"{', '.join(found[:-1])} and {found[-1]}" if len(found) > 1 else found[0]
        lines.append(f"new {names} shells point Claude Code and the SDKs at it while it runs")
    return lines


def lingering(user: str | None = None) -> bool:
    """Whether systemd keeps this user's instance running without a login (``loginctl enable-linger``)."""
    return Path("/var/lib/systemd/linger", user or getpass.getuser()).exists()
