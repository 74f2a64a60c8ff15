"""One typed Settings for every service.

The same variable names are read by every process (ARCHITECTURE.md's configuration table);
a `.env` file may supply them and the environment wins.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Logs never carry phone numbers or message text, whatever the level.
    log_level: str = "INFO"

    redis_url: str = "redis://127.0.0.1:6379/0"

    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr("dev-auth-token")
    twilio_whatsapp_number: str = "whatsapp:+14155238886"
    twilio_api_base_url: str = "https://api.twilio.com"
    public_base_url: str = "http://127.0.0.1:8000"

    # Comma-separated E.164 numbers; "*" allows everybody; empty allows nobody.
    allowed_phone_numbers: str = ""
    rate_limit_per_phone: int = 10
    rate_limit_global: int = 100

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 60.0

    autocoder_mcp_url: str = "http://127.0.0.1:8765/mcp"
    autocoder_api_key: SecretStr | None = None

    # Fernet key (urlsafe base64, 32 bytes) for conversation state at rest.
    state_encryption_key: SecretStr | None = None
    # Keys the hash that stands for a phone number in logs and towards AutoCoder.
    phone_hash_salt: SecretStr = SecretStr("wacoder-dev-salt")

    # Where the services listen and find each other.
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8000
    agent_addr: str = "127.0.0.1:50051"
    mcp_bridge_addr: str = "127.0.0.1:50052"
    notifier_addr: str = "127.0.0.1:50053"
    autocoder_host: str = "127.0.0.1"
    autocoder_port: int = 8765
    # Each service's operations HTTP port (/livez, /readyz, /metrics); the webhook serves them
    # on its own port. METRICS_HOST is what they bind: 0.0.0.0 in a container, for the kubelet.
    metrics_host: str = "127.0.0.1"
    agent_metrics_port: int = 9101
    mcp_bridge_metrics_port: int = 9102
    notifier_metrics_port: int = 9103
    autocoder_metrics_port: int = 9104

    # Deadline of one gRPC hop that should be instant (storing in an inbox or outbox).
    grpc_fast_timeout_s: float = 2.0

    # mcp-bridge: one AutoCoder call's deadline, its retries, and the circuit breaker.
    mcp_call_timeout_s: float = 30.0
    mcp_retries: int = 2
    breaker_failure_threshold: int = 5
    breaker_reset_timeout_s: float = 10.0

    # notifier: WhatsApp's default throughput per sender, and how hard to retry Twilio.
    notifier_send_rate_per_s: float = 80.0
    notifier_max_attempts: int = 6
    notifier_backoff_base_s: float = 0.5
    notifier_backoff_max_s: float = 30.0
    # Bound of one Twilio request; also how long a dead process's request may still be on its
    # way to Twilio before crash reconciliation trusts Twilio's message list.
    notifier_twilio_timeout_s: float = 15.0
    # The outbox consumer's name; unset: hostname (the pod name) plus the gRPC port.
    notifier_consumer: str | None = None

    # Durable streams: work pending this long on a consumer that stopped is claimed by another.
    stream_claim_idle_ms: int = 15_000
    # Handled inbox entries kept as a recent history for operators; only acknowledged ones are
    # ever trimmed, so a backlog larger than this is never cut.
    inbox_maxlen: int = 10_000
    # agent: how long a progress relay waits through one AutoCoder outage before telling the user.
    progress_give_up_after_s: float = 600.0

    @property
    def allowed_numbers(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.allowed_phone_numbers.split(",") if n.strip())

    def is_allowed(self, phone: str) -> bool:
        """True when `phone` (E.164, no "whatsapp:" prefix) may use the bot."""
        allowed = self.allowed_numbers
        return "*" in allowed or phone in allowed


@lru_cache
def get_settings() -> Settings:
    return Settings()
