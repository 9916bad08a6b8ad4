"""Docker images built offline, never pulled: the default devbox image is a root file system
made from the host's static busybox (shell, nslookup, wget, nc, ...), plus the host's curl with
the libraries it links and the CA bundle when the host has them (agents and the examples
expect curl), ``docker import``-ed.

The tag carries a hash of what went in, so the image is built once per busybox/curl version
and reused afterwards (also across simulator instances); building takes about a second.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

DEFAULT_REPOSITORY = "devbox-sim/base"
SNAPSHOT_REPOSITORY = "devbox-sim/snapshot"
HOME = "/home/user"
# Bump when the root's layout changes: a new tag, so an old image is never reused by mistake.
LAYOUT_VERSION = "2"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
HOST_EXTRAS = ("/usr/bin/curl",)  # copied with their libraries when the host has them
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # for curl https through the host uplink
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What every devbox image gets at import: PATH (busybox's applets), the home as HOME and WORKDIR.
IMPORT_CHANGES = (f"ENV PATH={PATH}", f"ENV HOME={HOME}", f"WORKDIR {HOME}", 'CMD ["/bin/sh"]')


class ImageError(RuntimeError):
    pass


def is_static_elf(path: str) -> bool:
    """True for an ELF executable without a PT_INTERP header (needs no libraries at all)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only: every host we support
            return False
        endian = "<" if head[5] == 1 else ">"
        phoff, = struct.unpack_from(endian + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            if struct.unpack(endian + "I", f.read(4))[0] == 3:  # PT_INTERP
                return False
    return True


def find_static_busybox() -> str:
    for candidate in BUSYBOX_CANDIDATES:
        if os.path.isfile(candidate) and is_static_elf(candidate):
            return candidate
    raise ImageError(
        "the default devbox image needs a static busybox (apt-get install busybox-static), "
        "or pass --image with an image of your own"
    )


def busybox_root(dest: Path, busybox: str) -> None:
    """A minimal root in ``dest``: busybox and its applet links, /etc/passwd, /tmp, the home."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home/user", "tmp", "var/tmp", "proc", "sys", "dev"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    (dest / "var/tmp").chmod(0o1777)
    target = dest / "bin/busybox"
    target.write_bytes(Path(busybox).read_bytes())
    target.chmod(0o755)
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = dest / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")


_LDD_PATH = re.compile(r"(/\S+)")


def libraries(binaries) -> set[str]:
    """Every shared library (and the loader) ``ldd`` names for these binaries."""
    found: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in out.splitlines():
            match = _LDD_PATH.search(line.split("=>")[-1])
            if match and os.path.exists(match.group(1)):
                found.add(match.group(1))
    return found


def copy_in(src: str, root: Path, as_path: str | None = None) -> None:
    """Copy a host file's content into the root, at its own path or ``as_path``."""
    dest = root / (as_path or src).lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():
        # A busybox applet link points at /bin/busybox, absolute: writing through it would
        # overwrite the HOST's busybox. Replace the link itself.
        dest.unlink()
    shutil.copy2(os.path.realpath(src), dest)


def add_host_binaries(root: Path, binaries) -> None:
    """Host binaries with the libraries they link, at the same paths (same loader, same libc)."""
    for binary in binaries:
        copy_in(binary, root)
    for library in libraries(binaries):
        copy_in(library, root)


def host_extras() -> list[str]:
    return [path for path in (*HOST_EXTRAS, CA_BUNDLE) if os.path.isfile(path)]


def tar_of(root: Path) -> bytes:
    """The root as an uncompressed tar, every entry owned by root (the builder's uid leaks not)."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name, filter=as_root)
    return buffer.getvalue()


def image_exists(client, reference: str) -> bool:
    import docker.errors

    try:
        client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def import_root(client, root: Path, repository: str, tag: str, changes=IMPORT_CHANGES) -> str:
    """``docker import`` a root directory; returns ``repository:tag``."""
    client.api.import_image_from_data(tar_of(root), repository=repository, tag=tag, changes=list(changes))
    reference = f"{repository}:{tag}"
    if not image_exists(client, reference):
        raise ImageError(f"docker import did not produce {reference}")
    return reference


def default_image(client) -> str:
    """The default image's reference, built now (offline) if this daemon lacks it."""
    busybox = find_static_busybox()
    extras = host_extras()
    digest = hashlib.sha256(
        b"".join(Path(p).read_bytes() for p in (busybox, *extras)) + LAYOUT_VERSION.encode()
    ).hexdigest()[:12]
    reference = f"{DEFAULT_REPOSITORY}:{digest}"
    if image_exists(client, reference):
        return reference
    with tempfile.TemporaryDirectory(prefix="devbox-sim-image-") as build:
        base_root(Path(build), busybox, extras)
        return import_root(client, Path(build), DEFAULT_REPOSITORY, digest)


def base_root(root: Path, busybox: str, extras) -> None:
    """The default image's root: busybox, then the host extras (curl, CA bundle) over it."""
    busybox_root(root, busybox)
    binaries = [p for p in extras if p != CA_BUNDLE]
    add_host_binaries(root, binaries)
    if CA_BUNDLE in extras:
        copy_in(CA_BUNDLE, root)
