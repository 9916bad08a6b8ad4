"""Server settings: flags and the DEVBOX_SIM_* variables behind them."""

from __future__ import annotations

import re

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
    assert capsys.readouterr().err == f"devbox-sim: error: {missing_world}: No such file or directory\n"

    # A world with the host uplink was checked, then ignored: refused, as a contradiction.
    world = tmp_path / "world.toml"
    world.write_text('[hosts]\n"a.example" = "192.0.2.1"\n')
    assert cli.main(["serve", "--runtime", "none", "--port", "0", "--data-dir", str(tmp_path / "d2"),
                     "--world", str(world), "--uplink", "host"]) == 2
    assert "--world is the offline uplink's world; with --uplink host it would be ignored" in capsys.readouterr().err


def test_a_bad_server_variable_does_not_stop_the_events_command(monkeypatch, capsys):
    """The events command reads none of the server's settings."""
    monkeypatch.setenv("DEVBOX_SIM_RUNTIME", "podman")
    with pytest.raises(SystemExit) as exited:
        cli.main(["events", "--help"])
    assert exited.value.code == 0 and "DEVBOX_SIM_RUNTIME" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--port", "70000"], "argument --port: 70000 is out of range: from 0 to 65535"),
        (["--port", "-1"], "argument --port: -1 is out of range: from 0 to 65535"),
        (["--port", "http"], "argument --port: 'http' is not a whole number"),
        (["--max-policies", "-1"], "argument --max-policies: -1 is out of range: from 0 up"),
        (["--subnet", "garbage"], "argument --subnet: 'garbage' is not an IPv4 network (e.g. 10.88.0.0/16)"),
        (["--subnet", "10.217.0.1/16"], "argument --subnet: '10.217.0.1/16' has host bits set; did you mean 10.217.0.0/16?"),
        (["--subnet", "10.217.0.0/30"], "argument --subnet: 10.217.0.0/30 is a /30; use a /8 to a /24"),
        (["--subnet", "10.217.0.0"], "argument --subnet: '10.217.0.0' needs a prefix length (e.g. 10.88.0.0/16)"),
        (["--subnet", "fd00::/64"], "argument --subnet: 'fd00::/64' is not an IPv4 network (e.g. 10.88.0.0/16)"),
        (["--subnet", "192.0.0.0/16"], "argument --subnet: 192.0.0.0/16 overlaps 192.0.2.0/24, which devboxes cannot be numbered in"),
        (["--subnet", "127.0.0.0/16"], "argument --subnet: 127.0.0.0/16 overlaps 127.0.0.0/8"),
        (["--upstream-dns", "192.0.2.53:abc"], "argument --upstream-dns: '192.0.2.53:abc': the port must be a number from 1 to 65535"),
        (["--upstream-dns", "192.0.2.53:0"], "argument --upstream-dns: '192.0.2.53:0': the port must be a number from 1 to 65535"),
        (["--upstream-dns", "dns.example"], "argument --upstream-dns: 'dns.example' is not an IP address"),
        (["--upstream-dns", ","], "argument --upstream-dns: no server given"),
    ],
)
def test_bad_flag_values_are_one_line_and_exit_2(capsys, flags, message):
    """--port 70000 and a bad --subnet were tracebacks (exit 1) from deep in the start;
    --max-policies -1 started a server that refused every policy."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--runtime", "none", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"devbox-sim serve: error: {message}")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("DEVBOX_SIM_SUBNET", "10.217.0.0/30", "DEVBOX_SIM_SUBNET: 10.217.0.0/30 is a /30; use a /8 to a /24"),
        ("DEVBOX_SIM_UPSTREAM_DNS", "192.0.2.53:abc", "DEVBOX_SIM_UPSTREAM_DNS: '192.0.2.53:abc': the port must be a number from 1 to 65535"),
    ],
)
def test_bad_subnet_and_upstream_variables_name_the_variable(monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    assert cli.main(["serve", "--runtime", "none"]) == 2
    assert capsys.readouterr().err == f"devbox-sim: error: {message}\n"


def test_upstream_servers_are_ipv4_with_or_without_a_port():
    from simulator.config import parse_servers

    assert parse_servers("192.0.2.53, 198.51.100.1:5353") == (("192.0.2.53", 53), ("198.51.100.1", 5353))


@pytest.mark.parametrize(
    "value, message",
    [
        # The router namespace has IPv6 off and a loopback of its own: every allowed name
        # would have been SERVFAIL.
        ("2001:db8::53", "speaks IPv4 only"),
        ("[2001:db8::53]:5353", "speaks IPv4 only"),
        ("fe80::1%eth0", "speaks IPv4 only"),
        ("127.0.0.53", "not reachable from the router namespace"),
        ("0.0.0.0", "not reachable from the router namespace"),
        ("192.0.2.1:\u00b2", "the port must be a number from 1 to 65535"),
        ("[2001:db8::53]x", "is not IP[:PORT]"),
    ],
)
def test_upstream_servers_the_resolver_cannot_reach_are_refused(value, message):
    from simulator.config import parse_servers

    with pytest.raises(ValueError, match=re.escape(message)):
        parse_servers(value)


def test_the_subnet_check_knows_the_uplinks_link_nets():
    from netns import links
    from simulator.config import parse_subnet

    with pytest.raises(ValueError, match=re.escape(f"overlaps {links.HOST_LINK_NETS}")):
        parse_subnet("100.64.0.0/10")
    with pytest.raises(ValueError, match=re.escape(f"overlaps {links.DEFAULT_LINK_NET}")):
        parse_subnet("100.127.128.0/17")


def test_a_subnet_is_kept_as_written_when_valid():
    assert Settings.from_env({"DEVBOX_SIM_SUBNET": " 10.217.0.0/16 "}).subnet == "10.217.0.0/16"
    assert cli.build_parser(Settings()).parse_args(["serve", "--subnet", "172.20.0.0/24"]).subnet == "172.20.0.0/24"
    assert cli.build_parser(Settings()).parse_args(["serve"]).subnet == "10.88.0.0/16"
