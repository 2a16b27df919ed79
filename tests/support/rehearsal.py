"""A rehearsal of the Dockerfile and docker-compose.yml on a machine without Docker.

The parse checks in tests/core/test_containers.py read the text; only performing it shows a file the build
stage forgot to COPY, a command that is wrong, or a directory the non-root user cannot write, before someone
runs ``docker compose up``. This module reads both files and does what they say, as far as a host allows:

* Every stage runs in one temporary directory, ``root``, standing for the container's ``/``: an absolute path
  written in the Dockerfile (``/opt/venv``, ``/tmp/prometheus``, ``WORKDIR``) becomes ``root`` + that path.
  The base image's own files are the host's: its interpreter (the ``python3.X`` of the ``FROM`` tag, from the
  host's system directories), ``/usr/bin`` and ``/bin``; only an empty ``/tmp`` (1777) and ``/root`` are made.
* A finished stage is moved aside; the next one starts from an empty ``root`` and receives only what its
  ``COPY --from`` lines name, moved back to the path they name. A virtualenv's scripts hold its absolute path,
  so one copied to another path breaks here as it would in the image.
* ``COPY`` reads the build context through ``.dockerignore``. ``RUN`` runs only commands this module knows to
  be safe on a host (python, pip, install, mkdir, chmod, chown); ``groupadd``/``useradd`` create no account:
  the processes run with the numeric uid:gid of ``USER`` through ``setpriv``. Any other command or instruction
  is an error naming its line, so a change to the Dockerfile is rehearsed or noticed, never skipped.
* A compose service's environment is the image's ``ENV``, then its ``env_file``, then ``environment``
  (interpolated from the project's .env as compose does). URLs naming a compose service (``@postgres:5432``,
  ``redis://redis:6379``) are pointed at the local servers; a ``tmpfs`` is a fresh directory with its mode.

Not rehearsed: image layers and the base image's files, Docker networking and published ports, the
container's hostname, resource limits and restart policies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

# Commands a RUN line may use here: they touch nothing outside ``root`` once their paths are moved there.
RUN_COMMANDS = {"python", "python3", "pip", "install", "mkdir", "chmod", "chown"}
ACCOUNT_COMMANDS = {"groupadd", "useradd"}
# Compose service keys this module rehearses or knowingly leaves to Docker (networking, restarts).
SERVICE_KEYS = {
    "build",
    "command",
    "env_file",
    "environment",
    "depends_on",
    "restart",
    "hostname",
    "tmpfs",
    "volumes",
    "ports",
    "healthcheck",
    "image",
}
DOCKER_STOP_SECONDS = 10.0  # compose's default stop_grace_period: then SIGKILL


class RehearsalError(AssertionError):
    """What Docker would refuse or what would fail in the container, with the line or service and output."""


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str

    def where(self) -> str:
        return f"Dockerfile line {self.line}: {self.keyword} {self.args}"


@dataclass
class Stage:
    name: str
    image: str
    instructions: list[Instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comment lines dropped."""
    stages: list[Stage] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if continued:
            continue
        keyword, _, args = " ".join(pending).partition(" ")
        pending = []
        instruction = Instruction(start, keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0], []))
        elif not stages:
            raise RehearsalError(f"{instruction.where()}: before any FROM")
        else:
            stages[-1].instructions.append(instruction)
    return stages


@dataclass
class Healthcheck:
    argv: list[str]
    interval: float = 30.0
    timeout: float = 30.0
    start_period: float = 0.0
    retries: int = 3

    @property
    def patience(self) -> float:
        """How long Docker waits before calling the container unhealthy: the start period, then ``retries``
        failed checks an ``interval`` apart."""
        return self.start_period + self.retries * (self.interval + self.timeout)


