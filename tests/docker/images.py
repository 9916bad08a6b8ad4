"""A test image with /usr/bin/python3 (for tests/dataplane/probe.py), built offline: the
default image's root (busybox, curl) plus the host's own /usr/bin/python3 and its standard
library, GNU date and dash, with the shared libraries ``ldd`` names. Nothing is pulled; the
host already has all of it (bootstrap installs python3 and curl). Tagged by a hash of its
inputs, so it is built once per machine (~4 s) and then reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from simulator.runtime.docker_image import (
    add_host_binaries,
    base_root,
    copy_in,
    find_static_busybox,
    host_extras,
    image_exists,
    import_root,
)

REPOSITORY = "devbox-sim/test-python"
LAYOUT_VERSION = "5"
PYTHON = "/usr/bin/python3"
TOOLS = ("/usr/bin/date",)  # GNU date: the SDK tests print %N, which busybox's lacks
HOST_SH = "/bin/sh"
SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "dist-packages"}


def _python_facts() -> dict:
    code = "import json, sys, sysconfig; print(json.dumps({'stdlib': sysconfig.get_paths()['stdlib'], 'version': sys.version}))"
    return json.loads(subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout)


def python_image(client) -> str:
    facts = _python_facts()
    busybox = find_static_busybox()
    extras = host_extras()
    python_bin = os.path.realpath(PYTHON)
    inputs = (busybox, *extras, python_bin, *TOOLS, HOST_SH)
    digest = hashlib.sha256(
        b"".join(Path(p).read_bytes() for p in inputs) + json.dumps(facts).encode() + LAYOUT_VERSION.encode()
    ).hexdigest()[:12]
    if image_exists(client, f"{REPOSITORY}:{digest}"):
        return f"{REPOSITORY}:{digest}"
    stdlib = Path(facts["stdlib"])
    with tempfile.TemporaryDirectory(prefix="devbox-sim-test-image-") as build:
        root = Path(build)
        base_root(root, busybox, extras)
        shutil.copytree(stdlib, root / str(stdlib).lstrip("/"), symlinks=True,
                        ignore=lambda d, names: [n for n in names if Path(d) == stdlib and n in SKIP_STDLIB])
        dynload = [str(p) for p in (stdlib / "lib-dynload").glob("*.so")]
        add_host_binaries(root, [python_bin, *TOOLS, HOST_SH, *dynload])
        python = root / PYTHON.lstrip("/")
        if not python.exists():
            python.symlink_to(Path(python_bin).name)
        # The host's /bin/sh (dash) as the shell: busybox's sh prefers its own applets over
        # PATH, so it would run busybox date instead of GNU date.
        copy_in(HOST_SH, root, as_path="/bin/sh")
        return import_root(client, root, REPOSITORY, digest)
