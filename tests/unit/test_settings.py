"""Server settings: flags and the DEVBOX_SIM_* variables behind them."""

from __future__ import annotations

import pytest

from simulator import cli
from simulator.config import Settings


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("false", False), ("1", True), ("TRUE", True),
                                             ("yes", True), (" on ", True), ("off", False)])
def test_open_private_networks_from_the_environment(value, expected):
    assert Settings.from_env({"DEVBOX_SIM_OPEN_PRIVATE_NETWORKS": value}).open_private_networks is expected


def test_open_private_networks_is_off_by_default_and_refuses_a_typo():
    assert Settings.from_env({}).open_private_networks is False
    with pytest.raises(ValueError, match="DEVBOX_SIM_OPEN_PRIVATE_NETWORKS must be 1 or 0"):
        Settings.from_env({"DEVBOX_SIM_OPEN_PRIVATE_NETWORKS": "maybe"})


def test_open_private_networks_flag_overrides_the_environment():
    parser = cli.build_parser(Settings())
    assert parser.parse_args(["serve"]).open_private_networks is False
    assert parser.parse_args(["serve", "--open-private-networks"]).open_private_networks is True
    opened = cli.build_parser(Settings(open_private_networks=True))
    assert opened.parse_args(["serve"]).open_private_networks is True
    assert opened.parse_args(["serve", "--no-open-private-networks"]).open_private_networks is False


def test_a_bad_variable_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("DEVBOX_SIM_OPEN_PRIVATE_NETWORKS", "maybe")
    assert cli.main(["serve", "--runtime", "none"]) == 2
    err = capsys.readouterr().err
    assert err == "devbox-sim: error: DEVBOX_SIM_OPEN_PRIVATE_NETWORKS must be 1 or 0 (true/false), not 'maybe'\n"
