"""The part of a Dockerfile a blueprint build can honour: its RUN steps (both runtimes).

A netns devbox is not a container image: it runs on the host's own root file system with a
private home and /tmp; a docker devbox runs the simulator's one image. So a blueprint's
``dockerfile`` is read for what can be replayed in a build devbox, in order: ``RUN`` (shell form, or exec form as a quoted command line), ``ENV``
and ``ARG`` (variables for the following RUN steps; ``ARG`` defaults are overridden by the
blueprint's ``build_args``), ``WORKDIR`` (the following RUN steps' directory, made if missing). ``FROM``,
``LABEL``, ``EXPOSE``, ``CMD``, ``ENTRYPOINT``, ``USER``, ``SHELL``, ``VOLUME``,
``STOPSIGNAL``, ``HEALTHCHECK`` and ``ONBUILD`` are ignored (each noted in the build log).
``COPY`` and ``ADD`` need a build context and fail the build, as does anything unknown.
Line continuations (``\\``) and comments are handled; variables are expanded by the shell
that runs the step, not by this parser.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

IGNORED = frozenset(
    {"FROM", "LABEL", "EXPOSE", "CMD", "ENTRYPOINT", "USER", "SHELL", "VOLUME", "STOPSIGNAL", "HEALTHCHECK",
     "ONBUILD", "MAINTAINER"}
)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _mkdir(path: str) -> str:
    """A shell command that makes ``path`` (``~`` is the devbox user's home) and its parents."""
    if path == "~" or path.startswith("~/"):
        return 'mkdir -p -- "$HOME"' + shlex.quote(path[1:]) if path != "~" else 'mkdir -p -- "$HOME"'
    return "mkdir -p -- " + shlex.quote(path)


class DockerfileError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    command: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # instructions skipped, for the build log


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments), continuations joined, comments dropped."""
    out: list[tuple[int, str, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.strip().partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
        pending = ""
    if pending.strip():
        keyword, _, rest = pending.strip().partition(" ")
        out.append((start, keyword.upper(), rest.strip()))
    return out


def plan(text: str, build_args: dict[str, str] | None = None) -> Plan:
    build_args = dict(build_args or {})
    env: dict[str, str] = {}
    cwd: str | None = None
    made: set[str] = set()  # WORKDIR directories a mkdir step was emitted for
    result = Plan()
    for number, keyword, rest in instructions(text):
        where = f"line {number}"
        if keyword == "RUN":
            if cwd is not None and cwd not in made:
                # WORKDIR's directory, made (as Docker does) before the first step that runs in
                # it: one no step uses is not made (on netns it may be a directory the build
                # devbox's user cannot create, and nothing needs it).
                result.steps.append(Step(_mkdir(cwd), dict(env), None))
                made.add(cwd)
            result.steps.append(Step(_run_command(rest, where), dict(env), cwd))
        elif keyword == "ENV":
            env.update(_pairs(rest, where, allow_bare=False))
        elif keyword == "ARG":
            for name, default in _pairs(rest, where, allow_bare=True).items():
                value = build_args.get(name, default)
                if value is not None:
                    env[name] = value
        elif keyword == "WORKDIR":
            if not rest:
                raise DockerfileError(f"{where}: WORKDIR needs a directory")
            cwd = rest if rest.startswith(("/", "~")) or cwd is None else f"{cwd.rstrip('/')}/{rest}"
        elif keyword in IGNORED:
            result.ignored.append(f"{where}: {keyword} ignored (a blueprint builds on the simulator's devbox image)")
        elif keyword in ("COPY", "ADD"):
            raise DockerfileError(f"{where}: {keyword} is not supported (blueprints have no build context here)")
        else:
            raise DockerfileError(f"{where}: unknown instruction {keyword!r}")
    return result


def _run_command(rest: str, where: str) -> str:
    if not rest:
        raise DockerfileError(f"{where}: RUN needs a command")
    if rest.startswith("["):
        try:
            argv = json.loads(rest)
        except ValueError as exc:
            raise DockerfileError(f"{where}: RUN [...] is not a JSON list of strings") from exc
        if not argv or not all(isinstance(a, str) for a in argv):
            raise DockerfileError(f"{where}: RUN [...] is not a JSON list of strings")
        return shlex.join(argv)
    return rest


def _pairs(rest: str, where: str, *, allow_bare: bool) -> dict[str, str | None]:
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise DockerfileError(f"{where}: {exc}") from exc
    if not words:
        raise DockerfileError(f"{where}: nothing to set")
    if "=" not in words[0] and not allow_bare:
        # Legacy form: ENV NAME value with spaces
        if not _NAME.fullmatch(words[0]):
            raise DockerfileError(f"{where}: {words[0]!r} is not a variable name")
        return {words[0]: " ".join(words[1:])}
    out: dict[str, str | None] = {}
    for word in words:
        name, eq, value = word.partition("=")
        if not _NAME.fullmatch(name) or (not eq and not allow_bare):
            raise DockerfileError(f"{where}: {word!r} is not NAME=value")
        out[name] = value if eq else None
    return out
