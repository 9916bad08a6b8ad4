"""Wire models for devboxes and executions, as the Runloop SDK (3.0.0) sends and reads them.

Requests ignore unknown fields, but for a network policy given where it would be ignored
(the devbox would run unrestricted). Fields the simulator does not implement yet (mounts, secrets,
gateways...) are accepted loosely and ignored; ``launch_parameters`` is echoed back.
Responses mirror ``runloop_api_client.types``: every field the SDK requires is always present.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from simulator.api.schemas import ErrorBody


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _a_number(value: float) -> float:
    if value != value:  # NaN (JSON allows it here): no hold can be computed from it
        raise ValueError("must be a number of seconds, not NaN")
    return value


# The SDK sends floats such as 29.97 for timeouts; Infinity is a long hold (capped), NaN a 400.
Seconds = Annotated[StrictInt | StrictFloat, AfterValidator(_a_number)]


class _Echoed(BaseModel):
    # Unknown keys are kept: launch_parameters is echoed back as given.
    model_config = ConfigDict(extra="allow")


class AfterIdleParam(_Echoed):
    """What a running devbox does after ``idle_time_seconds`` without activity (simulator.idle_policy)."""

    idle_time_seconds: StrictInt = Field(ge=1, le=31_536_000)
    on_idle: Literal["shutdown", "suspend"]


class ResumeTriggersParam(_Echoed):
    http: StrictBool | None = None  # HTTP through the tunnel resumes a suspended devbox
    axon_event: StrictBool | None = None  # stored only: there are no axons here


class LifecycleHooksParam(_Echoed):
    suspend_commands: list[StrictStr] | None = None
    suspend_deadline_ms: StrictInt | None = Field(default=None, ge=1, le=60_000)


class LifecycleParam(_Echoed):
    after_idle: AfterIdleParam | None = None
    resume_triggers: ResumeTriggersParam | None = None
    lifecycle_hooks: LifecycleHooksParam | None = None


_POLICY_SHORTHANDS = frozenset({"policy", "policyid", "policyids", "npol", "npolid"})


def looks_like_the_policy_field(key: str) -> bool:
    """A key meant as ``network_policy_id`` (``networkPolicyId``, ``policy_id``,
    ``network_plicy_id``...): ignored like other unknown keys, it would leave the devbox with
    no policy, that is unrestricted egress, with nothing to tell the mistake. Other keys that
    merely mention a policy (``restart_policy``, ``pull_policy``) are not it."""
    if key == "network_policy_id":
        return False
    letters = re.sub(r"[^a-z]", "", key.lower())
    return letters in _POLICY_SHORTHANDS or difflib.SequenceMatcher(None, letters, "networkpolicyid").ratio() >= 0.8


class LaunchParametersParam(_Echoed):
    network_policy_id: StrictStr | None = None
    launch_commands: list[StrictStr] | None = None
    keep_alive_time_seconds: StrictInt | None = Field(default=None, ge=1, le=172800)
    resource_size_request: Literal["X_SMALL", "SMALL", "MEDIUM", "LARGE", "X_LARGE", "XX_LARGE", "CUSTOM_SIZE"] | None = None
    custom_cpu_cores: StrictInt | StrictFloat | None = None
    custom_gb_memory: StrictInt | None = None
    custom_disk_size: StrictInt | None = None
    architecture: Literal["x86_64", "arm64"] | None = None
    available_ports: list[StrictInt] | None = None
    required_services: list[StrictStr] | None = None
    provisioning_tier: Literal["standard", "flex"] | None = None
    after_idle: AfterIdleParam | None = None
    lifecycle: LifecycleParam | None = None
    user_parameters: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _custom_size(self):
        """The SDK's documented limits: CPU 0.5, 1 or a multiple of 2 up to 16; memory 1 or a
        multiple of 2 up to 64 GiB; disk a multiple of 2 from 2 to 64 GiB; cpu:memory from 1:2
        to 1:8. CPU and memory are needed with CUSTOM_SIZE, and only then."""
        cpu, memory, disk = self.custom_cpu_cores, self.custom_gb_memory, self.custom_disk_size
        if self.resource_size_request != "CUSTOM_SIZE":
            if (cpu, memory, disk) != (None, None, None):
                raise ValueError("custom_cpu_cores, custom_gb_memory and custom_disk_size need resource_size_request CUSTOM_SIZE")
            return self
        if cpu is None or memory is None:
            raise ValueError("resource_size_request CUSTOM_SIZE needs custom_cpu_cores and custom_gb_memory")
        if cpu not in (0.5, 1, 2, 4, 6, 8, 10, 12, 14, 16):  # (a membership test: inf and NaN fail it too)
            raise ValueError(f"custom_cpu_cores must be 0.5, 1 or a multiple of 2 up to 16, not {cpu}")
        if not (memory == 1 or (memory % 2 == 0 and 2 <= memory <= 64)):
            raise ValueError(f"custom_gb_memory must be 1 or a multiple of 2 up to 64, not {memory}")
        if disk is not None and not (disk % 2 == 0 and 2 <= disk <= 64):
            raise ValueError(f"custom_disk_size must be a multiple of 2 from 2 to 64, not {disk}")
        if not 2 * cpu <= memory <= 8 * cpu:
            raise ValueError(f"custom_gb_memory must be 2 to 8 times custom_cpu_cores ({memory} GiB for {cpu} CPUs)")
        return self

    @model_validator(mode="after")
    def _no_misspelt_policy(self):
        for key in self.model_extra or {}:
            if looks_like_the_policy_field(key):
                raise ValueError(f"{key!r} is not a launch parameter: did you mean 'network_policy_id'? (an unknown "
                                 "key is ignored, and a devbox without a policy has unrestricted egress)")
        return self

    @model_validator(mode="after")
    def _one_idle_policy(self):
        inner = self.lifecycle.after_idle if self.lifecycle is not None else None
        if self.after_idle is not None and inner is not None and \
                (self.after_idle.idle_time_seconds, self.after_idle.on_idle) != (inner.idle_time_seconds, inner.on_idle):
            raise ValueError("after_idle and lifecycle.after_idle must have the same value when both are set")
        return self


class TunnelParams(_Request):
    """``enable_tunnel``'s body, and ``tunnel`` on create. Omitted: open, keep-alive, no wake."""

    auth_mode: Literal["open", "authenticated"] | None = None
    http_keep_alive: StrictBool | None = None
    wake_on_http: StrictBool | None = None


