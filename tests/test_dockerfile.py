"""simulator.dockerfile: which Dockerfile instructions a netns blueprint build replays."""

from __future__ import annotations

import platform

import pytest

from simulator.dockerfile import PLATFORM_ARGS, DockerfileError, Step, plan
from simulator.runtime.docker_image import HOME, PATH


def test_run_env_arg_workdir_and_continuations():
    result = plan(
        "FROM debian:12\n"
        "ARG A=1 B\n"
        "ENV X=\"two words\" Y=y\n"
        "ENV LEGACY value with spaces\n"
        "WORKDIR /srv\n"
        "WORKDIR app\n"
        "RUN echo $A \\\n"
        "  # inner comment\n"
        "  && echo $X\n"
        'RUN ["printf", "%s", "a b"]\n'
        "EXPOSE 80\n",
        build_args={"B": "bee", "UNUSED": "u"},
    )
    env = {"A": "1", "B": "bee", "X": "two words", "Y": "y", "LEGACY": "value with spaces"}
    assert result.steps == [
        Step("mkdir -p -- /srv/app", env, None),  # WORKDIR's directory, made for the first step in it
        Step("echo $A  && echo $X", env, "/srv/app"),
        Step("printf %s 'a b'", env, "/srv/app"),
    ]
    assert [note.split(":")[1].strip() for note in result.ignored] == [
        "FROM ignored (a blueprint builds on the simulator's devbox image)",
        "EXPOSE ignored (a blueprint builds on the simulator's devbox image)",
    ]


@pytest.mark.parametrize(
    "workdir, command",
    [
        ("~", 'mkdir -p -- "$HOME"'),
        ("~/my app", 'mkdir -p -- "$HOME"\'/my app\''),
        ("/tmp/a b", "mkdir -p -- '/tmp/a b'"),
        ("rel", "mkdir -p -- rel"),
    ],
)
def test_workdir_makes_its_directory(workdir, command):
    assert plan(f"WORKDIR {workdir}\nRUN pwd\nRUN ls").steps == [
        Step(command, {}, None), Step("pwd", {}, workdir), Step("ls", {}, workdir)  # made once
    ]


def test_a_workdir_no_step_runs_in_is_not_made():
    assert plan("WORKDIR /app\nCMD x\n").steps == []
    assert plan("WORKDIR /opt\nWORKDIR ~/w\nRUN true").steps == [Step('mkdir -p -- "$HOME"/w', {}, None), Step("true", {}, "~/w")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("COPY . /app", "COPY is not supported"),
        ("ADD x y", "ADD is not supported"),
        ("NOPE x", "unknown instruction"),
        ("RUN", "RUN needs a command"),
        ('RUN ["a", 1]', "JSON list"),
        ("RUN [oops", "JSON list"),
        ("ENV =x", "is not a variable name"),
        ("ENV K", "ENV K needs a value"),
        ("ENV A=1 B", "'B' is not NAME=value"),
        ("ARG", "ARG needs a name"),
        ("ENV 'unterminated", "no closing quotation"),
        ('ENV A="unterminated', "no closing quotation"),
        ("ENV A=${B", "no closing brace"),
        ("ENV A=${1B}", "bad substitution"),
        ("ENV A=${NOPE:?set NOPE first}", "NOPE: set NOPE first"),  # Docker's required-variable form
        ("ENV A=${NOPE?}", "NOPE: is not set"),
        ("ENV A=${B/x/y}", "bad substitution"),  # replacement: not supported here
        ("ENV A=" + "${B:-" * 40 + "x" + "}" * 40, "nested deeper than 32"),  # 500 levels was a RecursionError
        ("WORKDIR $NOPE", "WORKDIR needs a directory"),
        ("WORKDIR", "WORKDIR needs a directory"),
    ],
)
def test_errors_name_the_line(text, message):
    with pytest.raises(DockerfileError, match=message) as info:
        plan("FROM x\n" + text)
    assert str(info.value).startswith("line 2:")


def _env(text: str, build_args: dict[str, str] | None = None) -> dict[str, str]:
    return plan(text + "\nRUN true", build_args).steps[-1].env


