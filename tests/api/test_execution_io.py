"""HTTP tests for what flows in and out of a command: the SSE output streams, stdin and the
devbox logs. Written against the ``runtime`` fixture (the subprocess test double); live
streaming needs a real server process (the in-process test client buffers whole responses).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading

import httpx
import pytest

from simulator import devbox_logs, executions
from tests.api.conftest import ALICE, BOB
from tests.api.test_devboxes import URL, assert_error, create_running, until
from tests.api.test_executions import run, start, wait


@pytest.fixture
def devbox(devbox_client):
    return create_running(devbox_client)["id"]


def sse_events(response) -> list[dict]:
    """The data of every event of a finished SSE body (comments skipped)."""
    events = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            assert len(lines) == 1 and lines[0].startswith("data: "), block
            events.append(json.loads(lines[0][len("data: ") :]))
    return events


def stream(client, devbox_id, execution_id, name="stdout", headers=ALICE, **params):
    return client.get(
        f"{URL}/{devbox_id}/executions/{execution_id}/stream_{name}_updates", params=params, headers=headers
    )


# --- SSE ---------------------------------------------------------------------------------


def test_stream_of_a_completed_execution_sends_everything_then_closes(devbox_client, devbox):
    done = run(devbox_client, devbox, "seq 1 2000; seq 2001 2100 >&2")
    response = stream(devbox_client, devbox, done["execution_id"])
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert "".join(e["output"] for e in events) == done["stdout"]
    assert events[-1]["offset"] == len(done["stdout"].encode())
    offsets = [e["offset"] for e in events]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    errors = sse_events(stream(devbox_client, devbox, done["execution_id"], "stderr"))
    assert "".join(e["output"] for e in errors) == done["stderr"] == "".join(f"{i}\n" for i in range(2001, 2101))


def test_large_output_comes_in_several_events_that_join_exactly(devbox_client, devbox):
    done = run(devbox_client, devbox, "printf 'ü%.0s' $(seq 1 70000)")  # 140,000 bytes
    events = sse_events(stream(devbox_client, devbox, done["execution_id"]))
    assert len(events) > 1
    assert "".join(e["output"] for e in events) == done["stdout"] == "ü" * 70000
    for previous, event in zip(events, events[1:]):
        # Offsets are UTF-8 byte positions after each chunk.
        assert event["offset"] - previous["offset"] == len(event["output"].encode())


def test_offset_resumes_from_a_byte_position(devbox_client, devbox):
    done = run(devbox_client, devbox, "printf 'héllo wörld'")
    data = done["stdout"].encode()
    for offset in (0, 1, 3, len(data) - 1, len(data), len(data) + 5):
        events = sse_events(stream(devbox_client, devbox, done["execution_id"], offset=str(offset)))
        joined = "".join(e["output"] for e in events)
        assert joined.encode() == data[offset:]
        if events:
            assert events[-1]["offset"] == len(data)
    # Inside a multi-byte character ("é" is bytes 1-2): the stream starts at the next one.
    events = sse_events(stream(devbox_client, devbox, done["execution_id"], offset="2"))
    assert "".join(e["output"] for e in events) == "llo wörld"


def test_invalid_utf8_is_replaced_and_offsets_count_the_replacement(devbox_client, devbox):
    done = run(devbox_client, devbox, "printf 'a\\377b'")
    events = sse_events(stream(devbox_client, devbox, done["execution_id"]))
    assert "".join(e["output"] for e in events) == done["stdout"] == "a\ufffdb"
    assert events[-1]["offset"] == len("a\ufffdb".encode()) == 5


def test_stream_rejects_bad_offsets_and_unknown_executions(devbox_client, devbox):
    execution_id = run(devbox_client, devbox, "echo hi")["execution_id"]
    assert_error(stream(devbox_client, devbox, execution_id, offset="-1"), 400, contains="offset")
    assert_error(stream(devbox_client, devbox, execution_id, offset="abc"), 400, contains="offset")
    assert_error(stream(devbox_client, devbox, "exn_nope"), 404)
    assert_error(stream(devbox_client, devbox, execution_id, headers=BOB), 404)
    assert_error(stream(devbox_client, "dbx_nope", execution_id, "stderr"), 404)


def _live_events(response):
    """Yield each event's data of a streaming httpx response as it arrives."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])