class DevboxResourceUsageView(BaseModel):
    id: str
    status: str
    start_time_ms: int
    end_time_ms: int | None = None
    total_elapsed_seconds: int
    total_active_seconds: int
    vcpu_seconds: int
    memory_gb_seconds: int
    disk_gb_seconds: int


class TunnelView(BaseModel):
    tunnel_key: str
    auth_mode: Literal["open", "authenticated"]
    create_time_ms: int
    http_keep_alive: bool
    wake_on_http: bool
    auth_token: str | None = None


class DevboxCreateParams(_Request):
    @model_validator(mode="before")
    @classmethod
    def _policy_in_launch_parameters(cls, data: Any) -> Any:
        """A devbox's policy goes in launch_parameters (a blueprint's top-level
        network_policy_id is its build's): one given here would be ignored, unrestricted."""
        if isinstance(data, dict):
            for key in data:
                if key == "network_policy_id" or looks_like_the_policy_field(key):
                    raise ValueError(f"{key!r} is not a devbox field: a devbox's network policy goes in "
                                     "launch_parameters.network_policy_id (ignored here, it would leave the "
                                     "devbox unrestricted)")
        return data

    name: StrictStr | None = None
    blueprint_id: StrictStr | None = None
    blueprint_name: StrictStr | None = None
    snapshot_id: StrictStr | None = None
    launch_parameters: LaunchParametersParam | None = None
    environment_variables: dict[str, StrictStr] | None = None
    metadata: dict[str, StrictStr] | None = None
    # {path: content}, paths as the file endpoints take them: written before launch_commands.
    file_mounts: dict[str, StrictStr] | None = None
    # The devbox's main process, started once it runs; its end shuts the devbox down.
    entrypoint: StrictStr | None = None
    # Refused when not empty (400 not_supported: nothing here to mount or to read secrets from):
    code_mounts: list[dict[str, Any]] | None = None
    mounts: list[dict[str, Any]] | None = None
    secrets: dict[str, StrictStr] | None = None
    # Accepted and ignored (no gateways here; a policy's allow_*_gateway flags are shown):
    gateways: dict[str, dict[str, Any]] | None = None
    mcp: dict[str, dict[str, Any]] | None = None
    tunnel: TunnelParams | None = None  # a tunnel from the start (see enable_tunnel)