def seconds(duration: str) -> float:
    """A Docker/compose duration (``10s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise RehearsalError(f"not a duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def exec_form(text: str) -> list[str]:
    """``["a", "b"]`` as argv; the shell form as ``/bin/sh -c text``, as Docker runs it."""
    if text.startswith("["):
        argv = json.loads(text)
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise RehearsalError(f"not an exec form: {text}")
        return argv
    return ["/bin/sh", "-c", text]


def parse_healthcheck(args: str) -> Healthcheck | None:
    words = args.split()
    options: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    if words and words[0].upper() == "NONE":
        return None
    if not words or words[0].upper() != "CMD":
        raise RehearsalError(f"HEALTHCHECK without CMD: {args}")
    check = Healthcheck(exec_form(args[args.upper().index("CMD") + 3 :].strip()))
    for key, value in options.items():
        if key == "retries":
            check.retries = int(value)
        elif key in ("interval", "timeout", "start-period"):
            setattr(check, key.replace("-", "_"), seconds(value))
        else:
            raise RehearsalError(f"HEALTHCHECK option --{key} is not rehearsed")
    return check


def dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    return [p.strip() for p in path.read_text().splitlines() if p.strip() and not p.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, approximated with fnmatch: the last matching pattern decides, ``!`` re-includes, a
    pattern matching a directory excludes what is inside it, and ``**/`` matches at any depth."""
    prefixes = [rel] + ["/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern] + ([pattern[3:], "*/" + pattern[3:]] if pattern.startswith("**/") else [])
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            result = not negate
    return result


def base_interpreter(image: str) -> str:
    """The host's ``python3.X`` for a ``python:3.X-…`` base image, from system directories a non-root user can
    reach (not a developer's pyenv in root's home)."""
    match = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", image)
    if not match:
        raise RehearsalError(f"FROM {image}: only python:3.X images are rehearsed")
    found = shutil.which(f"python{match.group(1)}", path="/usr/local/bin:/usr/bin:/bin")
    if not found:
        raise RehearsalError(f"FROM {image}: no python{match.group(1)} on this host to stand for it")
    return found


@dataclass
class Account:
    uid: int
    gid: int


@dataclass
class StageState:
    """What a stage's instructions have set so far: the image's config when the stage ends."""

    env: dict[str, str]
    workdir: str = "/"
    user: Account = field(default_factory=lambda: Account(0, 0))
    users: dict[str, int] = field(default_factory=lambda: {"root": 0})
    groups: dict[str, int] = field(default_factory=lambda: {"root": 0})
    homes: dict[int, str] = field(default_factory=lambda: {0: "/root"})
    cmd: list[str] = field(default_factory=list)
    healthcheck: Healthcheck | None = None
    exposed: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    borrowed: list[tuple[Path, Path]] = field(default_factory=list)  # (in root, back in the stage snapshot)


def expand(value: str, env: Mapping[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` from ``env`` (Docker's ENV substitution; unset is empty)."""
    return re.sub(
        r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value.replace("$$", "\0")
    ).replace("\0", "$")


class Rehearsal:
    """The Dockerfile's stages performed under one temporary ``root``, then its services run from compose.

    ``workspace`` holds ``root`` (the container's ``/``), the stages' snapshots, a ``python`` for the base image
    and the logs; it is made traversable by the container's user, as the image's ``/`` is."""

    def __init__(self, context: Path, workspace: Path, *, dockerfile: str | None = None) -> None:
        self.context = context
        self.workspace = workspace
        self.root = workspace / "root"
        self.snapshots = workspace / "stages"
        self.logs = workspace / "logs"
        self.base_bin = workspace / "base-bin"
        for path in (self.workspace, self.snapshots, self.logs, self.base_bin):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        self.text = dockerfile if dockerfile is not None else (context / "Dockerfile").read_text()
        self.stages = parse_dockerfile(self.text)
        self.ignore = dockerignore(context)
        self.durations: dict[str, float] = {}

    # ---- paths --------------------------------------------------------------------------------------
    def host(self, path: str) -> Path:
        """The container path ``path`` under ``root``."""
        return self.root / path.lstrip("/")

    def reroot(self, value: str) -> str:
        """Absolute paths in a value written in the Dockerfile or compose file (``/a:/b:$PATH``) moved under
        ``root``; URLs and relative values are left as written."""
        if "://" in value:
            return value
        return ":".join(str(self.host(p)) if p.startswith("/") else p for p in value.split(":"))

    def _fresh_root(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(mode=0o755)
        self.root.chmod(0o755)
        self.host("/tmp").mkdir(mode=0o1777)
        self.host("/tmp").chmod(0o1777)
        self.host("/root").mkdir(mode=0o700)

    def _base_env(self, stage: Stage) -> dict[str, str]:
        python = base_interpreter(stage.image)
        for name in ("python", "python3", Path(python).name):
            link = self.base_bin / name
            if not link.is_symlink():
                link.symlink_to(python)
        return {"PATH": f"{self.base_bin}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

    # ---- stages -------------------------------------------------------------------------------------
    def build(self) -> None:
        """Every stage but the last, each left as a snapshot for the ``COPY --from`` lines of later ones."""
        for stage in self.stages[:-1]:
            started = time.monotonic()
            self._fresh_root()
            self._perform(stage)
            target = self.snapshots / stage.name
            if target.exists():
                shutil.rmtree(target)
            self.root.rename(target)
            self.durations[f"stage {stage.name}"] = time.monotonic() - started

    @contextlib.contextmanager
    def runtime(self, dockerfile: str | None = None) -> Iterator[Runtime]:
        """The final stage assembled under ``root`` (from ``dockerfile``'s final stage when given: a variant
        of the same build stages). Borrowed trees go back to their snapshots on exit."""
        stages = parse_dockerfile(dockerfile) if dockerfile is not None else self.stages
        if [(s.image, s.instructions) for s in stages[:-1]] != [
            (s.image, s.instructions) for s in self.stages[:-1]
        ]:
            raise RehearsalError("the variant changes the build stages: rehearse it with its own Rehearsal")
        self._fresh_root()
        state: StageState | None = None
        try:
            state = self._perform(stages[-1])
            yield Runtime(self, state)
        finally:
            if state is not None:
                for inside, snapshot in reversed(state.borrowed):
                    inside.rename(snapshot)
            shutil.rmtree(self.root, ignore_errors=True)

    def _perform(self, stage: Stage) -> StageState:
        state = StageState(env=self._base_env(stage))
        handlers = {
            "ENV": self._env,
            "WORKDIR": self._workdir,
            "RUN": self._run,
            "COPY": self._copy,
            "USER": self._user,
            "CMD": lambda s, i: setattr(s, "cmd", exec_form(i.args)),
            "HEALTHCHECK": lambda s, i: setattr(s, "healthcheck", parse_healthcheck(i.args)),
            "EXPOSE": lambda s, i: s.exposed.extend(int(p.split("/")[0]) for p in i.args.split()),
            "LABEL": lambda s, i: None,
        }
        for instruction in stage.instructions:
            handler = handlers.get(instruction.keyword)
            if handler is None:
                raise RehearsalError(
                    f"{instruction.where()}: not rehearsed; teach tests/support/rehearsal.py"
                )
            handler(state, instruction)
        return state

    def _env(self, state: StageState, instruction: Instruction) -> None:
        words = shlex.split(instruction.args)
        pairs = (
            [tuple(w.split("=", 1)) for w in words]
            if all("=" in w for w in words)
            else [(words[0], " ".join(words[1:]))]
        )
        before = dict(state.env)  # one ENV line sees the values from before it, as in Docker
        for key, value in pairs:
            state.env[key] = expand(self.reroot(value), before)

    def _workdir(self, state: StageState, instruction: Instruction) -> None:
        path = instruction.args if instruction.args.startswith("/") else f"{state.workdir}/{instruction.args}"
        state.workdir = os.path.normpath(path)
        self.host(state.workdir).mkdir(parents=True, exist_ok=True)

    def _user(self, state: StageState, instruction: Instruction) -> None:
        user, _, group = instruction.args.partition(":")
        uid = int(user) if user.isdigit() else state.users.get(user)
        if uid is None:
            raise RehearsalError(f"{instruction.where()}: unknown user {user}")
        gid = int(group) if group.isdigit() else state.groups.get(group or user, uid)
        state.user = Account(uid, gid)

    def _run(self, state: StageState, instruction: Instruction) -> None:
        lexer = shlex.shlex(instruction.args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for token in lexer:
            if token == "&&":
                commands.append([])
            elif set(token) <= set("();<>|&"):
                raise RehearsalError(f"{instruction.where()}: shell operator {token!r} is not rehearsed")
            else:
                commands[-1].append(token)
        for argv in commands:
            if argv[0] in ACCOUNT_COMMANDS:
                self._account(state, argv)
                state.skipped.append(shlex.join(argv))
                continue
            if argv[0] not in RUN_COMMANDS:
                raise RehearsalError(
                    f"{instruction.where()}: {argv[0]} is not run on a host; teach tests/support/rehearsal.py"
                )
            argv = [self.reroot(a) if a.startswith("/") else a for a in argv]
            if argv[0] == "install":  # the accounts exist only in the image: their names become ids here
                ids = {"-o": state.users, "-g": state.groups}
                argv = [
                    str(ids[prev].get(a, a)) if prev in ids else a
                    for prev, a in zip(["", *argv[:-1]], argv, strict=True)
                ]
            env = {**{k: v for k, v in os.environ.items() if k.startswith("PIP_")}, **state.env}
            env.setdefault("HOME", str(self.host(state.homes.get(state.user.uid, "/"))))
            env["PIP_COMPILE"] = "0"  # see Runtime.byte_compile: ~60 s here for files no process imports
            result = as_user(
                argv,
                state.user,
                env=env,
                cwd=self.host(state.workdir),
                timeout=600,
            )
            if result.returncode != 0:
                raise RehearsalError(
                    f"{instruction.where()}: `{shlex.join(argv)}` exited {result.returncode}\n{tail(result.stdout)}"
                )

    def _account(self, state: StageState, argv: list[str]) -> None:
        """Remember the ids ``groupadd``/``useradd`` would give, for ``USER name`` and ``install -o name``."""
        options = dict(zip(argv[1:-1], argv[2:], strict=False))
        name = argv[-1]
        if argv[0] == "groupadd":
            state.groups[name] = int(options.get("--gid", options.get("-g", "999")))
            return
        uid = int(options.get("--uid", options.get("-u", "999")))
        state.users[name] = uid
        state.homes[uid] = options.get("--home-dir", options.get("-d", f"/home/{name}"))

    def _copy(self, state: StageState, instruction: Instruction) -> None:
        words = shlex.split(instruction.args)
        flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        sources, destination = paths[:-1], paths[-1]
        if not sources:
            raise RehearsalError(f"{instruction.where()}: nothing to copy")
        unknown = set(flags) - {"from", "chown", "chmod"}
        if unknown:
            raise RehearsalError(f"{instruction.where()}: COPY --{sorted(unknown)[0]} is not rehearsed")
        into_dir = destination.endswith("/") or len(sources) > 1 or destination in (".", "./")
        target = destination if destination.startswith("/") else f"{state.workdir}/{destination}"
        dst = self.host(os.path.normpath(target))
        owner = self._owner(state, flags["chown"], instruction) if "chown" in flags else None
        for source in sources:
            if "from" in flags:
                base = self.snapshots / flags["from"]
                if not base.is_dir():
                    raise RehearsalError(f"{instruction.where()}: no stage {flags['from']} was built")
                src = base / source.lstrip("/")
                if not src.exists():
                    raise RehearsalError(
                        f"{instruction.where()}: {source} does not exist in stage {flags['from']}"
                    )
            else:
                src = self.context / source
                rel = os.path.normpath(source)
                if not src.exists() or ignored(rel, self.ignore):
                    raise RehearsalError(
                        f"{instruction.where()}: {source} is not in the build context (missing or .dockerignored)"
                    )
            to = dst / src.name if into_dir and not src.is_dir() else dst
            self._place(src, to, state, from_stage="from" in flags)
            if owner is not None:
                chown_tree(to, owner)
            if "chmod" in flags:
                for path in [to, *(to.rglob("*") if to.is_dir() else [])]:
                    path.chmod(int(flags["chmod"], 8))

    def _place(self, src: Path, to: Path, state: StageState, *, from_stage: bool) -> None:
        to.parent.mkdir(parents=True, exist_ok=True)
        if from_stage and src.is_dir() and not to.exists():
            src.rename(to)  # a stage's tree, moved in and back: cheap, and at the path it was built at
            state.borrowed.append((to, src))
        elif src.is_dir():
            rel_root = os.path.relpath(src, self.context) if not from_stage else None
            for path in sorted(src.rglob("*")):
                rel = path.relative_to(src)
                if rel_root is not None and ignored(os.path.join(rel_root, str(rel)), self.ignore):
                    continue
                out = to / rel
                if path.is_dir() and not path.is_symlink():
                    out.mkdir(parents=True, exist_ok=True)
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out, follow_symlinks=False)
            to.mkdir(parents=True, exist_ok=True)
        else:
            shutil.copy2(src, to)

    def _owner(self, state: StageState, spec: str, instruction: Instruction) -> Account:
        user, _, group = spec.partition(":")
        uid = int(user) if user.isdigit() else state.users.get(user)
        gid = int(group) if group.isdigit() else state.groups.get(group or user)
        if uid is None or gid is None:
            raise RehearsalError(f"{instruction.where()}: unknown owner {spec}")
        return Account(uid, gid)


def chown_tree(path: Path, owner: Account) -> None:
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chown(item, owner.uid, owner.gid, follow_symlinks=False)


def tail(output: str | bytes | None, chars: int = 4000) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else (output or "")
    return text[-chars:]


def as_user(
    argv: list[str], user: Account, *, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``argv`` run with the container's user, environment and directory; output combined."""
    try:
        return subprocess.run(
            user_argv(argv, user),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, -1, f"{tail(exc.stdout)}\n(timed out after {timeout} s)")


def user_argv(argv: list[str], user: Account) -> list[str]:
    """``setpriv`` with the uid, gid and no supplementary groups (no account needed); root runs as is.
    ``argv[0]`` is looked up on the environment's PATH, as Docker does for an exec form."""
    if user.uid == 0 and os.geteuid() == 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RehearsalError("setpriv (util-linux) is needed to run as the image's user")
    return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--", *argv]


# ---- compose ------------------------------------------------------------------------------------------
REQUIRED_SECRETS = {
    "JWT_SECRET": lambda: secrets.token_urlsafe(48),
    "STRIPE_WEBHOOK_SECRET": lambda: f"whsec_{secrets.token_hex(24)}",
    "TOKEN_ENCRYPTION_KEY": lambda: fernet_key(),
}


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as compose reads an env_file: comments skipped, surrounding quotes removed,
    ``KEY=`` kept as an empty value (it sets the variable to "")."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def operator_dotenv(example: str) -> str:
    """The .env an operator makes from .env.example: every empty value of its required section filled (with a
    generated secret of the documented form), everything else as the example has it."""
    lines = []
    section = ""
    for line in example.splitlines():
        header = re.match(r"#\s*-+\s*(\w+)", line)
        if header:
            section = header.group(1).lower()
        key, eq, value = line.partition("=")
        if section == "required" and eq and not line.startswith("#") and not value.strip():
            generate = REQUIRED_SECRETS.get(key.strip())
            if generate is None:
                raise RehearsalError(f".env.example: no generator for the required {key.strip()}")
            line = f"{key.strip()}={generate()}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$VAR`` and ``$$``."""

    def one(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        if name is None:
            return variables.get(match.group(4), "")
        if op == ":-":
            return variables.get(name) or default
        if op == "-":
            return variables.get(name, default)
        return variables.get(name, "")

    pattern = r"\$\{(\w+)(?:(:-|-)([^}]*))?\}|\$(\w+)"
    return re.sub(pattern, one, value.replace("$$", "\0")).replace("\0", "$")


def local_url(value: str, services: Mapping[str, str]) -> str:
    """A URL whose host is a compose service, pointed at its local stand-in (the scheme, e.g. the driver of
    ``postgresql+asyncpg``, stays compose's; host, port, credentials and database are the stand-in's)."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.hostname not in services:
        return value
    local = urlsplit(services[parts.hostname])
    return urlunsplit((parts.scheme, local.netloc, local.path, parts.query, parts.fragment))


@dataclass
class Compose:
    """docker-compose.yml with the project's .env (compose reads it for interpolation too)."""

    data: dict
    dotenv_text: str

    @classmethod
    def read(cls, path: Path, dotenv_text: str) -> Compose:
        return cls(yaml.safe_load(path.read_text()), dotenv_text)

    @property
    def dotenv(self) -> dict[str, str]:
        return parse_dotenv(self.dotenv_text)

    def service(self, name: str) -> dict:
        service = self.data["services"][name]
        unknown = set(service) - SERVICE_KEYS
        if unknown:
            raise RehearsalError(f"compose service {name}: {sorted(unknown)} not rehearsed")
        return service

    def env_file(self, name: str) -> dict[str, str]:
        files = self.service(name).get("env_file", [])
        files = [files] if isinstance(files, str) else files
        if any(f != ".env" for f in files):
            raise RehearsalError(f"compose service {name}: env_file {files}: only .env is rehearsed")
        return self.dotenv if files else {}

    def environment(self, name: str) -> dict[str, str]:
        raw = self.service(name).get("environment", {})
        if isinstance(raw, list):
            raw = dict(item.split("=", 1) for item in raw)
        return {k: interpolate(str(v), self.dotenv) for k, v in raw.items()}

    def healthcheck(self, name: str) -> Healthcheck | None:
        spec = self.service(name).get("healthcheck")
        if not spec:
            return None
        test = spec["test"]
        if isinstance(test, str):
            argv = ["/bin/sh", "-c", test]
        elif test[0] == "CMD":
            argv = test[1:]
        elif test[0] == "CMD-SHELL":
            argv = ["/bin/sh", "-c", test[1]]
        else:
            raise RehearsalError(f"compose service {name}: healthcheck test {test[0]} not rehearsed")
        check = Healthcheck(argv, retries=int(spec.get("retries", 3)))
        for key in ("interval", "timeout", "start_period"):
            if key in spec:
                setattr(check, key, seconds(str(spec[key])))
        return check

    def published(self, name: str) -> list[int]:
        """The container ports of ``ports:`` (``host:container``)."""
        return [int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in self.service(name).get("ports", [])]


@dataclass
class Runtime:
    """The assembled final stage: the image's config, ready to run compose services from it."""

    rehearsal: Rehearsal
    state: StageState

    @property
    def image_env(self) -> dict[str, str]:
        return self.state.env

    def overridden(
        self, compose: Compose, name: str, services: Mapping[str, str]
    ) -> dict[str, tuple[str, str]]:
        """Image ENV values the service's env_file replaces and its ``environment`` does not set again:
        name -> (the image's value, the container's)."""
        env = self.container_env(compose, name, services)
        chosen = compose.environment(name)
        return {
            key: (value, env[key])
            for key, value in self.image_env.items()
            if key in compose.env_file(name) and key not in chosen and env[key] != value
        }

    def container_env(
        self, compose: Compose, name: str, services: Mapping[str, str], **extra: str
    ) -> dict[str, str]:
        """Docker's order: image ENV < env_file < environment; paths moved under root, service URLs local."""
        env = dict(self.image_env)
        for key, value in {**compose.env_file(name), **compose.environment(name), **extra}.items():
            env[key] = local_url(self.rehearsal.reroot(value), services)
        env.setdefault("HOME", str(self.rehearsal.host(self.state.homes.get(self.state.user.uid, "/"))))
        env.setdefault("HOSTNAME", compose.service(name).get("hostname", name))
        env.setdefault("TMPDIR", str(self.rehearsal.host("/tmp")))  # the container's /tmp, not the host's
        return env

    def mount_tmpfs(self, compose: Compose, name: str) -> None:
        """Each ``tmpfs`` entry a fresh, empty, root-owned directory with its ``mode`` (Docker's default 1777)."""
        for entry in compose.service(name).get("tmpfs", []):
            path, _, options = entry.partition(":")
            mode = next((o[5:] for o in options.split(",") if o.startswith("mode=")), "1777")
            target = self.rehearsal.host(path)
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            os.chown(target, 0, 0)
            target.chmod(int(mode, 8))
        for volume in compose.service(name).get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                raise RehearsalError(f"compose service {name}: bind mount {volume} not rehearsed")
            # A new named volume starts as a copy of the image's directory: the one already under root.

    @property
    def workdir(self) -> Path:
        return self.rehearsal.host(self.state.workdir)

    def contents(self) -> str:
        """What WORKDIR holds, for failure messages (a file a COPY line forgot shows by its absence)."""
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in self.workdir.iterdir())
        return f"WORKDIR {self.state.workdir} holds: {', '.join(names) or 'nothing'}"

    def byte_compile(self, modules: list[str]) -> None:
        """Import ``modules`` once as the build's root would, writing their .pyc into the venv.

        The build stage's ``pip install`` byte-compiles every installed file; the rehearsal installs with
        ``PIP_COMPILE=0`` (that compile step is ~60 s here, mostly for files no process imports) and then
        compiles what the processes import, so they start as fast as in the image (PYTHONDONTWRITEBYTECODE
        stops them writing their own) and the file set differs only by unused .pyc files."""
        env = {k: v for k, v in self.image_env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
        result = as_user(
            ["python", "-c", code, *modules], Account(0, 0), env=env, cwd=self.workdir, timeout=300
        )
        if result.returncode != 0:
            raise RehearsalError(f"importing {modules} in the image failed\n{tail(result.stdout)}")

    def run(self, argv: list[str], env: dict[str, str], *, what: str, timeout: float = 120) -> str:
        """A one-shot command (compose ``command`` of a service that runs to completion); its output."""
        result = as_user(argv, self.state.user, env=env, cwd=self.workdir, timeout=timeout)
        if result.returncode != 0:
            raise RehearsalError(
                f"{what}: `{shlex.join(argv)}` exited {result.returncode}\n{tail(result.stdout)}\n{self.contents()}"
            )
        return result.stdout

    def start(self, argv: list[str], env: dict[str, str], *, log_name: str) -> Process:
        log_path = self.rehearsal.logs / f"{log_name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                user_argv(argv, self.state.user),
                env=env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Process(proc, log_path, argv)

    def wait_healthy(self, check: Healthcheck, env: dict[str, str], process: Process, *, what: str) -> float:
        """Run ``check`` as Docker would (the container's user, env and WORKDIR, its timeout) until it exits 0;
        fail once Docker would call the container unhealthy, or at once if the process exits. Seconds taken."""
        started = time.monotonic()
        deadline = started + check.patience
        last = ""
        while True:
            if process.proc.poll() is not None:
                raise RehearsalError(
                    f"{what}: `{shlex.join(process.argv)}` exited {process.proc.returncode} before it was "
                    f"healthy\n{process.tail()}\n{self.contents()}"
                )
            result = as_user(check.argv, self.state.user, env=env, cwd=self.workdir, timeout=check.timeout)
            if result.returncode == 0:
                return time.monotonic() - started
            last = tail(result.stdout, 1500)
            if time.monotonic() >= deadline:
                raise RehearsalError(
                    f"{what}: healthcheck `{shlex.join(check.argv)}` still failing after {check.patience:.0f} s"
                    f"\nlast output: {last}\n{process.tail()}"
                )
            time.sleep(0.2)  # a poll interval, bounded by the deadline Docker would apply


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str]

    def tail(self, chars: int = 4000) -> str:
        return f"--- output of `{shlex.join(self.argv)}` ---\n{tail(self.log_path.read_bytes(), chars)}"

    def stop(self, grace: float = DOCKER_STOP_SECONDS) -> tuple[int | None, float]:
        """``docker stop``: SIGTERM, then SIGKILL after ``grace``. (exit status or None if killed, seconds)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace), time.monotonic() - started
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            return None, time.monotonic() - started


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def with_port(argv: list[str], old: int, new: int) -> list[str]:
    """``argv`` with the port of its URLs moved from ``old`` to ``new`` (nothing else changed)."""
    if old == new:
        return argv
    moved = [re.sub(rf"(//[\w.\[\]:-]+?):{old}\b", rf"\1:{new}", a) for a in argv]
    if moved == argv:
        raise RehearsalError(f"the healthcheck `{shlex.join(argv)}` does not name port {old}")
    return moved


def workspace() -> Path:
    """A fresh directory in the system temp dir (not pytest's, which is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tradedesk-rehearsal-"))
    path.chmod(0o755)
    return path


@dataclass
class Up:
    """The app service running from the rehearsed image, after its one-shot dependencies completed."""

    process: Process
    env: dict[str, str]
    port: int
    healthy_after: dict[str, float]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def image_port(runtime: Runtime, compose: Compose, name: str) -> int:
    """The one port the image listens on: ENV PORT, EXPOSE and compose's published container port agree."""
    declared = {"ENV PORT": [int(runtime.image_env.get("PORT", "0"))], "EXPOSE": runtime.state.exposed}
    declared[f"compose {name} ports"] = compose.published(name)
    ports = {p for values in declared.values() for p in values}
    if len(ports) != 1 or not all(declared.values()):
        raise RehearsalError(f"the image's port is not one port: {declared}")
    return ports.pop()


@contextlib.contextmanager
def up(runtime: Runtime, compose: Compose, name: str, services: Mapping[str, str]) -> Iterator[Up]:
    """``docker compose up <name>`` from ``runtime``: every ``service_completed_successfully`` dependency run to
    completion (its ``command`` or the image's CMD), then the service's command as the image's user, healthy
    by the image's HEALTHCHECK and by compose's. ``services`` maps compose service names to local stand-ins
    (their ``service_healthy`` dependencies are expected to be up). Port 8000 is kept unless it is taken here;
    then a free one is set in PORT and only the port is changed in the healthchecks."""
    spec = compose.service(name)
    for dependency, condition in spec.get("depends_on", {}).items():
        condition = condition.get("condition") if isinstance(condition, dict) else "service_started"
        if condition == "service_completed_successfully":
            other = compose.service(dependency)
            if other.get("build") != spec.get("build"):
                raise RehearsalError(f"compose service {dependency}: not built from the rehearsed image")
            env = runtime.container_env(compose, dependency, services)
            runtime.mount_tmpfs(compose, dependency)
            command = other.get("command") or runtime.state.cmd
            runtime.run(list(command), env, what=f"compose service {dependency}")
        elif dependency not in services:
            raise RehearsalError(f"compose service {name} depends on {dependency}: no local stand-in given")
    port = image_port(runtime, compose, name)
    local_port = port if port_free(port) else free_port()
    extra = {"PORT": str(local_port)} if local_port != port else {}
    env = runtime.container_env(compose, name, services, **extra)
    runtime.mount_tmpfs(compose, name)
    command = spec.get("command") or runtime.state.cmd
    if not command:
        raise RehearsalError(f"compose service {name}: no command and the image has no CMD")
    process = runtime.start(list(command), env, log_name=name)
    try:
        checks = {
            "Dockerfile HEALTHCHECK": runtime.state.healthcheck,
            f"compose {name} healthcheck": compose.healthcheck(name),
        }
        healthy: dict[str, float] = {}
        for label, check in checks.items():
            if check is None:
                raise RehearsalError(f"{label}: none, so Docker would never report the app healthy")
            check = dataclasses.replace(check, argv=with_port(check.argv, port, local_port))
            healthy[label] = runtime.wait_healthy(check, env, process, what=f"compose service {name}")
        yield Up(process, env, local_port, healthy)
    finally:
        if process.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.proc.pid, signal.SIGKILL)
            process.proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