def test_live_stream_delivers_output_while_the_command_runs(devbox_server):
    client = httpx.Client(base_url=devbox_server.url, headers=ALICE, timeout=30)
    with client:
        devbox_id = client.post(f"{URL}/create_and_await_running").json()["id"]
        try:
            # A multi-byte character written in two halves, with a pause between them.
            command = "printf 'first\\n\\303'; while [ ! -e go ]; do sleep 0.01; done; printf '\\251 second\\n'"
            execution = client.post(f"{URL}/{devbox_id}/execute_async", json={"command": command}).json()
            path = f"{URL}/{devbox_id}/executions/{execution['execution_id']}/stream_stdout_updates"
            with client.stream("GET", path) as response:
                events = _live_events(response)
                first = next(events)
                assert first == {"output": "first\n", "offset": 6}  # the half character is held back
                state = client.get(f"{URL}/{devbox_id}/executions/{execution['execution_id']}").json()
                assert state["status"] == "running"  # the event came before the end
                client.post(f"{URL}/{devbox_id}/execute_sync", json={"command": "touch go"})
                rest = list(events)  # ends when the command completes
            assert "".join(e["output"] for e in [first, *rest]) == "first\né second\n"
            assert rest[-1]["offset"] == len("first\né second\n".encode())
            done = client.get(f"{URL}/{devbox_id}/executions/{execution['execution_id']}").json()
            assert done["stdout"] == "first\né second\n"
        finally:
            client.post(f"{URL}/{devbox_id}/shutdown")


def _spill_descriptors(data_dir) -> list[str]:
    """What this process (the in-process server) holds open in the data dir's spill directory."""
    spill = str(data_dir / "spill") + "/"
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(spill):
            targets.append(target)
    return targets


def test_a_running_command_s_long_output_waits_on_disk_not_in_memory(devbox_client, devbox, tmp_path):
    """Beyond 64 KiB per stream, a running command's output is kept in a file without a name
    in the data dir (256 chatty commands per devbox were gigabytes of the server's memory);
    it is served and stored exactly, and the file is gone once the result is stored."""
    data_dir = tmp_path / "data0"  # make_client's first app
    command = "head -c 300000 /dev/zero | tr '\\0' a; printf '\\303\\251'; while [ ! -e go ]; do sleep 0.01; done; printf end"
    execution_id = start(devbox_client, devbox, command)["execution_id"]
    until(lambda: _spill_descriptors(data_dir), timeout=20)
    spilled = _spill_descriptors(data_dir)
    assert len(spilled) == 1 and spilled[0].endswith("(deleted)"), spilled  # stdout only, and nameless
    assert os.listdir(data_dir / "spill") == []
    devbox_client.post(f"{URL}/{devbox}/execute_sync", json={"command": "touch go"}, headers=ALICE)
    done = wait(devbox_client, devbox, execution_id).json()
    assert done["stdout"] == "a" * 300000 + "\u00e9end" and not done["stdout_truncated"]
    # Inside the "é": the stream starts at the next character.
    events = sse_events(stream(devbox_client, devbox, execution_id, offset="300001"))
    assert "".join(e["output"] for e in events) == "end"
    until(lambda: not _spill_descriptors(data_dir))


# --- stdin -------------------------------------------------------------------------------


def send(client, devbox_id, execution_id, headers=ALICE, **body):
    return client.post(f"{URL}/{devbox_id}/executions/{execution_id}/send_std_in", json=body, headers=headers)


def start_attached(client, devbox_id, command):
    response = client.post(
        f"{URL}/{devbox_id}/execute_async", json={"command": command, "attach_stdin": True}, headers=ALICE
    )
    assert response.status_code == 200, response.text
    return response.json()["execution_id"]


