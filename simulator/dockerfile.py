"""The part of a Dockerfile a blueprint build can honour: its RUN steps (both runtimes).

A netns devbox is not a container image: it runs on the host's own root file system with a
private home and /tmp; a docker devbox runs the simulator's one image. So a blueprint's
``dockerfile`` is read for what can be replayed in a build devbox, in order: ``RUN`` (shell form, or exec form as a quoted command line), ``ENV``
and ``ARG`` (variables for the following RUN steps; ``ARG`` defaults are overridden by the
blueprint's ``build_args``), ``WORKDIR`` (the following RUN steps' directory, made if missing). ``FROM``,
``LABEL``, ``EXPOSE``, ``CMD``, ``ENTRYPOINT``, ``USER``, ``SHELL``, ``VOLUME``,
``STOPSIGNAL``, ``HEALTHCHECK`` and ``ONBUILD`` are ignored (each noted in the build log).
``COPY`` and ``ADD`` need a build context and fail the build, as does anything unknown.
Line continuations (``\\``) and comments are handled. As Docker does, ``ENV``, ``ARG`` defaults
and ``WORKDIR`` expand ``$NAME``, ``${NAME}``, ``${NAME:-word}``, ``${NAME:+word}`` (and the
forms without ``:``) from the ARG and ENV values set on earlier lines and the image's own
``PATH`` and ``HOME`` (``ENV PATH=$PATH:/opt/bin``), never inside single quotes or after a
``\\``; ``RUN`` is left to the shell that runs it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from simulator.runtime.docker_image import HOME, PATH

IGNORED = frozenset(
    {"FROM", "LABEL", "EXPOSE", "CMD", "ENTRYPOINT", "USER", "SHELL", "VOLUME", "STOPSIGNAL", "HEALTHCHECK",
     "ONBUILD", "MAINTAINER"}
)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What the image itself defines, as a base image's ENV would: both runtimes run steps with
# these (the netns sandbox's defaults are the same).
IMAGE_ENV = {"PATH": PATH, "HOME": HOME}


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
            # Every word of the line sees the values from before it (Docker: `ENV a=2 b=$a`
            # gives b the earlier a).
            env.update(_pairs(rest, where, {**IMAGE_ENV, **env}, allow_bare=False))
        elif keyword == "ARG":
            for name, default in _pairs(rest, where, {**IMAGE_ENV, **env}, allow_bare=True).items():
                value = build_args.get(name, default)
                if value is not None:
                    env[name] = value
        elif keyword == "WORKDIR":
            directory = " ".join(_words(rest, where, {**IMAGE_ENV, **env}))
            if not directory:
                raise DockerfileError(f"{where}: WORKDIR needs a directory")
            cwd = directory if directory.startswith(("/", "~")) or cwd is None else f"{cwd.rstrip('/')}/{directory}"
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


def _pairs(rest: str, where: str, env: dict[str, str], *, allow_bare: bool) -> dict[str, str | None]:
    words = _words(rest, where, env)
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


def _words(text: str, where: str, env: dict[str, str]) -> list[str]:
    """``text`` split into words as Docker does for ENV, ARG and WORKDIR: quotes removed,
    ``\\`` escaping the next character (in double quotes only before ``"``, ``\\`` and ``$``),
    variables expanded outside single quotes. A value expanded never splits a word."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            i += 1
            continue
        in_word = True
        if c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise DockerfileError(f"{where}: no closing quotation")
            word.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise DockerfileError(f"{where}: no closing quotation")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\$':
                    word.append(text[i + 1])
                    i += 2
                else:
                    piece, i = _character_or_reference(text, i, where, env)
                    word.append(piece)
        elif c == "\\":
            word.append(text[i + 1] if i + 1 < n else "")
            i += 2
        else:
            piece, i = _character_or_reference(text, i, where, env)
            word.append(piece)
    if in_word:
        words.append("".join(word))
    return words


def _character_or_reference(text: str, i: int, where: str, env: dict[str, str]) -> tuple[str, int]:
    """``text[i]`` as it stands, or the value of the reference it starts; the index after it."""
    if text[i] == "$":
        return _expand(text, i, where, env)
    return text[i], i + 1


def _expand(text: str, i: int, where: str, env: dict[str, str]) -> tuple[str, int]:
    """The value of the reference at ``text[i] == "$"`` and the index after it; an unset name
    is empty, and a ``$`` starting no reference stays."""
    if text.startswith("${", i):
        end = _closing_brace(text, i + 2)
        if end < 0:
            raise DockerfileError(f"{where}: no closing brace in {text[i:]!r}")
        inner = text[i + 2:end]
        name = _NAME.match(inner)
        if name is None:
            raise DockerfileError(f"{where}: bad substitution ${{{inner}}}")
        rest = inner[name.end():]
        value = env.get(name.group())
        if rest == "":
            return value or "", end + 1
        for operator in (":-", ":+", "-", "+"):
            if rest.startswith(operator):
                word = " ".join(_words(rest[len(operator):], where, env)) if rest[len(operator):].strip() else ""
                unset = value is None or (operator.startswith(":") and value == "")
                if operator.endswith("-"):
                    return (word if unset else value or ""), end + 1
                return ("" if unset else word), end + 1
        raise DockerfileError(f"{where}: bad substitution ${{{inner}}}")
    name = _NAME.match(text, i + 1)
    if name is None:
        return "$", i + 1
    return env.get(name.group(), ""), name.end()


def _closing_brace(text: str, i: int) -> int:
    depth = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1
