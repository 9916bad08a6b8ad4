"""The official Runloop SDK (3.0.0) driving devboxes and commands on a real server process.

The server runs the test-double runtime through the DEVBOX_SIM_TEST_RUNTIME test hook. These
tests cover devbox creation, policies, exec, kill and shutdown; output callbacks
(``cmd.exec(stdout=...)``, over the SSE stream endpoints), stdin, suspend/resume, files and
logs are exercised through the SDK in tests/dataplane/test_sdk_lifecycle.py (on this same
test double and on netns) and tests/docker/test_sdk_lifecycle_docker.py.
"""

from __future__ import annotations

import asyncio

import pytest
from runloop_api_client import (
    APIStatusError,
    AsyncRunloopSDK,
    BadRequestError,
    NotFoundError,
    RunloopError,
    RunloopSDK,
)


def sdk_for(server, token: str) -> RunloopSDK:
    return RunloopSDK(bearer_token=token, base_url=server.url, max_retries=0)


def test_sync_sdk_devbox_with_policy_exec_and_shutdown(devbox_server):
    sdk = sdk_for(devbox_server, "sdk-devbox")
    policy = sdk.network_policy.create(name="for-devboxes", allowed_hostnames=["example.com"])
    devbox = sdk.devbox.create(
        name="sdk-box",
        launch_parameters={"network_policy_id": policy.id, "launch_commands": ["echo booted > boot.txt"]},
        environment_variables={"WHO": "sdk"},
        metadata={"suite": "sdk"},
    )
    info = devbox.get_info()
    assert info.status == "running" and info.name == "sdk-box" and info.metadata == {"suite": "sdk"}
    assert info.launch_parameters.network_policy_id == policy.id
    assert [t.status for t in info.state_transitions] == ["provisioning", "initializing", "running"]

    result = devbox.cmd.exec("echo hi")
    assert result.exit_code == 0 and result.success
    assert result.stdout() == "hi\n" and result.stderr() == ""

    result = devbox.cmd.exec('cat boot.txt; echo "$WHO"; echo warn >&2; exit 5')
    assert result.exit_code == 5 and result.failed
    assert result.stdout() == "booted\nsdk\n" and result.stderr() == "warn\n"

    lines = devbox.cmd.exec("seq 1 2000")
    assert lines.stdout() == "".join(f"{i}\n" for i in range(1, 2001))
    assert lines.stdout(num_lines=2) == "1999\n2000"

    with pytest.raises(BadRequestError) as excinfo:
        policy.delete()
    assert devbox.id in excinfo.value.body["message"]

    assert devbox.keep_alive() == {}
    final = devbox.shutdown()
    assert final.status == "shutdown" and final.shutdown_reason == "api_shutdown" and final.end_time_ms
    assert policy.delete().id == policy.id
    with pytest.raises(BadRequestError):
        devbox.cmd.exec("true")


def test_sync_sdk_context_manager_shuts_down(devbox_server):
    sdk = sdk_for(devbox_server, "sdk-with")
    with sdk.devbox.create() as devbox:
        assert devbox.cmd.exec("echo inside").stdout() == "inside\n"
    assert devbox.get_info().status == "shutdown"


def test_sync_sdk_exec_async_result_and_kill(devbox_server):
    sdk = sdk_for(devbox_server, "sdk-async-exec")
    with sdk.devbox.create() as devbox:
        quick = devbox.cmd.exec_async("sleep 0.3; echo later")
        assert quick.result().stdout() == "later\n"

        slow = devbox.cmd.exec_async("sleep 300")
        assert slow.get_state().status == "running"
        slow.kill()
        state = slow.get_state()
        assert state.status == "completed" and state.exit_status == 137


def test_sync_sdk_close_std_in_after_the_command_read_its_last_line(devbox_server):
    """Send the last line, then close: the command may exit in between, and close_std_in
    (which raises on success false) must not fail for that."""
    sdk = sdk_for(devbox_server, "sdk-stdin-race")
    with sdk.devbox.create() as devbox:
        execution = devbox.cmd.exec_async("head -n 1", attach_stdin=True)
        execution.send_std_in("last line\n")
        assert execution.result().stdout() == "last line\n"  # exited: stdin is closed
        execution.close_std_in()


def test_sync_sdk_low_level_calls(devbox_server):
    sdk = sdk_for(devbox_server, "sdk-low")
    api = sdk.api.devboxes
    # The 1.29 path: create, then await_running (wait_for_status long polls).
    view = api.create(name="low")
    running = api.await_running(view.id)
    assert running.status == "running"
    done = api.execute_and_await_completion(view.id, command="echo via-execute")
    assert done.status == "completed" and done.stdout == "via-execute\n"
    with pytest.warns(DeprecationWarning):
        sync = api.execute_sync(view.id, command="echo sync")
    assert sync.exit_status == 0 and sync.stdout == "sync\n"
    page = api.list(limit=10)
    assert [d.id for d in page.devboxes] == [view.id] and page.has_more is False
    assert api.update(view.id, name="renamed").name == "renamed"
    with pytest.raises(APIStatusError) as excinfo:
        sdk.api.post(
            f"/v1/devboxes/{view.id}/wait_for_status",
            body={"statuses": ["suspended"], "timeout_seconds": 0.2},
            cast_to=object,
        )
    assert excinfo.value.status_code == 408
    slow = api.execute_async(view.id, command="sleep 300")
    with pytest.raises(APIStatusError) as excinfo:
        api.wait_for_command(slow.execution_id, devbox_id=view.id, statuses=["completed"], timeout_seconds=0.2)
    assert excinfo.value.status_code == 408 and excinfo.value.response.headers["x-should-retry"] == "true"
    with pytest.raises(NotFoundError):
        api.retrieve("dbx_nope")
    with pytest.raises(NotFoundError):
        sdk_for(devbox_server, "someone-else").api.devboxes.retrieve(view.id)
    api.shutdown(view.id)


