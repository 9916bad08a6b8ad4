"""devbox-sim: an offline simulator of Runloop's Network Policies API with real enforcement.

Layers (moto-like): ``api/`` parses and serialises HTTP only; one service method per API action
(``network_policies.NetworkPolicyService.create_network_policy`` ...); domain errors
(``errors.ApiError``) carry a status, a code and a message and are translated to HTTP once,
in ``api/errors.py``. State lives in SQLite (``db.py``).
"""
