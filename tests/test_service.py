"""The Vagrant VM's provisioning path, everything but vagrant itself.

scripts/install-service.sh (which runs scripts/bootstrap.sh) stages the systemd unit, its env
file and the offline world under a temporary root (`--root`: no systemd needed, nothing
installed on this machine). The test then starts exactly the rendered unit's ExecStart, with
the unit's Environment= and EnvironmentFile= as systemd would apply them; only the env file is
changed, to a temporary data dir and a free loopback port, with runtime none or an offline
world (never the host uplink). The Vagrantfile is checked by `ruby -c` and `vagrant validate`.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from runloop_api_client import RunloopSDK

from simulator.config import Settings
from tests.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install-service.sh"
UNIT = "etc/systemd/system/devbox-sim.service"
ENV_FILE = "etc/devbox-sim/env"
WORLD_FILE = "etc/devbox-sim/world.toml"
# What systemd gives a system service besides the unit's own variables.
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# uvicorn re-raises SIGTERM after its graceful shutdown; systemd counts death by SIGTERM as a
# clean exit (so Restart=on-failure does not restart a stopped service).
CLEAN_EXIT = (0, -signal.SIGTERM)


# --- staging and parsing ------------------------------------------------------------------


def install_service(root: Path, *args: str) -> subprocess.CompletedProcess:
    # --test: bootstrap with the test extras, as `make test` already did (so nothing changes).
    result = subprocess.run(
        [str(INSTALL), "--root", str(root), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd unit file -> {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path}: {raw!r} outside a section"
        current.append((key.strip(), value.strip()))
    return sections


def one(entries: list[tuple[str, str]], key: str) -> str:
    values = [v for k, v in entries if k == key]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def parse_env_file(path: Path) -> dict[str, str]:
    """systemd EnvironmentFile= syntax, as far as the packaged file uses it."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()), f"{path}: bad line {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def service_environment(root: Path, service: list[tuple[str, str]]) -> dict[str, str]:
    """The environment systemd gives ExecStart: Environment=, then EnvironmentFile= over it."""
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
    for key, value in service:
        if key == "Environment":
            env.update(item.split("=", 1) for item in shlex.split(value))
    for key, value in service:
        if key == "EnvironmentFile":
            optional = value.startswith("-")
            staged = root / value.lstrip("-").lstrip("/")
            if staged.exists():
                env.update(parse_env_file(staged))
            else:
                assert optional, f"EnvironmentFile {value} is missing"
    return env


def set_env_lines(path: Path, **values: str) -> None:
    """Edit the staged env file as an administrator would: KEY=VALUE lines replace or append."""
    lines = path.read_text().splitlines()
    for key, value in values.items():
        lines = [line for line in lines if not line.startswith(f"{key}=")]
        lines.append(f"{key}={value}")
    path.write_text("\n".join(lines) + "\n")


# --- running ExecStart --------------------------------------------------------------------


def Service(argv: list[str], env: dict[str, str], cwd: str) -> ServerProcess:  # noqa: N802
    """ExecStart as a process: started with the unit's environment and working directory."""
    return ServerProcess(None, argv=argv, env=env, cwd=cwd)


@pytest.fixture
def staged(tmp_path):
    """install-service.sh (with bootstrap) staged under tmp_path/root: (root, parsed unit)."""
    root = tmp_path / "root"
    install_service(root, "--test")
    unit = parse_unit(root / UNIT)
    return root, unit


def start_service(root: Path, unit, **env_lines: str) -> Service:
    service = unit["Service"]
    set_env_lines(root / ENV_FILE, **env_lines)
    argv = shlex.split(one(service, "ExecStart"))
    return Service(argv, service_environment(root, service), one(service, "WorkingDirectory")).start()


# --- tests --------------------------------------------------------------------------------


def test_staged_files_and_unit(staged):
    root, unit = staged
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted(
        [UNIT, ENV_FILE, WORLD_FILE, "etc/modules-load.d/devbox-sim.conf"]
    )
    service = unit["Service"]
    assert shlex.split(one(service, "ExecStart")) == [str(ROOT / ".venv/bin/devbox-sim"), "serve"]
    assert one(service, "WorkingDirectory") == str(ROOT)
    assert one(service, "Restart") == "on-failure"
    assert one(service, "StateDirectory") == "devbox-sim"
    assert one(service, "LimitNOFILE") == "65536"  # every running command holds descriptors
    assert one(service, "EnvironmentFile") == "-/etc/devbox-sim/env"
    assert one(unit["Install"], "WantedBy") == "multi-user.target"
    assert "@REPO@" not in (root / UNIT).read_text()
    assert (root / WORLD_FILE).read_text() == (ROOT / "examples/world.toml").read_text()
    assert (root / "etc/modules-load.d/devbox-sim.conf").read_text().split() == ["br_netfilter"]

    # The defaults as the service sees them: /var/lib/devbox-sim, port 8484, uplink host.
    settings = Settings.from_env(service_environment(root, service))
    assert (settings.data_dir, settings.port, settings.host) == (Path("/var/lib/devbox-sim"), 8484, "127.0.0.1")
    assert settings.effective_uplink == "host" and settings.world is None
    assert settings.runtime == "auto"

    if shutil.which("systemd-analyze"):  # systemd's own parser, where systemd is installed
        check = subprocess.run(
            ["systemd-analyze", "verify", str(root / UNIT)], capture_output=True, text=True, timeout=60
        )
        complaints = [line for line in (check.stdout + check.stderr).splitlines() if "devbox-sim.service" in line]
        assert check.returncode == 0 and complaints == [], check.stdout + check.stderr


def test_vm_settings_listen_and_offline_world_then_back(tmp_path):
    root = tmp_path / "root"
    install_service(root, "--no-bootstrap", "--listen", "0.0.0.0", "--uplink", "offline")
    env = service_environment(root, parse_unit(root / UNIT)["Service"])
    settings = Settings.from_env(env)
    assert settings.host == "0.0.0.0"
    assert settings.world == Path("/etc/devbox-sim/world.toml")  # the path on the real system
    assert settings.effective_uplink == "offline"

    # A re-run (the VM provisions on every `vagrant up`) keeps the administrator's edits.
    set_env_lines(root / ENV_FILE, DEVBOX_SIM_API_KEYS="/etc/devbox-sim/api-keys")
    install_service(root, "--no-bootstrap", "--uplink", "host")
    settings = Settings.from_env(service_environment(root, parse_unit(root / UNIT)["Service"]))
    assert settings.api_keys == Path("/etc/devbox-sim/api-keys")
    assert settings.host == "0.0.0.0"
    assert settings.world is None and settings.effective_uplink == "host"

    install_service(root, "--uninstall")
    assert not (root / UNIT).exists()
    assert (root / ENV_FILE).exists()  # configuration is kept


def test_exec_start_serves_the_api(staged, tmp_path):
    root, unit = staged
    data = tmp_path / "data"
    service = start_service(
        root, unit, DEVBOX_SIM_HOST="127.0.0.1", DEVBOX_SIM_PORT="0",
        DEVBOX_SIM_DATA_DIR=str(data), DEVBOX_SIM_RUNTIME="none",
    )
    try:
        assert service.url.startswith("http://127.0.0.1:")
        assert httpx.get(service.url + "/healthz", timeout=5).json() == {"status": "ok"}
        sdk = RunloopSDK(bearer_token="service-test", base_url=service.url, max_retries=0)
        policy = sdk.network_policy.create(name="from-the-service", allowed_hostnames=["github.com"])
        assert policy.get_info().egress.allowed_hostnames == ["github.com"]
        assert [p.id for p in sdk.api.network_policies.list().network_policies] == [policy.id]
    finally:
        code = service.stop()
    assert code in CLEAN_EXIT, "\n".join(service.log[-30:])
    assert (data / "devbox-sim.sqlite3").exists()


@pytest.mark.privileged
def test_exec_start_with_the_offline_world(tmp_path):
    """What `DEVBOX_SIM_UPLINK=offline vagrant up` configures: netns runtime, the staged world."""
    from netns import namespaces
    from simulator.dataplane import NS_PREFIX, instance_id

    root = tmp_path / "root"
    install_service(root, "--no-bootstrap", "--uplink", "offline")
    unit = parse_unit(root / UNIT)
    data = tmp_path / "data"
    service = start_service(
        root, unit, DEVBOX_SIM_HOST="127.0.0.1", DEVBOX_SIM_PORT="0", DEVBOX_SIM_DATA_DIR=str(data),
        DEVBOX_SIM_RUNTIME="netns", DEVBOX_SIM_WORLD=str(root / WORLD_FILE),
        DEVBOX_SIM_SUBNET=f"10.{secrets.randbelow(50) + 200}.0.0/16",
    )
    prefix = f"{NS_PREFIX}{instance_id(data)}-"
    try:
        assert Settings.from_env(service.env).effective_uplink == "offline"
        sdk = RunloopSDK(bearer_token="service-world", base_url=service.url, max_retries=0)
        policy = sdk.network_policy.create(name="github-only", allowed_hostnames=["github.com"])
        devbox = sdk.devbox.create(launch_parameters={"network_policy_id": policy.id})
        with devbox:
            # github.com of examples/world.toml (192.0.2.10), served inside the world namespace.
            allowed = devbox.cmd.exec("curl -sS --max-time 3 http://github.com/vm")
            assert allowed.exit_code == 0 and allowed.stdout() == "github.com /vm\n"
            assert devbox.cmd.exec("curl -sS --max-time 2 http://pypi.org/").exit_code != 0
    finally:
        code = service.stop()
    assert code in CLEAN_EXIT, "\n".join(service.log[-30:])
    assert namespaces.list_names(prefix, placeholders=True) == []


def test_vagrantfile_syntax_and_config(tmp_path):
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    check = subprocess.run(["ruby", "-c", str(ROOT / "Vagrantfile")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "Syntax OK" in check.stdout, check.stdout + check.stderr

    # `vagrant validate` loads it as Vagrant does (unknown settings fail), from a copy in a
    # temporary directory so that its .vagrant/ and VAGRANT_HOME stay out of the repository.
    # --ignore-provider: no VirtualBox or libvirt here; Vagrant itself never boots anything.
    work = tmp_path / "vagrant"
    work.mkdir()
    shutil.copy(ROOT / "Vagrantfile", work / "Vagrantfile")
    env = {
        **os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant-home"), "VAGRANT_CWD": str(work),
        "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        "VAGRANT_NO_PLUGINS": "1",
    }
    for uplink in ("", "offline", "host"):
        result = subprocess.run(
            ["vagrant", "validate", "--ignore-provider"], cwd=work, capture_output=True, text=True,
            timeout=120, env={**env, "DEVBOX_SIM_UPLINK": uplink},
        )
        assert result.returncode == 0 and "validated successfully" in result.stdout, result.stdout + result.stderr
    bad = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"], cwd=work, capture_output=True, text=True,
        timeout=120, env={**env, "DEVBOX_SIM_UPLINK": "internet"},
    )
    assert bad.returncode != 0

    # The contract with the docs: Debian 12, the API on the host's 127.0.0.1:8484, and the
    # one provisioning path listening on 0.0.0.0 inside the VM.
    assert 'config.vm.box = ENV.fetch("DEVBOX_SIM_BOX", "debian/bookworm64")' in vagrantfile
    assert re.search(r'"forwarded_port".*guest: 8484, host: HOST_PORT,\s*host_ip: "127.0.0.1"', vagrantfile, re.S)
    assert 'ENV.fetch("DEVBOX_SIM_HOST_PORT", "8484")' in vagrantfile
    assert re.search(r'inline: "#\{GUEST_DIR\}/scripts/install-service.sh #\{args.join', vagrantfile)
    assert 'args = ["--listen", "0.0.0.0"]' in vagrantfile
    for provider in ("virtualbox", "libvirt"):
        assert f'config.vm.provider "{provider}"' in vagrantfile