def test_send_std_in_text_then_eof(devbox_client, devbox):
    execution_id = start_attached(devbox_client, devbox, "cat; echo done")
    first = send(devbox_client, devbox, execution_id, text="hello\n")
    assert first.json() == {"devbox_id": devbox, "execution_id": execution_id, "success": True}
    assert send(devbox_client, devbox, execution_id, text="wörld\n").json()["success"] is True
    assert send(devbox_client, devbox, execution_id, signal="EOF").json()["success"] is True
    done = wait(devbox_client, devbox, execution_id).json()
    assert done["stdout"] == "hello\nwörld\ndone\n" and done["exit_status"] == 0
    assert_error(send(devbox_client, devbox, execution_id, text="late"), 400, "execution_completed")
    assert_error(send(devbox_client, devbox, execution_id, signal="INTERRUPT"), 400, "execution_completed")


def test_eof_after_the_command_exited_is_no_error(devbox_client, devbox):
    """send the last line, then close: the command may have exited in between (SDK pattern)."""
    execution_id = start_attached(devbox_client, devbox, "read line; echo got $line")
    assert send(devbox_client, devbox, execution_id, text="x\n").json()["success"] is True
    done = wait(devbox_client, devbox, execution_id).json()
    assert (done["exit_status"], done["stdout"]) == (0, "got x\n")
    late = send(devbox_client, devbox, execution_id, signal="EOF")
    assert late.status_code == 200 and late.json()["success"] is True  # closed either way


def test_send_std_in_interrupt_signals_the_command(devbox_client, devbox):
    execution_id = start_attached(devbox_client, devbox, "trap 'echo interrupted; exit 7' INT; echo ready; while :; do sleep 0.01; done")
    until(lambda: "ready" in [e["message"] for e in logs(devbox_client, devbox, execution_id=execution_id)])
    assert send(devbox_client, devbox, execution_id, signal="INTERRUPT").json()["success"] is True
    done = wait(devbox_client, devbox, execution_id).json()
    assert done["exit_status"] == 7 and done["stdout"].endswith("interrupted\n")


def test_text_after_eof_is_refused(devbox_client, devbox):
    execution_id = start_attached(devbox_client, devbox, "sleep 30")
    assert send(devbox_client, devbox, execution_id, signal="EOF").json()["success"] is True
    assert send(devbox_client, devbox, execution_id, signal="EOF").json()["success"] is True  # idempotent
    assert_error(send(devbox_client, devbox, execution_id, text="x"), 400, "stdin_closed")
    devbox_client.post(f"{URL}/{devbox}/executions/{execution_id}/kill", headers=ALICE)


def test_send_std_in_validates(devbox_client, devbox):
    attached = start_attached(devbox_client, devbox, "sleep 30")
    for body in ({}, {"text": ""}, {"text": "a", "signal": "EOF"}, {"signal": "HUP"}, {"text": 5}):
        assert_error(send(devbox_client, devbox, attached, **body), 400)
    closed = start(devbox_client, devbox, "sleep 30")["execution_id"]
    assert_error(send(devbox_client, devbox, closed, text="x"), 400, "stdin_not_attached")
    assert_error(send(devbox_client, devbox, "exn_nope", text="x"), 404)
    assert_error(send(devbox_client, devbox, attached, headers=BOB, text="x"), 404)
    for execution_id in (attached, closed):
        devbox_client.post(f"{URL}/{devbox}/executions/{execution_id}/kill", headers=ALICE)


def test_a_command_that_does_not_read_gets_a_409_not_a_hang(devbox_client, devbox, monkeypatch):
    monkeypatch.setattr(executions, "STDIN_WRITE_SECONDS", 0.2)
    execution_id = start_attached(devbox_client, devbox, "sleep 30")
    response = send(devbox_client, devbox, execution_id, text="x" * 1_000_000)  # far more than a pipe holds
    body = assert_error(response, 409, "stdin_full", "stdin")
    assert response.headers["x-should-retry"] == "false", body
    devbox_client.post(f"{URL}/{devbox}/executions/{execution_id}/kill", headers=ALICE)


