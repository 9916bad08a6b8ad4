"""Devbox runtimes: where a devbox's processes and files live (network namespaces, Docker).

Both runtimes share one data plane (``simulator.dataplane``): addressing, anti-spoofing,
nftables and the resolver do not depend on the runtime.
"""
