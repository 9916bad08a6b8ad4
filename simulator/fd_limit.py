"""The simulator's own limit on open files, raised to what the system allows.

Every running command holds pipes (stdout, stderr, stdin), every devbox a few descriptors,
every client connection a socket: with the soft limit a login shell usually gives (1024),
`make run` would run out of descriptors at a few hundred commands, far below the per-account
cap on running commands, and then fail new connections to the API for every account. Only
the soft limit is raised (to the hard one, bounded); the hard limit is the administrator's.
Nothing in the simulator may use ``select.select`` for that reason: it cannot watch a
descriptor of 1024 or more.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Enough for every running command of several accounts at their cap; a bound because some
# systems have an unlimited (or huge) hard limit, and libraries may size tables by it.
WANTED = 1 << 20


def raise_open_file_limit(wanted: int = WANTED) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit, never
    lower than it is); return the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open: keep what we have
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft
