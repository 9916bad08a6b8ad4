"""Named network namespaces, thread-level namespace switching and in-process netlink.

Everything here is in-process: no ``ip`` subprocess and no helper fork per call.

Named namespaces
    ``create(name)`` behaves like ``ip netns add``: a new network namespace is bind-mounted on
    ``/run/netns/<name>`` so it persists without any process in it and ``ip netns exec``/``ip -n``
    see it. The ``unshare(CLONE_NEWNET)`` happens in a throwaway thread (network namespaces are a
    per-thread attribute on Linux), which then exits; the calling thread is never moved.

Thread-level switching
    ``entered(target)`` moves *the calling thread only* into a namespace with ``setns(2)`` and
    always moves it back, also on exception. Sockets keep the namespace they were created in, so
    ``socket_in()`` returns a socket that lives in the namespace while the thread is already back
    home. ``/proc/sys/net/...`` is resolved against the opening thread's namespace, which is what
    ``netns.sysctl`` relies on.

Netlink (pyroute2) -- findings for pyroute2 0.9.7
    * ``IPRoute(netns="x")`` FORKS a child process for every socket it creates
      (``pyroute2.netns.create_socket`` -> ``pyroute2.process.ChildProcess``, mode ``fork``): the
      child setns()es and passes the fd back over a unix socket. ``netns="x"`` also *creates* the
      namespace if it is missing (``flags=os.O_CREAT``), which hides typos. We never use it.
    * ``pyroute2.netns.create()`` forks as well (it unshares in a child because it bind-mounts
      ``/proc/self/ns/net``, the thread-group leader's namespace).
    * pyroute2 0.9 keeps its netlink socket, asyncio event loop and queues in a
      ``threading.local``. An ``IPRoute`` used from a thread other than the one that created it
      silently opens a NEW netlink socket in that other thread's *current* namespace. So an
      ``IPRoute`` created while setns()ed into a namespace and later used from another thread
      would operate on the HOST. (Verified: it lists the host's links.)
    Hence: all pyroute2 objects live in one dedicated worker thread ("devbox-netlink"). The worker
    creates one ``IPRoute`` per namespace while briefly setns()ed into it, caches it, and runs
    every netlink job. ``netlink_call(fn, *args)`` runs ``fn`` in that thread (inline when already
    in it); inside it, ``ipr(target)`` returns the cached ``IPRoute`` for a namespace. It also
    keeps pyroute2's private event loops away from an asyncio loop running in the caller's thread.

Targets
    Wherever a namespace is expected, ``target`` may be a ``str`` (a name under /run/netns), an
    ``int`` (a process id: that process's network namespace, e.g. a Docker container) or ``None``
    (the host namespace: the namespace this process was in when this module was imported).

A cached netlink socket holds a reference on its namespace, and the kernel destroys a
namespace's interfaces only when the last reference goes. ``delete()`` therefore drops the cached
sockets first; callers that keep sockets from ``socket_in()`` must close them too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import socket
import stat
import threading
from typing import Any, Callable, Iterator, TypeVar

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_MS_REC = 0x4000
_MS_BIND = 0x1000
_MS_SHARED = 1 << 20
_MNT_DETACH = 2

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

Target = str | int | None
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class NamespaceError(RuntimeError):
    pass


def _raise_errno(what: str, path: str | None = None) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        _raise_errno("setns(CLONE_NEWNET)")


def _thread_ns_path() -> str:
    return "/proc/thread-self/ns/net"


# The host namespace: whatever this process was in at import time. Kept open so that the
# netlink worker (and ``entered(None)``) can always return to it, even if the thread that starts
# the worker is itself inside ``entered()`` at that moment.
_HOST_NS_FD = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"invalid network namespace name: {name!r}")


def path(name: str) -> str:
    _check_name(name)
    return os.path.join(NETNS_RUN_DIR, name)


def _target_path(target: Target) -> str:
    if target is None:
        return f"/proc/self/fd/{_HOST_NS_FD}"
    if isinstance(target, bool):
        raise TypeError("namespace target must be a name, a pid or None")
    if isinstance(target, int):
        if target <= 0:
            raise ValueError(f"invalid pid {target}")
        return f"/proc/{target}/ns/net"
    return path(target)


def open_fd(target: Target) -> int:
    """An O_RDONLY|O_CLOEXEC fd on the namespace (the caller closes it)."""
    if target is None:
        return os.dup(_HOST_NS_FD)
    p = _target_path(target)
    try:
        return os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(f"network namespace {target!r} does not exist ({p})") from None


def _nsfs_dev() -> int:
    return os.fstat(_HOST_NS_FD).st_dev


def identity(target: Target) -> tuple[int, int]:
    """(st_dev, st_ino) of the namespace: equal identities mean the same namespace."""
    if target is None:
        st = os.fstat(_HOST_NS_FD)
    else:
        try:
            st = os.stat(_target_path(target))
        except FileNotFoundError:
            raise NamespaceError(f"network namespace {target!r} does not exist") from None
    return (st.st_dev, st.st_ino)


def exists(name: str) -> bool:
    """True if /run/netns/<name> is a mounted network namespace (not a stale placeholder file)."""
    try:
        st = os.stat(path(name))
    except FileNotFoundError:
        return False
    return st.st_dev == _nsfs_dev() and not stat.S_ISDIR(st.st_mode)


def list_names(prefix: str = "", *, placeholders: bool = False) -> list[str]:
    """Named namespaces starting with ``prefix``. With ``placeholders``, also the empty files
    a create interrupted before its bind mount (kill -9) leaves under /run/netns: nothing is
    mounted on them, yet `ip netns list` shows them, and only ``delete`` removes them."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix) and _NAME_RE.match(n) and (placeholders or exists(n)))


