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
and ``WORKDIR`` expand variables (``dockerfile_words``) from the ARG and ENV values set on
earlier lines and the image's own ``PATH`` and ``HOME`` (``ENV PATH=$PATH:/opt/bin``); an ENV
value wins over an ARG of the same name; ``ARG TARGETARCH`` and the other automatic platform
ARGs get this machine's values. ``RUN`` is left to the shell that runs it.
"""

from __future__ import annotations

import json
import platform
import shlex
from dataclasses import dataclass, field

from simulator.dockerfile_words import DockerfileError, one_word, split_words
from simulator.runtime.docker_image import HOME, PATH

IGNORED = frozenset(
    {"FROM", "LABEL", "EXPOSE", "CMD", "ENTRYPOINT", "USER", "SHELL", "VOLUME", "STOPSIGNAL", "HEALTHCHECK",
     "ONBUILD", "MAINTAINER"}
)


# What the image itself defines, as a base image's ENV would: both runtimes run steps with
# these (the netns sandbox's defaults are the same).
IMAGE_ENV = {"PATH": PATH, "HOME": HOME}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(platform.machine(), platform.machine())
# BuildKit's automatic platform ARGs (set once declared with ARG): builds run on this machine.
PLATFORM_ARGS = {
    f"{side}{key}": value
    for side in ("TARGET", "BUILD")
    for key, value in (("PLATFORM", f"linux/{_ARCH}"), ("OS", "linux"), ("ARCH", _ARCH), ("VARIANT", ""))
}


def _mkdir(path: str) -> str:
    """A shell command that makes ``path`` (``~`` is the devbox user's home) and its parents."""
    if path == "~" or path.startswith("~/"):
        return 'mkdir -p -- "$HOME"' + shlex.quote(path[1:]) if path != "~" else 'mkdir -p -- "$HOME"'
    return "mkdir -p -- " + shlex.quote(path)


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
    set_by_env: set[str] = set()  # an ENV value wins over an ARG of the same name (Docker's rule)
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
            values = _env_pairs(rest, where, {**IMAGE_ENV, **env})
            env.update(values)
            set_by_env.update(values)
        elif keyword == "ARG":
            for name, default in _arg_pairs(rest, where, {**IMAGE_ENV, **env}).items():
                value = build_args.get(name, default if default is not None else PLATFORM_ARGS.get(name))
                if value is not None and name not in set_by_env:
                    env[name] = value
        elif keyword == "WORKDIR":
            directory = one_word(rest, where, {**IMAGE_ENV, **env})
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


def _env_pairs(rest: str, where: str, env: dict[str, str]) -> dict[str, str]:
    words = split_words(rest, where, env)
    if not words:
        raise DockerfileError(f"{where}: ENV needs NAME=value")
    if "=" not in words[0]:
        # The legacy form, ENV NAME value with spaces: the rest of the line is one value.
        name, *value = rest.split(None, 1)  # any white space after the name
        if not value:
            raise DockerfileError(f"{where}: ENV {name} needs a value")
        return {_key(name, where): one_word(value[0].strip(), where, env)}
    out: dict[str, str] = {}
    for word in words:
        name, eq, value = word.partition("=")
        if not eq:
            raise DockerfileError(f"{where}: {word!r} is not NAME=value")
        out[_key(name, where)] = value
    return out


def _arg_pairs(rest: str, where: str, env: dict[str, str]) -> dict[str, str | None]:
    """``ARG NAME[=default] ...``: each default expanded; None where none is given."""
    out: dict[str, str | None] = {}
    for word in split_words(rest, where, env):  # quotes and references done: `ARG A="x y"`
        name, eq, default = word.partition("=")
        out[_key(name, where)] = default if eq else None
    if not out:
        raise DockerfileError(f"{where}: ARG needs a name")
    return out


def _key(name: str, where: str) -> str:
    """Docker takes any name (``spring.profiles.active``) but an empty one, or one with ``=``."""
    if not name or "=" in name or "\0" in name or any(c.isspace() for c in name):
        raise DockerfileError(f"{where}: {name!r} is not a variable name")
    return name
