"""The official Runloop SDK (3.0.0), sync and async, driving blueprints and disk snapshots on
a real server process (test-double runtime through the DEVBOX_SIM_TEST_RUNTIME test hook)."""

from __future__ import annotations

import asyncio

import pytest
from runloop_api_client import AsyncRunloopSDK, BadRequestError, NotFoundError, RunloopError, RunloopSDK
from runloop_api_client.lib.polling import PollingConfig

FAST = PollingConfig(interval_seconds=0.1, max_attempts=300)


def test_sync_sdk_blueprints_and_snapshots(devbox_server):
    sdk = RunloopSDK(bearer_token="sdk-disks", base_url=devbox_server.url, max_retries=0)
    policy = sdk.network_policy.create(name="bp-launch", allow_all=True)
    blueprint = sdk.blueprint.create(
        name="sdk-bp",
        system_setup_commands=["echo from-build > built.txt"],
        launch_parameters={"network_policy_id": policy.id},
        metadata={"owner": "sdk"},
        polling_config=FAST,
    )
    info = blueprint.get_info()
    assert info.status == "build_complete" and info.state == "created" and info.metadata == {"owner": "sdk"}
    assert info.parameters.system_setup_commands == ["echo from-build > built.txt"]
    assert [b.id for b in sdk.blueprint.list(name="sdk-bp")] == [blueprint.id]
    assert any(line.message == "$ echo from-build > built.txt" for line in blueprint.logs().logs)
    with pytest.raises(RunloopError, match="failed"):
        sdk.blueprint.create(name="sdk-bp-broken", system_setup_commands=["exit 1"], polling_config=FAST)

    with blueprint.create_devbox() as devbox:
        assert devbox.get_info().launch_parameters.network_policy_id == policy.id
        devbox.cmd.exec("echo extra >> built.txt && echo scratch > /tmp/scratch.txt")
        snapshot = devbox.snapshot_disk(name="sdk-snap", commit_message="first", metadata={"key": "one"}, polling_config=FAST)
        status = snapshot.get_info()
        assert status.status == "complete" and status.snapshot.source_blueprint_id == blueprint.id
        assert status.snapshot.commit_message == "first"
        # The sync endpoint (600 s timeout in the SDK) returns once complete.
        other = sdk.api.devboxes.snapshot_disk(devbox.id, name="sdk-sync")
        assert sdk.api.devboxes.disk_snapshots.query_status(other.id).status == "complete"
    assert snapshot.update(metadata={"key": "two"}, name="renamed").name == "renamed"
    assert [s.id for s in sdk.snapshot.list(metadata_key="two")] == [snapshot.id]  # sends metadata[key]=two
    assert [s.id for s in sdk.snapshot.list(metadata_key_in="one,two")] == [snapshot.id]

    restored = sdk.devbox.create_from_snapshot(snapshot.id)
    with restored:
        assert restored.cmd.exec("cat built.txt /tmp/scratch.txt").stdout() == "from-build\nextra\nscratch\n"
        assert restored.get_info().launch_parameters.network_policy_id == policy.id  # the source's

    with pytest.raises(BadRequestError, match="blueprint_in_use"):
        blueprint.delete()
    snapshot.delete()
    sdk.api.devboxes.disk_snapshots.delete(other.id)
    assert snapshot.get_info().status == "deleted"
    blueprint.delete()
    assert blueprint.get_info().state == "deleted"
    with pytest.raises(BadRequestError, match="unknown_blueprint"):
        sdk.devbox.create_from_blueprint_id(blueprint.id)
    with pytest.raises(NotFoundError):
        sdk.api.blueprints.retrieve("bpt_missing")


def test_async_sdk_blueprints_and_snapshots(devbox_server):
    async def flow():
        sdk = AsyncRunloopSDK(bearer_token="sdk-disks-async", base_url=devbox_server.url, max_retries=0)
        blueprint = await sdk.blueprint.create(name="async-bp", system_setup_commands=["echo a > a.txt"],
                                               polling_config=FAST)
        devbox = await sdk.devbox.create_from_blueprint_name("async-bp")
        async with devbox:
            snapshot = await devbox.snapshot_disk(name="async", polling_config=FAST)
        resumed = await snapshot.create_devbox()
        async with resumed:
            assert await (await resumed.cmd.exec("cat a.txt")).stdout() == "a\n"
        assert [s.id for s in await sdk.snapshot.list()] == [snapshot.id]
        await snapshot.delete()
        await blueprint.delete()
        assert (await blueprint.get_info()).state == "deleted"

    asyncio.run(flow())
