"""The Docker runtime: a devbox is a container on the simulator's data plane.

The container starts with network mode ``none``; the data plane then plumbs a veth from the
router bridge into the container's network namespace, found by its init pid, with the very
same addressing, anti-spoofing, nftables chains and resolver as a netns devbox
(``DataPlane.connect(pid=...)``). Only processes and files differ: commands are ``docker
exec``s (``docker_exec.DockerProcess``, Popen-like), files go through docker's archive API.

Every container carries the labels ``devbox-sim.instance`` (the data plane's instance, i.e.
the data dir) and ``devbox-sim.devbox``; a new runtime removes the containers of its
instance that a crashed run left. Every capability is dropped and processes and memory are
limited (see DROPPED_CAPABILITIES); the anti-spoofing rules stay. Every process runs under the
netns runtime's seccomp filter too, stacked on docker's profile (SECCOMP_EXEC_IN_CONTAINER).
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netns import cgroup_limits, sandbox
from netns.sandbox_setup import PTY_MAX
from simulator.addresses import Address
from simulator.dataplane import DataPlane
from simulator.runtime import docker_files
from simulator.runtime.base import PIDS_LIMIT, DevboxSpec, RuntimeFailure, cpu_limit, memory_limit, stop_if_cancelled
from simulator.runtime.disk_copy import MAX_DISK_BYTES
from simulator.runtime.docker_exec import DockerProcess, ExecFailed
from simulator.runtime.docker_image import HOME, SNAPSHOT_REPOSITORY, default_image, image_exists, is_static_elf
from simulator.runtime.freeze_gate import FreezeGate

log = logging.getLogger(__name__)

INSTANCE_LABEL = "devbox-sim.instance"
DEVBOX_LABEL = "devbox-sim.devbox"
# The seccomp filter of netns devboxes (netns/seccomp_exec.c: no vsock, which reaches the
# hypervisor whatever the network namespace, no io_uring, keyrings, user namespaces...),
# stacked on docker's own profile, which allows vsock and io_uring. The static helper is
# bind-mounted read-only into /dev (a tmpfs: never part of a snapshot) and every process of
# the container starts through it: pid 1 (``--init``, in place of docker's init: it reaps the
# orphans of exec'd commands) and each exec'd command. An unfiltered process of the same uid
# in the container would otherwise be one ptrace away.
SECCOMP_EXEC_IN_CONTAINER = "/dev/.devbox-sim-seccomp-exec"
# The container's main process only keeps it alive. Needs /bin/sh and sleep in the image, like
# every devbox command. It is the entrypoint, so an image's own ENTRYPOINT/CMD (a server, say)
# never runs instead. A sleep killed from inside (`killall sleep`) is just started again; an
# image where sleep cannot run at all ends the container (the devbox fails) instead of
# spinning in the loop.
KEEPALIVE_LOOP = ["/bin/sh", "-c", "while :; do sleep 3600 || sleep 1 || exit 1; done"]
KEEPALIVE = [SECCOMP_EXEC_IN_CONTAINER, "--init", "--", *KEEPALIVE_LOOP]
# Nothing reads the keep-alive's output, and a devbox writing to the keep-alive's stdout must
# not be able to fill the host's disk with a container log.
LOG_CONFIG = {"Type": "none", "Config": {}}
# Untrusted code runs as the image's user, often root, without a user namespace: it keeps
# no capability at all (the firewall lives outside the container anyway, and the
# anti-spoofing rules stay for images that would add raw sockets back), and a fork bomb
# or a memory hog hits the container's own limits, not the host's.
DROPPED_CAPABILITIES = ["ALL"]
API_POOL_SIZE = 64  # hijacked exec connections leave the pool while a command runs
EVENTS_RETRY_SECONDS = (0.5, 5.0)  # first and longest wait before subscribing to events again
REMOVE_RETRY_SECONDS = 5.0  # a container the daemon did not remove is tried again this often
SUID_DUMPABLE = "/proc/sys/fs/suid_dumpable"


@dataclass
class _Container:
    id: str
    name: str
    address: Address
    pid: int = 0  # its init, on the host
    gate: FreezeGate = field(default_factory=FreezeGate)  # command starts vs suspend


# A snapshot's commit copies up to MAX_DISK_BYTES of changed files.
COMMIT_TIMEOUT_SECONDS = 3600.0
# How often to look for the image of a commit a restart cut short (remove_late_disks).
LATE_DISK_POLL_SECONDS = 5.0


def docker_client(timeout: float = 60.0):
    """A client for the daemon of the environment (DOCKER_HOST or the local socket)."""
    import docker

    return docker.from_env(timeout=timeout, max_pool_size=API_POOL_SIZE)


def seccomp_helper_problem() -> str | None:
    """Why the seccomp helper cannot guard containers here (None: it can). It runs inside any
    image, so it must be static; and it must be unreadable (mode 0111) and fs.suid_dumpable
    not 1, or its process is dumpable - ptraceable by the devbox - before its filter is on."""
    path = sandbox.SECCOMP_EXEC  # looked up at each call (tests point it elsewhere)
    try:
        mode = os.stat(path).st_mode
        static = is_static_elf(path)
    except OSError:
        return f"the seccomp helper {path} is missing (scripts/bootstrap.sh builds it, as root)"
    if mode & 0o444 or not static:
        return f"the seccomp helper {path} must be a static binary of mode 0111: run scripts/bootstrap.sh as root"
    try:
        suid_dumpable = Path(SUID_DUMPABLE).read_text().strip()
    except OSError:
        suid_dumpable = "0"
    if suid_dumpable == "1":
        return "fs.suid_dumpable is 1, which keeps an unreadable program's process dumpable (set it to 0 or 2)"
    return None


def docker_problem() -> str | None:
    """Why the Docker runtime cannot run here (None: a local daemon answers)."""
    problem = seccomp_helper_problem()
    if problem:
        return problem
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the docker Python package is not installed"
    try:
        client = docker_client(timeout=3.0)
    except Exception as exc:
        return f"no Docker daemon answers ({exc})"
    try:
        client.ping()
        # Devboxes are plumbed into the container's network namespace by pid: the daemon must
        # share this machine's PID namespace, i.e. be local (a unix socket).
        if not client.api.base_url.startswith("http+docker://local"):
            return f"the Docker daemon at {client.api.base_url} is not local (the docker runtime needs its unix socket)"
    except Exception as exc:
        return f"no Docker daemon answers ({exc})"
    finally:
        client.close()
    return None


class DockerRuntime:
    name = "docker"

    def __init__(self, dataplane: DataPlane, image: str | None = None, client=None):
        """``image``: the devboxes' image (must exist in the daemon: it is never pulled);
        None builds and uses the default busybox image."""
        self.dataplane = dataplane
        self.instance = dataplane.config.instance
        self.client = client or docker_client()
        self.api = self.client.api
        self._devboxes: dict[str, _Container] = {}
        self._lock = threading.Lock()
        self._events = None  # the daemon's event stream, once set_lost_hook() watches it
        self._closing = threading.Event()
        # Containers whose removal failed (the daemon was away or refused), with their image:
        # removed again every REMOVE_RETRY_SECONDS, at each new event subscription and at close.
        self._unremoved: dict[str, str | None] = {}
        self._retry_timer: threading.Timer | None = None
        try:
            removed = self.remove_orphans()
            if removed:
                log.warning("removed %d orphaned devbox containers from a previous run", removed)
            self.image = self._check_image(image)
            # A daemon on a kernel without CFS bandwidth control refuses every --cpus: the
            # devboxes run without a CPU cap there (as a netns devbox with no cpu cgroup).
            info = self.api.info()
            self._cpu_caps = bool(info.get("CpuCfsQuota", True))
            self._daemon_cpus = info.get("NCPU")  # what the daemon checks --cpus against
            if not self._cpu_caps:
                log.warning("the Docker daemon has no CPU quota support (CpuCfsQuota false): devboxes get no CPU cap")
        except BaseException:
            if client is None:
                self.client.close()  # ours; a client passed in stays its owner's
            raise

    def _check_image(self, image: str | None) -> str:
        if image is None:
            return default_image(self.client)
        if not image_exists(self.client, image):
            raise RuntimeFailure(f"image {image!r} is not in the Docker daemon (it is never pulled: docker load/build it first)")
        return image

    def remove_orphans(self) -> int:
        """Remove every container of this instance (after a crash, they are unknown here)."""
        return remove_instance_containers(self.api, self.instance)

    # --- lifecycle ---------------------------------------------------------------------------

    def provision(self, spec: DevboxSpec) -> None:
        image = spec.disk or self.image
        address = self.dataplane.allocate()
        name = f"dbxs-{self.instance}-{spec.id}"
        container_id = None
        try:
            created = self.api.create_container(
                image,
                entrypoint=KEEPALIVE,
                name=name,
                hostname=spec.id.lower().replace("_", "-")[:63],
                working_dir=HOME,
                # The devbox's environment_variables go with each command (exec), not into the
                # container's own config: that config is what a snapshot commits, and the
                # keep-alive loop must not run under a devbox's PATH.
                environment={"HOME": HOME},
                labels={INSTANCE_LABEL: self.instance, DEVBOX_LABEL: spec.id},
                # An image's HEALTHCHECK would be exec'd by the daemon itself, outside the
                # seccomp helper (and nothing here reads container health).
                healthcheck={"test": ["NONE"]},
                host_config=self.api.create_host_config(
                    network_mode="none",
                    cap_drop=DROPPED_CAPABILITIES,
                    security_opt=["no-new-privileges"],
                    binds={sandbox.seccomp_exec(): {"bind": SECCOMP_EXEC_IN_CONTAINER, "mode": "ro"}},
                    pids_limit=PIDS_LIMIT,
                    mem_limit=memory_limit(spec),
                    nano_cpus=round((cpu_limit(spec, self._daemon_cpus) or 0) * 1e9) if self._cpu_caps else 0,  # 0: no cap
                    log_config=LOG_CONFIG,
                    dns=[self.dataplane.gateway],  # resolv.conf -> the data plane's resolver
                ),
            )
            container_id = created["Id"]
            stop_if_cancelled(spec)  # shut down while the container was made: never started
            self.api.start(container_id)
            pid = self.api.inspect_container(container_id)["State"]["Pid"]
            if not pid:
                raise RuntimeFailure(f"container {name} did not start")
            _cap_pseudo_terminals(pid)
            _cap_tcp_memory(pid, memory_limit(spec))
            stop_if_cancelled(spec)  # not plugged in (with a policy that may be gone by now)
            self.dataplane.connect(spec.id, spec.account, spec.policy, address, pid=pid)
        except Exception as exc:
            if container_id is not None:
                self._remove(container_id)
            self.dataplane.release(address)
            raise RuntimeFailure(f"could not provision devbox {spec.id} on Docker: {_explain(exc)}") from exc
        with self._lock:
            self._devboxes[spec.id] = _Container(container_id, name, address, pid)

    def tunnel_socket(self, devbox_id: str) -> tuple[socket.socket, str]:
        return self.dataplane.tunnel_socket(devbox_id)

    def shutdown(self, devbox_id: str) -> None:
        with self._lock:
            container = self._devboxes.pop(devbox_id, None)
        if container is None:
            return
        # Network first (the policy state goes with it), then the container and its processes.
        try:
            self.dataplane.disconnect(devbox_id)
        except Exception:
            log.exception("disconnecting %s", devbox_id)
        self._remove(container.id)
        self.dataplane.release(container.address)

    def set_lost_hook(self, hook: Callable[[str, str], None]) -> None:
        """Call ``hook(devbox_id, detail)`` when a devbox's container exits on its own (its
        keep-alive process killed from inside, or the daemon restarted, say): the API must not
        go on showing it running. Watches the daemon's ``die`` events of this instance's
        containers on a thread; when the stream ends (the daemon went away) it subscribes
        again and checks every container, since deaths meanwhile sent no event to us."""
        threading.Thread(target=self._watch, args=(hook,), name="docker-events", daemon=True).start()

    def _watch(self, hook: Callable[[str, str], None]) -> None:
        delay = EVENTS_RETRY_SECONDS[0]
        while not self._closing.is_set():
            try:
                events = self.client.events(
                    decode=True, filters={"type": "container", "event": "die", "label": f"{INSTANCE_LABEL}={self.instance}"}
                )
            except Exception as exc:
                log.debug("docker events: cannot subscribe (%s)", exc)
                self._closing.wait(delay)
                delay = min(delay * 2, EVENTS_RETRY_SECONDS[1])
                continue
            with self._lock:
                self._events = events
            try:
                if self._closing.is_set():
                    return
                # Subscribed first, then checked: a death is either in the stream or seen here.
                self._check_containers(hook)
                delay = EVENTS_RETRY_SECONDS[0]
                for event in events:
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    devbox_id = attributes.get(DEVBOX_LABEL)
                    with self._lock:
                        ours = devbox_id in self._devboxes  # shutdown() forgets it before removing
                    if ours:
                        _report(hook, devbox_id, f"the devbox's container exited (code {attributes.get('exitCode', '?')})")
            except Exception as exc:  # the stream closed (close()) or the daemon went away
                log.debug("docker events stream ended: %s", exc)
            finally:
                events.close()
            if not self._closing.is_set():
                log.warning("lost the Docker daemon's event stream; watching again")
                self._closing.wait(delay)
                delay = min(delay * 2, EVENTS_RETRY_SECONDS[1])

    def _check_containers(self, hook: Callable[[str, str], None]) -> None:
        """Every devbox whose container is gone or stopped goes to ``hook``; containers whose
        removal failed earlier are removed now. Raises if the daemon does not answer at all;
        one container it cannot tell about is skipped (and checked at the next subscription)."""
        import docker.errors

        self._retry_removals()
        with self._lock:
            devboxes = list(self._devboxes.items())
        for devbox_id, container in devboxes:
            try:
                state = self.api.inspect_container(container.id)["State"]
            except docker.errors.NotFound:
                _report(hook, devbox_id, "the devbox's container is gone")
                continue
            except docker.errors.APIError as exc:
                log.warning("could not check container %s: %s", container.name, _explain(exc))
                continue
            if not state.get("Running"):
                _report(hook, devbox_id, f"the devbox's container exited (code {state.get('ExitCode', '?')})")

    def _retry_removals(self) -> None:
        with self._lock:
            pending = list(self._unremoved.items())
            timer, self._retry_timer = self._retry_timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()  # called from a new subscription: one retry chain at a time
        for container_id, image in pending:
            if remove_container(self.api, container_id):
                with self._lock:
                    self._unremoved.pop(container_id, None)
                if image is not None:
                    self._remove_if_dangling(image)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        with self._lock:
            if not self._unremoved or self._retry_timer is not None or self._closing.is_set():
                return
            timer = self._retry_timer = threading.Timer(REMOVE_RETRY_SECONDS, self._retry_removals)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        """Shut every devbox down and take the data plane with it (devboxes lose egress)."""
        self._closing.set()
        with self._lock:
            events = self._events
        if events is not None:
            events.close()
        for devbox_id in list(self.alive_ids()):
            self.shutdown(devbox_id)
        with self._lock:
            timer, self._retry_timer = self._retry_timer, None
            pending = list(self._unremoved)
        if timer is not None:
            timer.cancel()
        for container_id in pending:
            if not remove_container(self.api, container_id):
                log.warning("container %s could not be removed; the next start removes it", container_id[:12])
        # And any container of this instance not known here: one whose create was cut short
        # (an interrupted provisioning) exists in Docker before it is registered.
        try:
            remove_instance_containers(self.api, self.instance)
        except Exception:
            log.warning("could not remove this instance's unknown containers; the next start does", exc_info=True)
        self.dataplane.stop()
        self.client.close()

    def alive_ids(self) -> set[str]:
        with self._lock:
            return set(self._devboxes)

    # --- processes and files ---------------------------------------------------------------

    def exec(self, devbox_id: str, command: str, *, env=None, cwd=None) -> DockerProcess:
        container = self._get(devbox_id)
        args = [SECCOMP_EXEC_IN_CONTAINER, "--", "/bin/sh", "-c", command]
        try:
            with container.gate.starting():  # a suspend must not freeze a start half-way
                exec_id = self.api.exec_create(
                    container.id, args, stdin=True, stdout=True, stderr=True,
                    environment=dict(env or {}), workdir=_workdir(cwd),
                )["Id"]
                return DockerProcess(self.api, exec_id, args, container_pid=container.pid)
        except (ExecFailed, OSError) as exc:
            raise RuntimeFailure(f"devbox {devbox_id} cannot run commands: {_explain(exc)}") from exc
        except Exception as exc:
            if _is_docker_error(exc):  # e.g. the container is paused or gone: a 4xx, not a 500
                raise RuntimeFailure(f"devbox {devbox_id} cannot run commands: {_explain(exc)}") from exc
            raise

    def read_file(self, devbox_id: str, path: str) -> bytes:
        return docker_files.read_file(self.api, self._get(devbox_id).id, path)

    def write_file(self, devbox_id: str, path: str, data: bytes) -> None:
        docker_files.write_file(self.api, self._get(devbox_id).id, path, data)

    def suspend(self, devbox_id: str) -> None:
        with self._get(devbox_id).gate.freezing():
            self._call(devbox_id, "suspended", self.api.pause)

    def resume(self, devbox_id: str) -> None:
        self._call(devbox_id, "resumed", self.api.unpause)

    def snapshot_disk(self, devbox_id: str, snapshot_id: str) -> str:
        """``docker commit`` the container's files into ``devbox-sim/snapshot:<snapshot id>``.

        At most ``MAX_DISK_BYTES`` of changed files, as on netns, counted at their apparent
        size: a commit does not keep a sparse file's holes, so ``truncate -s 1T`` would
        otherwise become a terabyte on the host's disk."""
        tag = snapshot_id.replace("/", "-")

        def commit(container_id: str) -> None:
            url = self.api._url("/containers/{0}/json", container_id)
            changed = self.api._result(self.api._get(url, params={"size": 1}), True).get("SizeRw") or 0
            if changed > MAX_DISK_BYTES:
                raise RuntimeFailure(
                    f"could not snapshot the disk of devbox {devbox_id}: its changed files take {changed} bytes, "
                    f"more than the {MAX_DISK_BYTES} a disk may hold (sparse files count in full on Docker)"
                )
            # A commit of up to MAX_DISK_BYTES may take longer than the client's 60 s timeout.
            # Not paused: the devbox runs on while its files are copied, as netns copies them
            # live; a paused commit froze every command for as long as the copy took, and one
            # that overlapped a command's start left the container paused for good (FreezeGate).
            params = {"container": container_id, "repo": SNAPSHOT_REPOSITORY, "tag": tag, "pause": False}
            self.api._result(self.api._post_json(self.api._url("/commit"), data={}, params=params,
                                                 timeout=COMMIT_TIMEOUT_SECONDS), True)

        self._call(devbox_id, "snapshotted", commit)
        return f"{SNAPSHOT_REPOSITORY}:{tag}"

    def disk_size(self, disk: str) -> int | None:
        """The committed image's ``Size`` (``docker image inspect``): the whole file system a
        devbox created from the snapshot starts with, base image included."""
        _check_disk(disk)
        size = self.api.inspect_image(disk).get("Size")
        return int(size) if size is not None else None

    def delete_disk(self, disk: str) -> None:
        _check_disk(disk)
        import docker.errors

        try:
            self.api.remove_image(disk, force=True)
        except docker.errors.NotFound:
            pass

    def remove_unreferenced_disks(self, referenced: set[str]) -> list[str]:
        """Untag every ``devbox-sim/snapshot:*`` image of this instance not referenced (a
        commit keeps the container's labels, so snapshot and blueprint images carry
        ``devbox-sim.instance``); docker drops the layers nothing else uses."""
        images = self.api.images(name=SNAPSHOT_REPOSITORY, filters={"label": f"{INSTANCE_LABEL}={self.instance}"})
        tags = {tag for image in images for tag in image.get("RepoTags") or () if tag.startswith(SNAPSHOT_REPOSITORY + ":")}
        removed = sorted(tags - referenced)
        for tag in removed:
            self.delete_disk(tag)
        self._remove_dangling_images()  # a crash came before a devbox's image could go
        return removed

    def remove_late_disks(self, snapshot_ids: list[str]) -> None:
        """Snapshots a restart cut short (the store has failed them): the daemon finishes a
        commit begun before the crash on its own, and tags its image after the start-up sweep
        (a 1.5 GB commit landed 20 s into the new run, and stayed). A thread watches for their
        tags as long as a commit may last, and removes each one that appears."""
        tags = {f"{SNAPSHOT_REPOSITORY}:{snapshot_id.replace('/', '-')}" for snapshot_id in snapshot_ids}
        if tags:
            threading.Thread(target=self._remove_late, args=(tags,), name="docker-late-disks", daemon=True).start()

    def _remove_late(self, tags: set[str]) -> None:
        deadline = time.monotonic() + COMMIT_TIMEOUT_SECONDS
        while tags and time.monotonic() < deadline:
            for tag in sorted(tags):
                try:
                    if self.api.images(name=tag):
                        self.delete_disk(tag)
                        log.warning("removed %s: its commit, cut short by the restart, ended only now", tag)
                        tags.discard(tag)
                except Exception as exc:  # noqa: BLE001 - the daemon away for a while: look again later
                    log.debug("looking for %s: %s", tag, exc)
            if self._closing.wait(LATE_DISK_POLL_SECONDS):
                return

    # --- for tests and tools ----------------------------------------------------------------

    def container_pid(self, devbox_id: str) -> int:
        """The host pid of the container's init: its network namespace is ``/proc/<pid>/ns/net``."""
        return int(self.api.inspect_container(self._get(devbox_id).id)["State"]["Pid"])

    def container_name(self, devbox_id: str) -> str:
        return self._get(devbox_id).name

    # --- helpers ---------------------------------------------------------------------------

    def _get(self, devbox_id: str) -> _Container:
        with self._lock:
            container = self._devboxes.get(devbox_id)
        if container is None:
            raise RuntimeFailure(f"devbox {devbox_id} is not running on this runtime")
        return container

    def _call(self, devbox_id: str, what: str, fn) -> None:
        container = self._get(devbox_id)
        try:
            fn(container.id)
        except Exception as exc:
            if _is_docker_error(exc):
                raise RuntimeFailure(f"devbox {devbox_id} cannot be {what}: {_explain(exc)}") from exc
            raise

    def _remove(self, container_id: str) -> None:
        try:
            image = self.api.inspect_container(container_id)["Image"]
        except Exception:  # gone already, or the daemon is unwell: nothing to tidy
            image = None
        if not remove_container(self.api, container_id):
            with self._lock:
                self._unremoved[container_id] = image  # tried again (see _retry_removals)
            self._schedule_retry()
        elif image is not None:
            self._remove_if_dangling(image)

    def _remove_if_dangling(self, image: str) -> None:
        """A snapshot or blueprint deleted while devboxes ran from it loses its tag, but its
        image stays while a container uses it. When such a devbox ends, the image goes once no
        container uses it (not forced: a daemon refusal means another devbox still does).
        Only this instance's untagged images; a failure here never fails the shutdown."""
        try:
            info = self.api.inspect_image(image)
            tags = [tag for tag in info.get("RepoTags") or () if tag != "<none>:<none>"]
            labels = (info.get("Config") or {}).get("Labels") or {}
            if not tags and labels.get(INSTANCE_LABEL) == self.instance:
                self.api.remove_image(image)
        except Exception as exc:  # in use, gone, or the daemon is unwell
            log.debug("image %s stays: %s", image[:19], exc)

    def _remove_dangling_images(self) -> None:
        """At start: this instance's untagged images no container uses (a crash came before
        the last devbox of a deleted snapshot could remove it)."""
        try:
            images = self.api.images(filters={"dangling": True, "label": f"{INSTANCE_LABEL}={self.instance}"})
        except Exception:
            log.warning("could not list untagged images of this instance", exc_info=True)
            return
        for image in images:
            self._remove_if_dangling(image["Id"])


