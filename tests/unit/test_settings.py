"""Server settings: flags and the DEVBOX_SIM_* variables behind them."""

from __future__ import annotations

import pytest

from simulator import cli
from simulator.config import Settings


def test_private_networks_are_open_by_default_as_allow_all_is_all_egress():
    assert Settings.from_env({}).private_networks == "open"
    assert cli.build_parser(Settings()).parse_args(["serve"]).private_networks == "open"


@pytest.mark.parametrize("value, expected", [("", "open"), ("open", "open"), ("by-cidr", "by-cidr"), (" by-cidr ", "by-cidr")])
def test_private_networks_from_the_environment(value, expected):
    assert Settings.from_env({"DEVBOX_SIM_PRIVATE_NETWORKS": value}).private_networks == expected


def test_private_networks_flag_overrides_the_environment_and_refuses_a_typo():
    parser = cli.build_parser(Settings(private_networks="by-cidr"))
    assert parser.parse_args(["serve"]).private_networks == "by-cidr"
    assert parser.parse_args(["serve", "--private-networks", "open"]).private_networks == "open"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--private-networks", "closed"])
    with pytest.raises(ValueError, match="DEVBOX_SIM_PRIVATE_NETWORKS must be one of open, by-cidr"):
        Settings.from_env({"DEVBOX_SIM_PRIVATE_NETWORKS": "closed"})


def test_a_bad_variable_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("DEVBOX_SIM_PRIVATE_NETWORKS", "closed")
    assert cli.main(["serve", "--runtime", "none"]) == 2
    err = capsys.readouterr().err
    assert err == "devbox-sim: error: DEVBOX_SIM_PRIVATE_NETWORKS must be one of open, by-cidr, not 'closed'\n"


@pytest.mark.parametrize("value, expected", [("", False), ("true", True), ("1", True), ("No", False), (" on ", True)])
def test_unique_policy_names_from_the_environment(value, expected):
    assert Settings.from_env({"DEVBOX_SIM_UNIQUE_POLICY_NAMES": value}).unique_policy_names is expected


def test_unique_policy_names_off_by_default_the_flag_turns_it_on_or_off_and_a_typo_is_refused():
    assert cli.build_parser(Settings()).parse_args(["serve"]).unique_policy_names is False
    assert cli.build_parser(Settings()).parse_args(["serve", "--unique-policy-names"]).unique_policy_names is True
    strict = cli.build_parser(Settings(unique_policy_names=True))
    assert strict.parse_args(["serve", "--no-unique-policy-names"]).unique_policy_names is False
    with pytest.raises(ValueError, match="DEVBOX_SIM_UNIQUE_POLICY_NAMES must be true or false, not 'maybe'"):
        Settings.from_env({"DEVBOX_SIM_UNIQUE_POLICY_NAMES": "maybe"})


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("DEVBOX_SIM_LOG_LEVEL", "bogus", "DEVBOX_SIM_LOG_LEVEL must be one of debug, info, warning, error, not 'bogus'"),
        ("DEVBOX_SIM_UPLINK", "bogus", "DEVBOX_SIM_UPLINK must be one of host, offline, not 'bogus'"),
        ("DEVBOX_SIM_RUNTIME", "podman", "DEVBOX_SIM_RUNTIME must be one of auto, docker, netns, none, not 'podman'"),
        ("DEVBOX_SIM_PORT", "abc", "DEVBOX_SIM_PORT must be a whole number, not 'abc'"),
        ("DEVBOX_SIM_PORT", "70000", "DEVBOX_SIM_PORT must be from 0 to 65535, not 70000"),
        ("DEVBOX_SIM_MAX_POLICIES", "-1", "DEVBOX_SIM_MAX_POLICIES must be from 0 up, not -1"),
    ],
)
def test_every_variable_is_checked_as_its_flag_is(monkeypatch, capsys, name, value, message):
    """argparse does not check a default against its choices: a bad variable was a traceback
    (log level, uplink) or was taken silently (an uplink under --runtime none)."""
    monkeypatch.setenv(name, value)
    assert cli.main(["serve", "--runtime", "none"]) == 2
    assert capsys.readouterr().err == f"devbox-sim: error: {message}\n"


def test_variables_are_read_case_insensitively_where_they_are_choices():
    settings = Settings.from_env({"DEVBOX_SIM_LOG_LEVEL": "INFO", "DEVBOX_SIM_UPLINK": "Offline", "DEVBOX_SIM_PORT": "0"})
    assert (settings.log_level, settings.uplink, settings.port) == ("info", "offline", 0)


def test_setup_problems_with_the_data_dir_and_world_are_one_line_and_exit_2(tmp_path, capsys):
    from simulator.db import Database

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert cli.main(["serve", "--runtime", "none", "--port", "0", "--data-dir", str(not_a_dir)]) == 2
    assert capsys.readouterr().err.startswith(f"devbox-sim: error: data dir {not_a_dir}: ")

    newer = tmp_path / "newer"
    newer.mkdir()
    store = Database(newer / "devbox-sim.sqlite3")
    store._conn.execute("PRAGMA user_version=999")
    store.close()
    assert cli.main(["serve", "--runtime", "none", "--port", "0", "--data-dir", str(newer)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("devbox-sim: error: the data dir's store ") and "written by a newer devbox-sim (schema 999" in err

    missing_world = tmp_path / "missing.toml"
    assert cli.main(["serve", "--runtime", "none", "--port", "0", "--data-dir", str(tmp_path / "d"),
                     "--world", str(missing_world)]) == 2
    assert capsys.readouterr().err.startswith(f"devbox-sim: error: {missing_world}: ")


def test_a_bad_server_variable_does_not_stop_the_events_command(monkeypatch, capsys):
    """The events command reads none of the server's settings."""
    monkeypatch.setenv("DEVBOX_SIM_RUNTIME", "podman")
    with pytest.raises(SystemExit) as exited:
        cli.main(["events", "--help"])
    assert exited.value.code == 0 and "DEVBOX_SIM_RUNTIME" not in capsys.readouterr().err
