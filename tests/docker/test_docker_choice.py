"""Choosing the runtime (--runtime docker|netns|auto|none, --image) and the Docker runtime's
pure helpers. No root, no daemon: the probes are replaced."""

from __future__ import annotations

import pytest

from simulator import cli
from simulator.config import Settings
from simulator.runtime import factory
from simulator.runtime.docker_files import container_path
from simulator.runtime.docker_image import is_static_elf


@pytest.mark.parametrize(
    "docker, netns, choice, expected",
    [
        ([], [], "auto", "docker"),
        (["no daemon"], [], "auto", "netns"),
        (["no daemon"], ["not root"], "auto", None),
        ([], [], "netns", "netns"),
        ([], [], "docker", "docker"),
        ([], [], "none", None),
    ],
)
def test_choose_runtime(monkeypatch, docker, netns, choice, expected):
    monkeypatch.setattr(factory, "docker_problems", lambda: docker)
    monkeypatch.setattr(factory, "netns_problems", lambda: netns)
    assert factory.choose_runtime(choice) == expected


def test_an_explicit_runtime_that_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setattr(factory, "docker_problems", lambda: ["no Docker daemon answers"])
    with pytest.raises(factory.RuntimeUnavailable, match="docker runtime cannot run here: no Docker daemon"):
        factory.choose_runtime("docker")
    with pytest.raises(factory.RuntimeUnavailable, match="unknown runtime"):
        factory.choose_runtime("podman")


def test_runtime_and_image_flags_and_environment(monkeypatch):
    monkeypatch.delenv("DEVBOX_SIM_RUNTIME", raising=False)
    settings = Settings.from_env({"DEVBOX_SIM_IMAGE": "my/devbox:1"})
    assert (settings.runtime, settings.image) == ("auto", "my/devbox:1")
    assert Settings.from_env({}).image is None
    args = cli.build_parser(Settings()).parse_args(["serve", "--runtime", "docker", "--image", "x/y:z"])
    assert (args.runtime, args.image) == ("docker", "x/y:z")
    with pytest.raises(SystemExit):
        cli.build_parser(Settings()).parse_args(["serve", "--runtime", "podman"])


@pytest.mark.parametrize(
    "given, inside",
    [("a.txt", "/home/user/a.txt"), ("~/a.txt", "/home/user/a.txt"), ("~", "/home/user"),
     ("/tmp/x", "/tmp/x"), ("a/../b", "/home/user/a/../b"), ("../../etc/passwd", "/home/user/../../etc/passwd")],
)
def test_container_paths_follow_the_devbox_view(given, inside):
    # ".." stays: the walk takes it after following links, as the kernel does (a/.. is not
    # the home when a is a link); it may leave the home: the container is the devbox's own.
    assert container_path(given) == inside


@pytest.mark.parametrize("bad", ["", "   ", "a\0b", "/", "/.."])
def test_unusable_paths_are_value_errors(bad):
    with pytest.raises(ValueError):
        container_path(bad)


def test_static_elf_detection(tmp_path):
    import sys

    assert is_static_elf(sys.executable) is False  # the interpreter is dynamically linked
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert is_static_elf(str(script)) is False