def _prepare_run_dir() -> None:
    """Port of iproute2's netns_add preamble: /run/netns must be a shared mount point."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    d = NETNS_RUN_DIR.encode()
    made_mount = False
    while _libc.mount(b"", d, b"none", _MS_SHARED | _MS_REC, None) != 0:
        if ctypes.get_errno() != errno.EINVAL or made_mount:
            _raise_errno("mount --make-rshared", NETNS_RUN_DIR)
        # Not a mount point yet: bind it onto itself, then retry.
        if _libc.mount(d, d, b"none", _MS_BIND | _MS_REC, None) != 0:
            _raise_errno("mount --rbind", NETNS_RUN_DIR)
        made_mount = True


_create_lock = threading.Lock()


def create(name: str) -> None:
    """Create a persistent named network namespace (like ``ip netns add NAME``).

    Raises FileExistsError if it already exists. A stale placeholder file (left by an
    interrupted create) is replaced.
    """
    p = path(name)
    with _create_lock:
        if exists(name):
            raise FileExistsError(errno.EEXIST, "network namespace exists", p)
        _prepare_run_dir()
        if os.path.lexists(p):  # stale, unmounted placeholder
            os.unlink(p)
        os.close(os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        result: list[BaseException] = []

        def _unshare_and_bind() -> None:
            # Runs in a throwaway thread: it unshares its own netns, pins it with a bind mount of
            # /proc/thread-self/ns/net (NOT /proc/self: that is the thread-group leader's) and
            # exits. No thread ever has to switch back.
            try:
                if _libc.unshare(CLONE_NEWNET) != 0:
                    _raise_errno("unshare(CLONE_NEWNET)")
                if _libc.mount(b"/proc/thread-self/ns/net", p.encode(), b"none", _MS_BIND, None) != 0:
                    _raise_errno("bind mount netns", p)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                result.append(e)

        t = threading.Thread(target=_unshare_and_bind, name=f"netns-create-{name}")
        t.start()
        t.join()
        if result:
            with contextlib.suppress(OSError):
                os.unlink(p)
            raise result[0]


def delete(name: str) -> bool:
    """Delete a named namespace (like ``ip netns del``). Returns False if it did not exist.

    Cached netlink sockets for it are closed first so they do not keep it alive. Interfaces in
    it are destroyed by the kernel once no process and no socket references it any more.
    """
    p = path(name)
    if not os.path.lexists(p):
        return False
    _netlink.forget(name)
    if _libc.umount2(p.encode(), _MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _raise_errno("umount netns", p)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)
    return True


@contextlib.contextmanager
def entered(target: Target) -> Iterator[None]:
    """Run the body with the CALLING THREAD in the namespace; always switch back.

    Only the current thread moves (other threads, including the asyncio loop, are unaffected).
    Do not ``await`` inside the body: another coroutine would run in the namespace.
    """
    fd = open_fd(target)
    try:
        home = os.open(_thread_ns_path(), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
            try:
                yield
            finally:
                try:
                    _setns(home)
                except OSError as e:  # practically impossible: we hold the fd
                    raise NamespaceError(
                        f"could not return thread to its network namespace: {e}"
                    ) from e
        finally:
            os.close(home)
    finally:
        os.close(fd)


def socket_in(
    target: Target,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,  # noqa: A002 - mirrors socket.socket
    proto: int = 0,
) -> socket.socket:
    """A socket created inside the namespace (it stays there; the caller closes it)."""
    with entered(target):
        return socket.socket(family, type, proto)


def run_in(target: Target, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in the calling thread while it is inside the namespace."""
    with entered(target):
        return fn(*args, **kwargs)