# Run in a fresh single-threaded interpreter (setns into a mount namespace is refused to a
# multithreaded process such as the simulator): remount the container's devpts with a cap.
_REMOUNT_PTS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY)
if libc.setns(fd, 0x00020000) != 0 or libc.mount(None, b"/dev/pts", None, 32 | 2 | 8, sys.argv[2].encode()) != 0:
    sys.exit(os.strerror(ctypes.get_errno()))
"""


def _cap_tcp_memory(pid: int, limit: int) -> None:
    """The container's TCP buffers count against its memory cap: cgroup v1 leaves them out
    (the daemon ignores KernelMemoryTCP on this path), see netns.cgroup_limits."""
    if not cgroup_limits.cap_tcp_memory_of(pid, limit):
        log.warning("could not cap a container's TCP buffer memory (cgroup v1 memory.kmem.tcp): "
                    "its unread connections are not charged to it")


def _cap_pseudo_terminals(pid: int) -> None:
    """Docker gives each container its own devpts, but with no cap: one devbox could take the
    pseudo-terminals of every other. Remount it with the netns runtime's cap (options as
    docker sets them: a remount resets those not given)."""
    options = f"gid=5,mode=620,ptmxmode=666,max={PTY_MAX}"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _REMOUNT_PTS, str(pid), options],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeFailure(f"could not cap the container's pseudo-terminals: {done.stderr.strip()[-200:]}")


def _report(hook: Callable[[str, str], None], devbox_id: str, detail: str) -> None:
    """One devbox's death to the hook; a failing hook must not stop the watching."""
    try:
        hook(devbox_id, detail)
    except Exception:
        log.exception("handling the end of devbox %s failed", devbox_id)