def test_a_second_write_while_one_waits_is_a_409_at_once(devbox_client, devbox, monkeypatch):
    """Writes to one command's stdin do not queue (each would hold a thread while it waits);
    and the waiting one runs on stdin's own threads: other requests are answered meanwhile."""
    monkeypatch.setattr(executions, "STDIN_WRITE_SECONDS", 10.0)
    execution_id = start_attached(devbox_client, devbox, "sleep 30")
    waiting = threading.Thread(target=send, args=(devbox_client, devbox, execution_id), kwargs={"text": "x" * 1_000_000})
    waiting.start()
    try:
        live = devbox_client.app.state.services.executions._live[execution_id]
        until(lambda: live._stdin_lock.locked())  # the first write waits for a reader
        assert_error(send(devbox_client, devbox, execution_id, text="more"), 409, "stdin_busy")
        assert devbox_client.get(URL, headers=ALICE).status_code == 200
        assert waiting.is_alive()
    finally:
        devbox_client.post(f"{URL}/{devbox}/executions/{execution_id}/kill", headers=ALICE)
        waiting.join(15)


def test_an_account_s_waiting_writes_are_capped_and_hold_up_no_other_account(devbox_client, devbox, monkeypatch):
    from simulator.api import executions as executions_api

    monkeypatch.setattr(executions, "STDIN_WRITE_SECONDS", 10.0)
    monkeypatch.setattr(executions_api, "STDIN_WRITERS", 1)  # limiters are made on first use
    stalled, other = start_attached(devbox_client, devbox, "sleep 30"), start_attached(devbox_client, devbox, "sleep 30")
    waiting = threading.Thread(target=send, args=(devbox_client, devbox, stalled), kwargs={"text": "x" * 1_000_000})
    waiting.start()
    bob_box = create_running(devbox_client, headers=BOB)["id"]
    reader = devbox_client.post(f"{URL}/{bob_box}/execute_async", json={"command": "cat", "attach_stdin": True},
                                headers=BOB).json()["execution_id"]
    try:
        live = devbox_client.app.state.services.executions._live[stalled]
        until(lambda: live._stdin_lock.locked())
        # The account's one writer waits: its next write is refused at once, not queued...
        assert_error(send(devbox_client, devbox, other, text="y"), 409, "stdin_busy", "this account")
        # ... its EOF and INTERRUPT do not wait behind it ...
        assert send(devbox_client, devbox, other, signal="EOF").json()["success"] is True
        # ... and another account writes as usual.
        assert send(devbox_client, bob_box, reader, headers=BOB, text="hello\n").json()["success"] is True
        assert waiting.is_alive()
    finally:
        for box, execution_id, headers in ((devbox, stalled, ALICE), (devbox, other, ALICE), (bob_box, reader, BOB)):
            devbox_client.post(f"{URL}/{box}/executions/{execution_id}/kill", headers=headers)
        waiting.join(15)


def test_a_command_ends_on_time_while_a_write_to_its_stdin_waits(devbox_client, devbox, monkeypatch):
    """The command exits while a write waits on a pipe that a background child keeps open but
    never reads: the execution completes at once (waiters are told), not when the write gives up."""
    monkeypatch.setattr(executions, "STDIN_WRITE_SECONDS", 6.0)
    # (dash gives a background job /dev/null for stdin unless it is redirected from another fd)
    command = "exec 3<&0; sleep 30 <&3 >/dev/null 2>&1 & head -c 1 >/dev/null; echo read"
    execution_id = start_attached(devbox_client, devbox, command)
    live = devbox_client.app.state.services.executions._live[execution_id]
    waiting = threading.Thread(target=send, args=(devbox_client, devbox, execution_id), kwargs={"text": "x" * 1_000_000})
    waiting.start()
    try:
        until(lambda: live._stdin_lock.locked())
        assert live.done.wait(3)  # completion did not wait for the write...
        assert live._stdin_lock.locked()  # ... which still waits
        response = wait(devbox_client, devbox, execution_id, timeout=5)
        assert response.status_code == 200, response.text
        assert response.json()["stdout"] == "read\n"
    finally:
        waiting.join(15)
    assert live.proc.stdin.closed  # closed by the write when it gave up


