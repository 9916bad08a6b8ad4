"""Settings: command-line flags, with environment variables (DEVBOX_SIM_*) as defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8484


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("data")
    api_keys: Path | None = None
    max_policies_per_account: int = 100
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls()
        settings.host = env.get("DEVBOX_SIM_HOST", settings.host)
        settings.port = int(env.get("DEVBOX_SIM_PORT", settings.port))
        settings.data_dir = Path(env.get("DEVBOX_SIM_DATA_DIR", settings.data_dir))
        if env.get("DEVBOX_SIM_API_KEYS"):
            settings.api_keys = Path(env["DEVBOX_SIM_API_KEYS"])
        settings.max_policies_per_account = int(
            env.get("DEVBOX_SIM_MAX_POLICIES", settings.max_policies_per_account)
        )
        settings.log_level = env.get("DEVBOX_SIM_LOG_LEVEL", settings.log_level)
        return settings

    @property
    def database_path(self) -> Path:
        return self.data_dir / "devbox-sim.sqlite3"