def remove_container(api, container_id: str) -> bool:
    """Force-remove a container (and its anonymous volumes); gone already is fine. False if
    the daemon refused or did not answer (logged)."""
    import docker.errors

    try:
        api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            log.warning("could not remove container %s: %s", container_id[:12], _explain(exc))
            return False
    except Exception as exc:  # the daemon is away (connection refused, timeout)
        if not _is_docker_error(exc):
            raise
        log.warning("could not remove container %s: %s", container_id[:12], exc)
        return False
    return True


def remove_instance_containers(api, instance: str) -> int:
    """Remove every devbox container of a simulator instance (its data dir); how many."""
    orphans = api.containers(all=True, quiet=True, filters={"label": f"{INSTANCE_LABEL}={instance}"})
    for container in orphans:
        remove_container(api, container["Id"])
    return len(orphans)


def _workdir(cwd: str | None) -> str:
    """A command's directory as docker needs it (absolute): ``~`` and relative paths are the
    home's, as on the netns runtime (``Sandbox.devbox_cwd``)."""
    if not cwd or cwd == "~":
        return HOME
    if cwd.startswith("~/"):
        cwd = HOME + cwd[1:]
    return posixpath.normpath(posixpath.join(HOME, cwd))


def _check_disk(disk: str) -> None:
    if not disk.startswith(SNAPSHOT_REPOSITORY + ":"):
        raise ValueError(f"{disk!r} is not a disk snapshot of this runtime")


def _is_docker_error(exc: BaseException) -> bool:
    import docker.errors
    import requests

    return isinstance(exc, (docker.errors.DockerException, requests.RequestException))


def _explain(exc: BaseException) -> str:
    """Docker's words for an error, for an API client: no host paths, no daemon URLs."""
    import docker.errors
    import requests

    if isinstance(exc, docker.errors.APIError):
        if exc.status_code == 409 and not exc.explanation:
            return "its container is not running"
        if exc.explanation:
            return docker_files.docker_message(exc)
        return f"the Docker daemon answered {exc.status_code}"
    if isinstance(exc, requests.RequestException):
        return "the Docker daemon does not answer"
    return docker_files.docker_message(exc)
