"""The devbox and execution domain model: plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StateTransition:
    status: str
    transition_time_ms: int
    failure_reason: str | None = None  # free text here (the view's top-level one is an enum)

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "transition_time_ms": self.transition_time_ms,
            "failure_reason": self.failure_reason,
        }


@dataclass(frozen=True)
class Tunnel:
    """A devbox's HTTP tunnel: ``{port}-{tunnel_key}.tunnel.<host>`` reaches ``port`` in it."""

    tunnel_key: str
    auth_mode: str  # open|authenticated
    create_time_ms: int
    http_keep_alive: bool = True  # requests count as activity (keep-alive timer)
    wake_on_http: bool = False  # a request to a suspended devbox resumes it
    auth_token: str | None = None  # authenticated only: X-Runloop-Tunnel-Authorization: Bearer <it>

    def to_json(self) -> dict:
        return {
            "tunnel_key": self.tunnel_key,
            "auth_mode": self.auth_mode,
            "create_time_ms": self.create_time_ms,
            "http_keep_alive": self.http_keep_alive,
            "wake_on_http": self.wake_on_http,
            "auth_token": self.auth_token,
        }


@dataclass(frozen=True)
class Devbox:
    id: str
    account: str
    status: str
    create_time_ms: int
    launch_parameters: dict[str, Any] = field(default_factory=dict)  # echoed as given
    metadata: dict[str, str] = field(default_factory=dict)
    environment_variables: dict[str, str] = field(default_factory=dict)
    state_transitions: tuple[StateTransition, ...] = ()
    name: str | None = None
    end_time_ms: int | None = None
    failure_reason: str | None = None  # out_of_memory|out_of_disk|execution_failed|health_check_failed
    shutdown_reason: str | None = None  # api_shutdown|keep_alive_timeout|entrypoint_exit|idle|ttl_expired
    blueprint_id: str | None = None
    snapshot_id: str | None = None
    tunnel: Tunnel | None = None

    @property
    def network_policy_id(self) -> str | None:
        return self.launch_parameters.get("network_policy_id")

    @property
    def launch_commands(self) -> list[str]:
        return list(self.launch_parameters.get("launch_commands") or [])


@dataclass(frozen=True)
class Execution:
    id: str
    account: str
    devbox_id: str
    command: str
    status: str  # queued|running|completed
    create_time_ms: int
    command_id: str | None = None
    exit_status: int | None = None
    stdout: str | None = None  # None until completed, then always a string
    stderr: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    end_time_ms: int | None = None