def test_eof_does_not_wait_for_a_write_in_progress(devbox_client, devbox, monkeypatch):
    """EOF while a write waits for a command that does not read: the answer comes at once and
    stdin is closed after that write (as a stream would deliver them), not refused or delayed."""
    monkeypatch.setattr(executions, "STDIN_WRITE_SECONDS", 6.0)
    execution_id = start_attached(devbox_client, devbox, "sleep 30")
    live = devbox_client.app.state.services.executions._live[execution_id]
    box = {}
    waiting = threading.Thread(target=lambda: box.setdefault("write", send(devbox_client, devbox, execution_id, text="x" * 1_000_000)))
    waiting.start()
    try:
        until(lambda: live._stdin_lock.locked())
        response = send(devbox_client, devbox, execution_id, signal="EOF")
        assert response.status_code == 200 and response.json()["success"] is True, response.text
        assert live._stdin_lock.locked()  # answered while the write still waits
        assert_error(send(devbox_client, devbox, execution_id, text="late"), 409, "stdin_busy")
        waiting.join(15)
        assert_error(box["write"], 409, "stdin_full")
        assert live.proc.stdin.closed
        assert_error(send(devbox_client, devbox, execution_id, text="late"), 400, "stdin_closed")
    finally:
        devbox_client.post(f"{URL}/{devbox}/executions/{execution_id}/kill", headers=ALICE)
        waiting.join(15)


def test_stdin_of_an_exited_command_reports_no_success(devbox_client, devbox):
    # The command closes its stdin and lingers: the write finds no reader.
    execution_id = start_attached(devbox_client, devbox, "exec 0<&-; echo closed; sleep 30")
    until(lambda: devbox_client.get(f"{URL}/{devbox}/logs", params={"execution_id": execution_id}, headers=ALICE).json()["logs"][-1]["message"] == "closed")
    assert send(devbox_client, devbox, execution_id, text="anyone?\n").json()["success"] is False
    devbox_client.post(f"{URL}/{devbox}/executions/{execution_id}/kill", headers=ALICE)


# --- logs --------------------------------------------------------------------------------


