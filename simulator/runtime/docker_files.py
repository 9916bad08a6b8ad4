"""File read/write inside a container through docker's archive API (no exec, no host paths).

Docker resolves archive paths inside the container's root (symlinks included), so nothing
here can reach the host. Paths follow the devbox view: home-relative, ``~/``-relative or
absolute, with the home at /home/user.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import posixpath
import tarfile
import time

from simulator.runtime.base import MAX_READ_BYTES
from simulator.runtime.docker_image import HOME

GO_MODE_DIR = 1 << 31  # Go's os.ModeDir, as docker reports it in the archive stat header
GO_MODE_SYMLINK = 1 << 27
MAX_SYMLINKS = 40  # like the kernel's ELOOP limit


def container_path(path: str) -> str:
    """The absolute path inside the container for a devbox-view path; ValueError if unusable."""
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise ValueError("file path must be a non-empty string without NUL bytes")
    if path == "~" or path.startswith("~/"):
        path = HOME + path[1:]
    elif not path.startswith("/"):
        path = posixpath.join(HOME, path)
    normal = posixpath.normpath(path)
    if normal == "/":
        raise ValueError(f"{path!r} is the root directory, not a file")
    return normal


def _stat(api, container: str, path: str) -> dict | None:
    """Docker's stat of ``path`` (a final symlink not followed); None if it does not exist.
    A HEAD request: ``get_archive`` would start streaming a whole directory."""
    response = api.head(api._url("/containers/{0}/archive", container), params={"path": path})
    try:
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise _stat_error(api, container, path)
        encoded = response.headers.get("x-docker-container-path-stat")
        return json.loads(base64.b64decode(encoded)) if encoded else {}
    finally:
        response.close()


def _stat_error(api, container: str, path: str) -> OSError:
    """A HEAD answer has no body: ask again with GET for docker's message (error path only)."""
    import docker.errors

    try:
        api.get_archive(container, path)
        message = "unknown error"
    except docker.errors.APIError as exc:
        message = str(exc.explanation or exc)
    if "not a directory" in message:  # a parent is a regular file: the devbox's problem
        return NotADirectoryError(f"{path}: a parent is not a directory")
    return OSError(f"{path}: {message}")


def read_file(api, container: str, path: str) -> bytes:
    import docker.errors

    target = container_path(path)
    for _ in range(MAX_SYMLINKS):
        stat = _stat(api, container, target)
        if stat is None:
            raise FileNotFoundError(f"no such file in the devbox: {path}")
        mode = int(stat.get("mode", 0))
        if mode & GO_MODE_SYMLINK:
            link = stat.get("linkTarget") or ""
            target = posixpath.normpath(posixpath.join(posixpath.dirname(target), link))
            continue
        if mode & GO_MODE_DIR:
            raise IsADirectoryError(f"{path} is a directory")
        if int(stat.get("size", 0)) > MAX_READ_BYTES:  # held in memory, twice (tar + file)
            raise OSError(errno.EFBIG, f"larger than the {MAX_READ_BYTES} bytes a read may return", path)
        try:
            stream, _ = api.get_archive(container, target)
        except docker.errors.NotFound:  # removed in between
            raise FileNotFoundError(f"no such file in the devbox: {path}") from None
        data = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise ValueError(f"{path} is not a regular file")
            extracted = tar.extractfile(member)
            return extracted.read() if extracted else b""
    raise ValueError(f"{path}: too many levels of symbolic links")


def write_file(api, container: str, path: str, data: bytes) -> None:
    """Create or replace a regular file (parents created by docker's extraction), root-owned,
    mode 0644. A directory there is refused: docker's extraction would delete it."""
    target = container_path(path)
    stat = _stat(api, container, target)
    if stat is not None and int(stat.get("mode", 0)) & GO_MODE_DIR:
        raise IsADirectoryError(f"{path} is a directory")
    info = tarfile.TarInfo(target.lstrip("/"))
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    import docker.errors

    try:
        api.put_archive(container, "/", buffer.getvalue())
    except docker.errors.APIError as exc:
        # e.g. a parent is a regular file: the devbox's problem, not the simulator's.
        raise ValueError(f"cannot write {path}: {exc.explanation or exc}") from None