# Docker's expansion in ENV, ARG and WORKDIR (before, `ENV Y=$X` gave Y the text "$X", and
# `ENV PATH=$PATH:/opt/bin` left every later step without a PATH).
@pytest.mark.parametrize(
    "line, expected",
    [
        ("ENV Y=$X", "2"),
        ("ENV Y=${X}", "2"),
        ('ENV Y="$X and ${X}"', "2 and 2"),
        ("ENV Y='$X'", "$X"),  # single quotes: literal
        ("ENV Y=\\$X", "$X"),  # escaped
        ('ENV Y="\\$X"', "$X"),
        ("ENV Y=$X$X-$", "22-$"),  # a $ starting no reference stays
        ("ENV Y=$NOPE.", "."),  # unset: empty
        ("ENV Y=${NOPE:-dflt}", "dflt"),
        ("ENV Y=${X:-dflt}", "2"),
        ("ENV Y=${EMPTY:-dflt}", "dflt"),
        ("ENV Y=${EMPTY-dflt}", ""),  # set, though empty
        ("ENV Y=${X:+alt}", "alt"),
        ("ENV Y=${NOPE:+alt}", ""),
        ("ENV Y=${X:-${NOPE:-deep}}", "2"),
        ("ENV Y=${NOPE:-${X}x}", "2x"),
        ("ENV Y=$SPACED", "a b"),  # an expanded value never splits a word
        ("ENV Y $X with words", "2 with words"),  # the legacy form
        ("ENV Y=$PATH:/opt/bin", PATH + ":/opt/bin"),  # the image's own variables
        ("ENV Y=$HOME/x", HOME + "/x"),
        ("ARG Y=$X", "2"),
        ('ARG Y="$X and  more"', "2 and  more"),  # a quoted default with spaces is one
        ("ENV Y=${X:?unused}", "2"),
        ("ENV Y=${EMPTY?unused}", ""),
        ("ENV Y=$$-$1-$@-${1}-$0", "----"),  # special parameters: never set, empty (before: kept)
        ("ENV Y=${NOPE:-x  y}", "x  y"),  # a default keeps its white space
        ('ENV Y=${NOPE:-"}"}', "}"),  # a quoted } does not close
        ("ENV Y=${NOPE:-a{b}", "a{b"),
        ("ENV Y $X  with   words", "2  with   words"),  # the legacy form: the rest of the line
        ("ENV Y\t$X", "2"),
        ("ENV Y=${VERSION#v}", "1.2.3-rc1"),
        ("ENV Y=${VERSION##*.}", "3-rc1"),
        ("ENV Y=${VERSION%-*}", "v1.2.3"),
        ("ENV Y=${VERSION%%.*}", "v1"),
        ("ENV Y=${VERSION#x}", "v1.2.3-rc1"),  # no match: unchanged
        ("ENV Y=$é", ""),  # a letter, as in Docker: a (never set) name
        ("ENV spring.profiles.active=dev Y=ok", "ok"),  # any name without '=' (Docker's rule)
    ],
)
def test_env_arg_and_workdir_expand_variables_as_docker_does(line, expected):
    env = _env(f"ARG X=1\nENV EMPTY=\"\" SPACED='a b' VERSION=v1.2.3-rc1\n{line}", {"X": "2"})
    assert env["Y"] == expected


def test_every_word_of_an_env_line_sees_the_values_from_before_it():
    assert _env("ENV abc=hello\nENV abc=bye def=$abc") == {"abc": "bye", "def": "hello"}
    # A later line sees them all; a build arg overrides the ARG default used in an ENV.
    assert _env("ARG V=1.0\nENV APP_VERSION=$V\nENV TAG=app-$APP_VERSION", {"V": "2.0"}) == {
        "V": "2.0", "APP_VERSION": "2.0", "TAG": "app-2.0"}


def test_workdir_expands_and_path_may_be_extended():
    result = plan("ARG APP=web\nWORKDIR /srv/$APP\nWORKDIR ${SUB:-logs}\nENV PATH=$PATH:/srv/web/bin\nRUN pwd")
    env = {"APP": "web", "PATH": PATH + ":/srv/web/bin"}
    assert result.steps == [Step("mkdir -p -- /srv/web/logs", env, None), Step("pwd", env, "/srv/web/logs")]
    assert plan("WORKDIR /srv/${NOPE:-my  app}\nRUN pwd").steps[1].cwd == "/srv/my  app"  # one word, spaces kept


def test_env_wins_over_an_arg_of_the_same_name_and_platform_args_are_this_machine_s():
    assert _env("ENV A=from-env\nARG A=from-arg", {"A": "from-build-arg"})["A"] == "from-env"
    assert _env("ARG A=from-arg\nENV B=$A", {"A": "given"})["B"] == "given"
    env = _env("ARG TARGETARCH TARGETOS\nARG TARGETPLATFORM=custom\nENV T=$TARGETOS/$TARGETARCH")
    assert env["T"] == f"linux/{PLATFORM_ARGS['TARGETARCH']}" and env["TARGETPLATFORM"] == "custom"
    assert PLATFORM_ARGS["TARGETARCH"] == {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    assert _env("ENV X=$TARGETARCH")["X"] == ""  # only once declared, as in BuildKit