class DevboxUpdateParams(_Request):
    name: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None


class DevboxWaitForStatusParams(_Request):
    statuses: list[StrictStr]
    timeout_seconds: Seconds | None = Field(default=None, description="Hold at most this long (default 10, at most 30)")


class ExecuteAsyncParams(_Request):
    command: StrictStr
    attach_stdin: StrictBool | None = Field(default=None, description="Keep stdin open for send_std_in")
    shell_name: StrictStr | None = None  # 1.29 SDKs; ignored


class SendStdInParams(_Request):
    text: StrictStr | None = Field(default=None, description="Non-empty text to write to the command's stdin")
    signal: Literal["EOF", "INTERRUPT"] | None = Field(
        default=None, description="EOF closes stdin; INTERRUPT sends SIGINT to the command's process group"
    )


class SendStdInResult(BaseModel):
    devbox_id: str
    execution_id: str
    success: bool


class ExecutionUpdateChunk(BaseModel):
    """One SSE event's data: text and the byte offset just after it (resume from there)."""

    output: str
    offset: int


class DevboxLogView(BaseModel):
    level: str
    source: str
    timestamp_ms: int
    cmd: str | None = None
    cmd_id: str | None = None
    exit_code: int | None = None
    message: str | None = None


class DevboxLogsListView(BaseModel):
    logs: list[DevboxLogView]


class ReadFileContentsParams(_Request):
    file_path: StrictStr = Field(description="Home-relative, ~/..., or absolute path")


class WriteFileContentsParams(_Request):
    file_path: StrictStr = Field(description="Home-relative, ~/..., or absolute path")
    contents: StrictStr = Field(description="UTF-8 text; the file is created or replaced")


class DownloadFileParams(_Request):
    path: StrictStr = Field(description="Home-relative, ~/..., or absolute path")


class ExecuteParams(_Request):
    command: StrictStr
    command_id: StrictStr = Field(description="Idempotency key (UUIDv7): a repeat returns the same execution")
    optimistic_timeout: Seconds | None = Field(default=None, description="Hold at most this long (default and max 25)")
    shell_name: StrictStr | None = None


class ExecutionWaitForStatusParams(_Request):
    statuses: list[StrictStr]
    timeout_seconds: Seconds | None = Field(default=None, description="Hold at most this long (default and max 25)")


class ExecutionKillParams(_Request):
    kill_process_group: StrictBool | None = None  # the whole group is always killed


class StateTransitionView(BaseModel):
    status: str
    transition_time_ms: int
    failure_reason: str | None = None


class DevboxView(BaseModel):
    id: str
    status: str
    create_time_ms: int
    launch_parameters: dict[str, Any]
    metadata: dict[str, str]
    state_transitions: list[StateTransitionView]
    capabilities: list[str]
    name: str | None = None
    end_time_ms: int | None = None
    blueprint_id: str | None = None
    snapshot_id: str | None = None
    failure_reason: str | None = None
    shutdown_reason: str | None = None
    initiator_type: str | None = None
    tunnel: TunnelView | None = None


class DevboxListView(BaseModel):
    devboxes: list[DevboxView]
    has_more: bool
    total_count: int | None = None


class AsyncExecutionView(BaseModel):
    devbox_id: str
    execution_id: str
    status: Literal["queued", "running", "completed"]
    exit_status: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    stdout_truncated: bool | None = None
    stderr_truncated: bool | None = None


class SyncExecutionView(BaseModel):
    devbox_id: str
    exit_status: int
    stdout: str
    stderr: str


NO_RUNTIME = {503: {"model": ErrorBody, "description": "The simulator runs without a devbox runtime"}}
LONG_POLL_TIMEOUT = {408: {"model": ErrorBody, "description": "Not there yet within the hold; ask again (x-should-retry: true)"}}