def current_identity() -> tuple[int, int]:
    st = os.stat(_thread_ns_path())
    return (st.st_dev, st.st_ino)


SIOCGSKNS = 0x894C  # ioctl: open the network namespace of a socket


def socket_identity(sock: socket.socket) -> tuple[int, int]:
    """(st_dev, st_ino) of the namespace a socket lives in (compare with ``identity()``)."""
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino)


def _prime(obj: Any) -> socket.socket | None:
    """Make a pyroute2 object create its socket NOW (i.e. in the current namespace).

    ``IPRoute()`` opens its socket in ``__init__``, but e.g. ``Conntrack()`` does so lazily on
    first use -- which would then happen outside ``entered()``, in the host namespace.
    """
    core = getattr(obj, "asyncore", None)
    if core is None:
        return None
    sock = core.socket  # thread-local property: creates the socket in this thread's netns
    return sock


# --------------------------------------------------------------------------- netlink worker


class _NetlinkWorker:
    """One thread owning every pyroute2 object (see module docstring for why)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        # key -> (identity, socket object); touched only in the worker thread
        self._cache: dict[tuple[str, Any], tuple[tuple[int, int], Any]] = {}

    # -- thread management
    def _init_thread(self) -> None:
        _setns(_HOST_NS_FD)
        self._local.is_worker = True

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="devbox-netlink", initializer=self._init_thread
                )
            return self._pool

    def in_worker(self) -> bool:
        return getattr(self._local, "is_worker", False)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.in_worker():
            return fn(*args, **kwargs)
        return self._executor().submit(fn, *args, **kwargs).result()

    def _after_fork_in_child(self) -> None:
        # The worker thread does not exist in a forked child; forget (do not close) its objects.
        self._lock = threading.Lock()
        self._pool = None
        self._local = threading.local()
        self._cache = {}

    # -- cached sockets (worker thread only)
    def get(self, kind: str, target: Target, factory: Callable[[], Any]) -> Any:
        _require_worker()
        if isinstance(target, int):  # pid targets are not cached (pids are reused)
            raise TypeError("pid targets are not cached; use temporary_ipr()")
        ident = identity(target)
        key = (kind, target)
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] == ident:
                return hit[1]
            self._close_key(key)  # namespace was recreated under the same name
        with entered(target):
            obj = factory()
            try:
                sock = _prime(obj)
            except BaseException:
                with contextlib.suppress(Exception):
                    obj.close()
                raise
        if sock is not None and socket_identity(sock) != ident:
            with contextlib.suppress(Exception):
                obj.close()
            raise NamespaceError(f"netlink socket for {target!r} was not created in that namespace")
        self._cache[key] = (ident, obj)
        return obj

    def _close_key(self, key: tuple[str, Any]) -> None:
        hit = self._cache.pop(key, None)
        if hit is not None:
            with contextlib.suppress(Exception):
                hit[1].close()

    def _forget(self, target: Target) -> None:
        for key in [k for k in self._cache if k[1] == target]:
            self._close_key(key)

    def forget(self, target: Target) -> None:
        with self._lock:
            started = self._pool is not None
        if started or self.in_worker():
            self.call(self._forget, target)

    def close_all(self) -> None:
        def _close() -> None:
            for key in list(self._cache):
                self._close_key(key)

        with self._lock:
            started = self._pool is not None
        if started:
            self.call(_close)


_netlink = _NetlinkWorker()


def _require_worker() -> None:
    # Not an assert: using a pyroute2 object from another thread would silently act on the HOST.
    if not _netlink.in_worker():
        raise RuntimeError("pyroute2 objects may only be used in the netlink worker thread (netlink_call)")
os.register_at_fork(after_in_child=_netlink._after_fork_in_child)


def netlink_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in the netlink worker thread and return its result (exceptions propagate)."""
    return _netlink.call(fn, *args, **kwargs)


def ipr(target: Target):
    """The cached ``IPRoute`` for a named namespace or the host. Worker thread only."""
    from pyroute2 import IPRoute

    return _netlink.get("ipr", target, IPRoute)


@contextlib.contextmanager
def temporary_ipr(target: Target) -> Iterator[Any]:
    """An uncached ``IPRoute`` in any target (e.g. a pid). Worker thread only."""
    from pyroute2 import IPRoute

    _require_worker()
    with entered(target):
        obj = IPRoute()
    try:
        yield obj
    finally:
        obj.close()


def cached(kind: str, target: Target, factory: Callable[[], Any]) -> Any:
    """Generic per-namespace cache of a netlink object created inside the namespace."""
    return _netlink.get(kind, target, factory)


def close_netlink_sockets() -> None:
    """Close every cached netlink socket (e.g. at simulator shutdown)."""
    _netlink.close_all()
