"""The file service: read and write files of a running devbox, one method per API action.

Paths are the devbox's view: relative to the home (``/home/user``), ``~/...``, or absolute;
the runtime resolves them (the netns runtime allows home and ``/tmp`` only, and never follows
a devbox's symlink out of them). Every runtime error becomes a clear 4xx: a missing file is
404 ``file_not_found``; a directory, a path the devbox may not use or a non-regular file is
400. A write creates missing parent directories; it is recorded in the devbox's logs
(source ``files``) and counts as activity for the keep-alive timer.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from simulator import clock
from simulator.devbox_logs import LogEntry
from simulator.devboxes import DevboxService
from simulator.errors import ApiError, InvalidRequest, NotFound
from simulator.runtime.base import MAX_READ_BYTES, RuntimeFailure

log = logging.getLogger("devbox_sim.files")

MAX_PATH_LENGTH = 4096
# The largest file a write or an upload may store: as large as a read may return, so whatever
# is written can be read back (and an upload is never held in memory beyond it).
MAX_FILE_BYTES = MAX_READ_BYTES


class FileService:
    def __init__(self, devboxes: DevboxService):
        self.devboxes = devboxes

    def read_file_contents(self, account: str, devbox_id: str, file_path: str) -> bytes:
        """The file's bytes (served as text/plain: the SDK returns them as text)."""
        return self._read(account, devbox_id, file_path)

    def download_file(self, account: str, devbox_id: str, path: str) -> bytes:
        return self._read(account, devbox_id, path)

    def write_file_contents(self, account: str, devbox_id: str, file_path: str, contents: str) -> None:
        data = contents.encode("utf-8")
        self._write(account, devbox_id, file_path, len(data), lambda: data)

    def upload_file(self, account: str, devbox_id: str, path: str, upload) -> None:
        """``upload``: the uploaded file (binary, seekable: the form's spooled file). Its size
        is checked before it is read, so an oversized upload costs no memory."""
        upload.seek(0, 2)
        size = upload.tell()
        upload.seek(0)
        self._write(account, devbox_id, path, size, upload.read)

    # --- helpers -----------------------------------------------------------------------

    def _read(self, account: str, devbox_id: str, path: str) -> bytes:
        _check_path(path)
        self.devboxes.require_running(account, devbox_id)
        runtime = self.devboxes.require_runtime()
        try:
            data = runtime.read_file(devbox_id, path)
        except Exception as exc:
            raise _translate(exc, path, "read") from exc
        self.devboxes.touch(devbox_id)
        return data

    def _write(self, account: str, devbox_id: str, path: str, size: int, read: Callable[[], bytes]) -> None:
        """Write ``size`` bytes that ``read()`` returns, once the path, the devbox (404 first)
        and the size have passed."""
        _check_path(path)
        devbox = self.devboxes.require_running(account, devbox_id)
        check_size(path, size)
        data = read()
        runtime = self.devboxes.require_runtime()
        try:
            runtime.write_file(devbox_id, path, data)
        except Exception as exc:
            raise _translate(exc, path, "write") from exc
        self.devboxes.touch(devbox_id)
        entry = LogEntry("info", "files", clock.now_ms(), message=f"wrote {path} ({len(data)} bytes)")
        self.devboxes.record_logs(devbox, [entry])


def _check_path(path: str) -> None:
    if not path or not path.strip():
        raise InvalidRequest("the path must not be empty", code="invalid_path")
    if "\0" in path:
        raise InvalidRequest("the path must not contain NUL characters", code="invalid_path")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidRequest(f"the path is longer than {MAX_PATH_LENGTH} characters", code="invalid_path")


def check_size(path: str, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise InvalidRequest(
            f"{path!r}: {size} bytes is larger than the {MAX_FILE_BYTES} bytes a file may have", code="file_too_large"
        )


def check_file_mount_size(path: str, content: str) -> None:
    """A devbox's or blueprint's ``file_mounts`` entry is a file too: 400 at create."""
    try:
        check_size(path, len(content.encode("utf-8", "surrogatepass")))
    except InvalidRequest as exc:
        raise InvalidRequest(f"file_mounts: {exc.message}", code=exc.code) from None


def _translate(exc: Exception, path: str, action: str) -> ApiError:
    """A runtime's file error as the 4xx the client sees (never a 500 for a bad path)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{path!r}: no such file", code="file_not_found")
    if isinstance(exc, IsADirectoryError):
        return InvalidRequest(f"{path!r} is a directory", code="is_a_directory")
    if isinstance(exc, NotADirectoryError):
        return InvalidRequest(f"{path!r}: a parent of it is not a directory", code="not_a_directory")
    if isinstance(exc, PermissionError):
        return InvalidRequest(f"{path!r}: permission denied", code="permission_denied")
    if isinstance(exc, ValueError):
        return InvalidRequest(str(exc), code="invalid_path")
    if isinstance(exc, RuntimeFailure):
        return InvalidRequest(str(exc), code="devbox_not_running")
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return InvalidRequest(f"{path!r}: {exc.strerror}", code="file_too_large")
    if isinstance(exc, OSError):
        reason = "too many levels of symbolic links" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        return InvalidRequest(f"cannot {action} {path!r}: {reason}", code="file_error")
    log.error("unexpected error on %s of %r", action, path, exc_info=exc)
    return InvalidRequest(f"cannot {action} {path!r}: {type(exc).__name__}", code="file_error")


# For devbox creation's file_mounts (simulator.devboxes): the same checks and messages.
check_path = _check_path
translate_error = _translate
