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
