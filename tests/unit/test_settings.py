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
    with pytest.raises(ValueError, match="DEVBOX_SIM_PRIVATE_NETWORKS must be open or by-cidr"):
        Settings.from_env({"DEVBOX_SIM_PRIVATE_NETWORKS": "closed"})


def test_a_bad_variable_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("DEVBOX_SIM_PRIVATE_NETWORKS", "closed")
    assert cli.main(["serve", "--runtime", "none"]) == 2
    err = capsys.readouterr().err
    assert err == "devbox-sim: error: DEVBOX_SIM_PRIVATE_NETWORKS must be open or by-cidr, not 'closed'\n"


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