def test_sync_sdk_failed_launch_raises(devbox_server):
    sdk = sdk_for(devbox_server, "sdk-fail")
    with pytest.raises(RunloopError, match="failure"):
        sdk.devbox.create(launch_parameters={"launch_commands": ["exit 2"]})
    [failed] = sdk.api.devboxes.list().devboxes
    assert failed.status == "failure" and failed.failure_reason == "execution_failed"
    with pytest.raises(BadRequestError):
        sdk.devbox.create(launch_parameters={"network_policy_id": "npol_missing"})


def test_async_sdk_devboxes(devbox_server):
    async def scenario():
        sdk = AsyncRunloopSDK(bearer_token="sdk-asyncio", base_url=devbox_server.url, max_retries=0)
        try:
            policy = await sdk.network_policy.create(name="async-policy")
            devboxes = await asyncio.gather(
                *(sdk.devbox.create(name=f"a{i}", launch_parameters={"network_policy_id": policy.id}) for i in range(3))
            )
            results = await asyncio.gather(*(d.cmd.exec(f"echo box-{i}") for i, d in enumerate(devboxes)))
            assert [await r.stdout() for r in results] == ["box-0\n", "box-1\n", "box-2\n"]
            assert all(r.exit_code == 0 for r in results)

            async with devboxes[0] as devbox:
                running = await devbox.cmd.exec_async("sleep 300")
                await running.kill()
                assert (await running.get_state()).exit_status == 137
            assert (await devboxes[0].get_info()).status == "shutdown"

            for devbox in devboxes[1:]:
                assert (await devbox.shutdown()).status == "shutdown"
            await policy.delete()
        finally:
            await sdk.aclose()

    asyncio.run(scenario())


def test_sdk_calls_the_simulator_does_not_simulate_are_clear_400s(devbox_server):
    sdk = sdk_for(devbox_server, "sdk-unsupported")
    api = sdk.api.devboxes
    devbox = api.create_and_await_running(name="plain")
    calls = {
        "SSH server": lambda devbox_id: api.create_ssh_key(devbox_id),
        "terminal server": lambda devbox_id: api.create_pty_tunnel(devbox_id),
        "agent gateway": lambda devbox_id: api.create_gateway_token(devbox_id, gateway="gwc_x", secret="s"),
        "MCP gateway": lambda devbox_id: api.create_mcp_token(devbox_id, mcp_config="mcp_x", secret="s"),
    }
    for what, call in calls.items():
        with pytest.raises(BadRequestError) as refused:
            call(devbox.id)
        body = refused.value.body
        assert body["error_code"] == "not_supported" and what in body["message"], body
        with pytest.raises(NotFoundError):
            call("dbx_nope")  # an unknown devbox is a 404 first
    api.shutdown(devbox.id)


def test_sdk_reads_resource_usage(devbox_server):
    """The wire: the SDK's model, for an ended devbox. The arithmetic (sizes, suspended time)
    is tested on simulator.usage itself (tests/unit/test_usage.py): here the devbox lives for
    milliseconds, so every count is 0."""
    sdk = sdk_for(devbox_server, "sdk-usage")
    api = sdk.api.devboxes
    devbox = api.create_and_await_running(launch_parameters={"resource_size_request": "LARGE"})
    api.suspend(devbox.id)
    api.shutdown(devbox.id)
    usage = api.retrieve_resource_usage(devbox.id)
    ended = api.retrieve(devbox.id)
    assert (usage.id, usage.status, usage.start_time_ms, usage.end_time_ms) == \
        (devbox.id, "shutdown", ended.create_time_ms, ended.end_time_ms)
    assert usage.total_elapsed_seconds == (ended.end_time_ms - ended.create_time_ms) // 1000
    assert usage.disk_gb_seconds == 16 * usage.total_elapsed_seconds  # LARGE: 16 GiB of disk
    assert usage.vcpu_seconds == 2 * usage.total_active_seconds and usage.memory_gb_seconds == 8 * usage.total_active_seconds
    with pytest.raises(NotFoundError):
        api.retrieve_resource_usage("dbx_nope")


def test_sdk_watch_evictions_opens_a_quiet_stream(devbox_server):
    sdk = sdk_for(devbox_server, "sdk-evictions")
    stream = sdk.api.devboxes.watch_evictions()  # a 404 would raise here
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
    finally:
        stream.close()
