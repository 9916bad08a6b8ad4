"""File read/write inside a container through docker's archive API (no exec, no host paths).

Docker resolves archive paths inside the container's root (symlinks included), so nothing
here can reach the host. Paths follow the devbox view: home-relative, ``~/``-relative or
absolute, with the home at /home/user. A symlink at the path is followed for writes as for
reads (as on the netns runtime), never replaced.

The archive API sees the container's file system layers, not what the runtime mounts on top
of them (``/proc``, ``/sys``, ``/dev``): a read there would show the image's file, not the
one the devbox sees, and a write would land where the devbox cannot see it. Those paths are
refused. Docker's own ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf`` read as the
devbox sees them, but cannot be written (they are bind mounts). Docker's messages are
passed on without the host's paths in them.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import posixpath
import re
import tarfile
import time

from simulator.runtime.base import MAX_READ_BYTES
from simulator.runtime.docker_image import HOME

GO_MODE_DIR = 1 << 31  # Go's os.ModeDir, as docker reports it in the archive stat header
GO_MODE_SYMLINK = 1 << 27
# Go's ModeDevice, ModeNamedPipe, ModeSocket, ModeCharDevice, ModeIrregular
GO_MODE_SPECIAL = (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)
MAX_SYMLINKS = 40  # like the kernel's ELOOP limit
TAR_OVERHEAD = 1 << 20  # headers (PAX ones included) and padding around one file's bytes
RUNTIME_MOUNTS = ("/proc", "/sys", "/dev")
RUNTIME_FILES = frozenset({"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"})
# Where a container's root lives on the host, as docker's messages name it: whatever the data
# root (/var/lib/docker, rootless, custom), a storage driver's layer directory is named by a
# 64-hex id and holds merged/diff (overlay2, fuse-overlayfs, vfs...) or rootfs.
_HOST_ROOT = re.compile(r"(?:/[^\s/:]+)*/[0-9a-f]{64}(?:-init)?/(?:merged|diff|rootfs)(?=/|\s|:|$)")


def container_path(path: str) -> str:
    """The absolute path inside the container for a devbox-view path; ValueError if unusable."""
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise ValueError("file path must be a non-empty string without NUL bytes")
    if path == "~" or path.startswith("~/"):
        path = HOME + path[1:]
    elif not path.startswith("/"):
        path = posixpath.join(HOME, path)
    if posixpath.normpath(path) == "/":
        raise ValueError(f"{path!r} is the root directory, not a file")
    # Not normalised: "link/.." is the parent of the link's target, as the kernel walks it
    # (``_resolve`` takes "." and ".." component by component), not the link's own directory.
    return path


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
        message = docker_message(exc)
    if "not a directory" in message:  # a parent is a regular file: the devbox's problem
        return NotADirectoryError(f"{path}: a parent is not a directory")
    if "too many links" in message or "too many levels of symbolic links" in message:
        return OSError(errno.ELOOP, "too many levels of symbolic links", path)
    return OSError(f"{path}: {message}")


def docker_message(exc: BaseException) -> str:
    """Docker's explanation of an error, with the host's paths of the container's root taken
    out (they name the host's file system, not the devbox's)."""
    message = str(getattr(exc, "explanation", None) or exc)
    return _HOST_ROOT.sub("", message)


def _check_reachable(target: str, path: str, writing: bool) -> None:
    if writing and target in RUNTIME_FILES:
        raise ValueError(f"{path}: {target} is docker's (a bind mount it keeps up to date) and cannot be written")
    if any(target == m or target.startswith(m + "/") for m in RUNTIME_MOUNTS):
        raise ValueError(
            f"{path}: {target} is provided by the container runtime, not stored on the devbox's disk; "
            "the file API cannot reach it (read it with a command)"
        )


def _resolve(api, container: str, path: str, writing: bool = False) -> tuple[str, dict | None]:
    """(where ``path`` leads in the container, its stat or None if nothing is there).

    Symlinks are followed in every component, as the kernel would, so that the runtime's
    mounts are refused also behind a link (``ln -s /dev/shm shm``; docker would resolve a
    parent link itself, on the layers). One stat per component; docker reports a link's
    target already evaluated in the container's root."""
    pending = _components(container_path(path))[::-1]  # components still to walk
    resolved = ""
    stat: dict | None = None
    links = 0
    while pending:
        component = pending.pop()
        if stat is not None and resolved and not int(stat.get("mode", 0)) & GO_MODE_DIR:
            raise NotADirectoryError(f"{path}: a parent is not a directory")
        if component == ".":
            continue
        if component == "..":  # the parent of where the walk stands (links already followed)
            resolved = posixpath.dirname(resolved) if resolved else ""
            resolved = "" if resolved == "/" else resolved
            stat = {"mode": GO_MODE_DIR}
            continue
        candidate = f"{resolved}/{component}"
        _check_reachable(candidate, path, writing)
        stat = _stat(api, container, candidate)
        if stat is None:  # the rest does not exist (a write makes it)
            rest = pending[::-1]
            if ".." in rest:  # through a directory that is not there: as the kernel says
                raise FileNotFoundError(f"no such file in the devbox: {path}")
            return posixpath.join(candidate, *(c for c in rest if c != ".")), None
        if int(stat.get("mode", 0)) & GO_MODE_SYMLINK:
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = stat.get("linkTarget") or ""
            # Docker reports the target already evaluated in the container's root (absolute).
            pending.extend(_components(posixpath.join(resolved or "/", target))[::-1])
            resolved = ""
            stat = None
            continue
        resolved = candidate
    if not resolved:
        raise IsADirectoryError(f"{path} is a directory")  # a link to the root
    return resolved, stat


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def read_file(api, container: str, path: str) -> bytes:
    target, stat = _resolve(api, container, path)
    if stat is None:
        raise FileNotFoundError(f"no such file in the devbox: {path}")
    if int(stat.get("mode", 0)) & GO_MODE_DIR:
        raise IsADirectoryError(f"{path} is a directory")
    if int(stat.get("size", 0)) > MAX_READ_BYTES:  # held in memory, twice (tar + file)
        raise OSError(errno.EFBIG, f"larger than the {MAX_READ_BYTES} bytes a read may return", path)
    # get_archive's own generator would read whatever docker sends; the devbox may have swapped
    # in a bigger file (or a directory) since the stat. So the response is read here, up to
    # what a file of the limit takes, and closed (not read to the end) when it is more.
    response = api._get(api._url("/containers/{0}/archive", container), params={"path": target},
                        stream=True, headers={"Accept-Encoding": "identity"})
    try:
        if response.status_code == 404:  # removed in between
            raise FileNotFoundError(f"no such file in the devbox: {path}")
        try:
            response.raise_for_status()
        except Exception as exc:
            raise OSError(f"{path}: {docker_message(exc)}") from None
        limit = MAX_READ_BYTES + TAR_OVERHEAD
        chunks, got = [], 0
        for chunk in response.raw.stream(1 << 16, decode_content=False):
            got += len(chunk)
            if got > limit:
                raise OSError(errno.EFBIG, f"larger than the {MAX_READ_BYTES} bytes a read may return", path)
            chunks.append(chunk)
    finally:
        response.close()
    data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        if member is None or not member.isfile():
            raise ValueError(f"{path} is not a regular file")
        extracted = tar.extractfile(member)
        return extracted.read() if extracted else b""


def write_file(api, container: str, path: str, data: bytes) -> None:
    """Create or replace a regular file (parents created by docker's extraction), root-owned,
    mode 0644; through a symlink (a dangling one too), its target. A directory there is
    refused: docker's extraction would delete it."""
    target, stat = _resolve(api, container, path, writing=True)
    if stat is not None and int(stat.get("mode", 0)) & GO_MODE_DIR:
        raise IsADirectoryError(f"{path} is a directory")
    if stat is not None and int(stat.get("mode", 0)) & GO_MODE_SPECIAL:
        # A FIFO, socket or device: docker's extraction would replace it with a file (the
        # kernel, on netns, refuses to open it so).
        raise OSError(errno.ENXIO, "not a regular file (a FIFO, socket or device)", path)
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
        raise ValueError(f"cannot write {path}: {docker_message(exc)}") from None
