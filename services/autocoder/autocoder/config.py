"""AutoCoder's own settings, beside the shared ones.

The shared `wacoder.settings.Settings` carries what every service reads (host, port, API key,
LLM). What only this server needs lives here, read from the same environment / `.env`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

VERSION = "0.1.0"


class AutoCoderConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AUTOCODER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Projects, the index (snapshot + journal) and the signing key live here (relative to the cwd).
    data_dir: Path = Path(".run/autocoder")
    # Base of download URLs as clients reach us (behind a proxy or ingress); unset: http://host:port.
    public_url: str | None = None
    # HMAC key for download URLs; unset: a random key persisted in the data dir.
    signing_key: SecretStr | None = None
    url_ttl_s: int = 3600
    # "auto": the agents prompt the LLM when OPENAI_API_KEY is set; "builtin": never (the
    # built-in generators), e.g. when the key is meant for the conversation agent only.
    llm: Literal["auto", "builtin"] = "auto"
    # The tester agent's sandbox (docs/adr/0005-sandbox.md). "auto": the bubblewrap jail when
    # it works here; without it development runs tests unjailed (with a warning) and production
    # refuses to run them. "bwrap": the jail or no test run. "none": never the jail.
    sandbox: Literal["auto", "bwrap", "none"] = "auto"
    # Limits of one pytest run: wall clock (then the whole jail is killed; also the CPU seconds
    # per process), address space per process, processes and threads in the jail, the largest
    # file, and the size of each writable tmpfs in the jail (/project, /tmp).
    test_timeout_s: float = 60.0
    test_memory_mb: int = 2048
    test_max_processes: int = 128
    test_file_size_mb: int = 64
    test_disk_mb: int = 256
    # The journal is folded into the index snapshot at start and once it has this many records.
    journal_max_records: int = 10_000
    # Idempotency keys of create_project / execute_coding_task: how long, and how many at most.
    idempotency_ttl_s: float = 24 * 3600
    idempotency_max_keys: int = 20_000
    # Seconds uvicorn waits for open streams (MCP SSE) before it closes them on shutdown.
    shutdown_grace_s: float = 3.0
