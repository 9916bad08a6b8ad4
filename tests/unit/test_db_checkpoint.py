"""The WAL is checkpointed by a thread of its own, never inside a request's commit."""

from __future__ import annotations

import os
import time

from simulator import db as dbmod


def _write_rows(database, n: int) -> None:
    for i in range(n):
        with database.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (?)", (os.urandom(4096),))


def test_commits_never_checkpoint_the_background_thread_does(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod, "CHECKPOINT_EVERY", 10**9)  # no background checkpoint
    database = dbmod.Database(tmp_path / "a.db")
    with database.transaction() as conn:
        conn.execute("CREATE TABLE t (x BLOB)")
    _write_rows(database, 1200)  # past the 1,000 WAL pages where SQLite itself would checkpoint
    main = os.path.getsize(tmp_path / "a.db")
    assert main < 100 * 4096  # everything still in the WAL: no commit checkpointed
    database.close()

    monkeypatch.setattr(dbmod, "CHECKPOINT_EVERY", 50)
    database = dbmod.Database(tmp_path / "b.db")
    try:
        with database.transaction() as conn:
            conn.execute("CREATE TABLE t (x BLOB)")
        _write_rows(database, 299)  # the 300th commit asks for a checkpoint
        deadline = time.monotonic() + 10
        while os.path.getsize(tmp_path / "b.db") < 300 * 4096:
            assert time.monotonic() < deadline, "the WAL was never checkpointed"
            time.sleep(0.01)  # bounded poll: the checkpoint runs on its own thread
    finally:
        database.close()
    assert database._checkpointer._thread is not None and not database._checkpointer._thread.is_alive()


def test_a_big_wal_is_checkpointed_and_cut_back_and_a_clean_stop_empties_it(tmp_path, monkeypatch):
    """A few big commits (a command's output) grew the WAL to hundreds of MB: the commit count
    never reached the checkpoint, and a clean stop left it all behind."""
    monkeypatch.setattr(dbmod, "CHECKPOINT_EVERY", 10**9)
    monkeypatch.setattr(dbmod, "WAL_CHECKPOINT_BYTES", 1 << 20)
    database = dbmod.Database(tmp_path / "c.db")
    wal = tmp_path / "c.db-wal"
    try:
        with database.transaction() as conn:
            conn.execute("CREATE TABLE t (x BLOB)")
        for _ in range(3):
            with database.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (?)", (os.urandom(2 << 20),))
        deadline = time.monotonic() + 10
        while os.path.getsize(tmp_path / "c.db") < 6 << 20:
            assert time.monotonic() < deadline, "the WAL was never checkpointed"
            time.sleep(0.01)  # bounded poll: the checkpoint runs on its own thread
        database.checkpoint()
        assert os.path.getsize(wal) == 0
    finally:
        database.close()
