"""The test helper ServerProcess: a server that never gets ready is stopped by start(), so a
failed start leaves no process (and none of its namespaces or containers) behind."""
import socket
import sys
import textwrap

import pytest

from tests.server import ServerProcess

# Announces a port it never serves on (the test holds it bound, not listening: refused).
FAKE = textwrap.dedent("""
    import sys, time
    print(f"listening on http://127.0.0.1:{sys.argv[1]}", file=sys.stderr, flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("to_file", [False, True], ids=["log-pipe", "log-file"])
def test_start_stops_a_server_that_never_answers(tmp_path, to_file):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    try:
        port = holder.getsockname()[1]
        server = ServerProcess(None, argv=[sys.executable, "-c", FAKE, str(port)], env={},
                               log_file=tmp_path / "log" if to_file else None)
        try:
            with pytest.raises(RuntimeError, match="never answered"):
                server.start(timeout=1.0)
            assert server.proc is not None and server.proc.poll() is not None, "left running"
        finally:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(5)
    finally:
        holder.close()
