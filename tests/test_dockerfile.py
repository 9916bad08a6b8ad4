"""simulator.dockerfile: which Dockerfile instructions a netns blueprint build replays."""

from __future__ import annotations

import pytest

from simulator.dockerfile import DockerfileError, Step, plan


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
        ("ENV -i=x", "is not NAME=value"),
        ("ENV 1BAD value", "not a variable name"),
        ("ENV 'unterminated", "No closing quotation"),
        ("WORKDIR", "WORKDIR needs a directory"),
    ],
)
def test_errors_name_the_line(text, message):
    with pytest.raises(DockerfileError, match=message) as info:
        plan("FROM x\n" + text)
    assert str(info.value).startswith("line 2:")