def logs(client, devbox_id, headers=ALICE, **params):
    response = client.get(f"{URL}/{devbox_id}/logs", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["logs"]


def test_logs_show_commands_output_lines_and_exit_codes(devbox_client):
    devbox = create_running(devbox_client, launch_parameters={"launch_commands": ["echo setting up"]})["id"]
    first = run(devbox_client, devbox, "echo out; echo err >&2; printf 'no newline'; exit 3")
    second = run(devbox_client, devbox, "echo second")
    entries = logs(devbox_client, devbox)
    for entry in entries:
        assert set(entry) == {"level", "source", "timestamp_ms", "cmd", "cmd_id", "exit_code", "message"}
    setup = [e for e in entries if e["source"] == "setup_commands"]
    assert [e["message"] for e in setup] == ["started", "setting up", "exited with 0"]
    assert setup[-1]["exit_code"] == 0 and setup[0]["cmd"] == "echo setting up"
    mine = logs(devbox_client, devbox, execution_id=first["execution_id"])
    assert {e["cmd_id"] for e in mine} == {first["execution_id"]} and {e["source"] for e in mine} == {"exec"}
    # stdout and stderr are separate pipes: their relative order is the order they were read.
    assert sorted((e["message"], e["level"]) for e in mine[1:-1]) == [
        ("err", "error"), ("no newline", "info"), ("out", "info")
    ]
    assert mine[0]["message"] == "started" and mine[0]["cmd"].startswith("echo out")
    assert mine[-1]["exit_code"] == 3 and mine[-1]["level"] == "error"
    times = [e["timestamp_ms"] for e in entries]
    assert times == sorted(times)
    assert [e["message"] for e in logs(devbox_client, devbox, execution_id=second["execution_id"])] == [
        "started", "second", "exited with 0"
    ]
    assert logs(devbox_client, devbox, execution_id="exn_unknown") == []


def test_logs_show_a_running_commands_lines_so_far(devbox_client, devbox):
    execution_id = start(devbox_client, devbox, "echo early; sleep 30")["execution_id"]
    until(lambda: [e["message"] for e in logs(devbox_client, devbox, execution_id=execution_id)] == ["started", "early"])
    devbox_client.post(f"{URL}/{devbox}/executions/{execution_id}/kill", headers=ALICE)
    assert logs(devbox_client, devbox, execution_id=execution_id)[-1]["exit_code"] == 137


def test_a_chatty_devbox_keeps_only_its_newest_log_lines(devbox_client, devbox, monkeypatch):
    monkeypatch.setattr(devbox_logs, "MAX_LINES_PER_DEVBOX", 100)
    monkeypatch.setattr(devbox_logs, "PRUNE_SLACK", 10)
    quiet = create_running(devbox_client)["id"]
    run(devbox_client, quiet, "echo quiet")
    for _ in range(3):
        last = run(devbox_client, devbox, "seq 1 150")
    entries = logs(devbox_client, devbox)
    # The newest 100: the end of the last command's 150 lines and its exit.
    assert [e["message"] for e in entries] == [str(n) for n in range(52, 151)] + ["exited with 0"]
    assert {e["cmd_id"] for e in entries} == {last["execution_id"]}
    assert last["stdout"] == "".join(f"{n}\n" for n in range(1, 151))  # the execution keeps all its output
    assert [e["message"] for e in logs(devbox_client, quiet)] == ["started", "quiet", "exited with 0"]
    with devbox_client.app.state.services.db.read() as conn:
        stored = conn.execute("SELECT COUNT(*) FROM devbox_logs WHERE devbox_id = ?", (devbox,)).fetchone()[0]
    assert stored <= 110


def test_logs_of_unknown_or_foreign_devboxes_are_404(devbox_client, devbox):
    assert_error(devbox_client.get(f"{URL}/{devbox}/logs", headers=BOB), 404)
    assert_error(devbox_client.get(f"{URL}/dbx_nope/logs", headers=ALICE), 404)


def test_a_quiet_stream_sends_keep_alive_pings_and_ends_with_the_command(devbox_client, devbox, monkeypatch):
    monkeypatch.setattr(executions, "SSE_PING_SECONDS", 0.05)
    services = devbox_client.app.state.services
    execution_id = start(devbox_client, devbox, "while [ ! -e go ]; do sleep 0.01; done; echo end")["execution_id"]

    async def consume():
        account = services.accounts.account_for(ALICE["Authorization"])
        chunks = await services.executions.stream_stdout_updates(account, devbox, execution_id)
        seen = [await chunks.__anext__(), await chunks.__anext__()]  # nothing printed yet: two pings
        run(devbox_client, devbox, "touch go")
        seen += [item async for item in chunks]
        return seen

    seen = asyncio.run(consume())
    assert seen[:2] == [None, None]
    assert [item for item in seen if item is not None] == [("end\n", 4)]


def test_event_stream_formats_chunks_and_pings():
    from simulator.api.sse import event_stream

    async def chunks():
        yield "a\n", 2
        yield None
        yield 'é"\r', 6

    async def body():
        return [part async for part in event_stream(chunks()).body_iterator]

    assert asyncio.run(body()) == [
        'data: {"output": "a\\n", "offset": 2}\n\n',
        ": keep-alive\n\n",
        'data: {"output": "\\u00e9\\"\\r", "offset": 6}\n\n',  # one line per event: all escaped
    ]
