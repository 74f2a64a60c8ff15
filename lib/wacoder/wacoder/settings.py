"""One typed Settings for every service.

The same variable names are read by every process (docs/architecture.md, the README's
configuration table); a `.env` file may supply them and the environment wins.

Secrets fail closed: in production (`WACODER_ENV=production`, the default) a service refuses to
start without each secret it uses; only development falls back to built-in, public values.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from wacoder import keys

Secret = Literal[
    "twilio_auth_token", "phone_hash_salt", "state_encryption_key", "service_token", "autocoder_api_key"
]

# What each service cannot run without in production.
SERVICE_SECRETS: dict[str, tuple[Secret, ...]] = {
    "webhook": ("twilio_auth_token", "phone_hash_salt", "state_encryption_key", "service_token"),
    # The agent fetches the media users send from Twilio's API with the account's credentials.
    "agent": ("twilio_auth_token", "phone_hash_salt", "state_encryption_key", "service_token"),
    "notifier": ("twilio_auth_token", "phone_hash_salt", "state_encryption_key", "service_token"),
    "mcp-bridge": ("phone_hash_salt", "state_encryption_key", "service_token", "autocoder_api_key"),
    "autocoder": ("phone_hash_salt", "autocoder_api_key"),
}

# Development only: public values, so a process started by hand works. Never used in production.
_DEVELOPMENT_FALLBACKS: dict[Secret, str] = {
    "twilio_auth_token": "dev-auth-token",
    "phone_hash_salt": "wacoder-dev-salt",
    "state_encryption_key": "ZGV2LW9ubHktc3RhdGUta2V5LW5vdC1hLXNlY3JldCE=",
    "service_token": "dev-service-token",
    "autocoder_api_key": "dev-autocoder-key",
}


class MissingSecret(RuntimeError):
    pass


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # production: every secret must be given, and logs carry nothing private; development: public
    # fallbacks for missing secrets (`make run` generates real ones into .run/ all the same).
    wacoder_env: Literal["development", "production"] = "production"

    # Logs never carry phone numbers or message text, whatever the level.
    log_level: str = "INFO"

    redis_url: str = "redis://127.0.0.1:6379/0"

    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: SecretStr | None = None
    twilio_whatsapp_number: str = "whatsapp:+14155238886"
    # Send through a Twilio Messaging Service (a pool of senders) instead of one `From` number;
    # the number of senders in its pool multiplies the send rate (NOTIFIER_SEND_RATE_PER_S each).
    twilio_messaging_service_sid: str | None = None
    twilio_messaging_service_senders: int = Field(default=1, ge=1)
    twilio_api_base_url: str = "https://api.twilio.com"
    public_base_url: str = "http://127.0.0.1:8000"
    # Comma-separated addresses of reverse proxies whose X-Forwarded-* headers the webhook
    # believes; unset: nobody's.
    trusted_proxies: str | None = None

    # Comma-separated E.164 numbers; "*" allows everybody; empty allows nobody.
    allowed_phone_numbers: str = ""
    rate_limit_per_phone: int = 10
    rate_limit_global: int = 100
    # The bot's ConfigMap (YAML): whitelist, limits and model over the variables above, re-read
    # when it changes (wacoder.botconfig).
    bot_config_file: str | None = None

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 60.0
    # Whether the model takes images (OpenAI `image_url` parts); false: images only reach
    # AutoCoder, as a design reference. Voice notes go to `/audio/transcriptions` with this model.
    llm_vision: bool = True
    transcription_model: str = "whisper-1"

    autocoder_mcp_url: str = "http://127.0.0.1:8765/mcp"
    autocoder_api_key: SecretStr | None = None

    # Fernet keys (urlsafe base64, 32 bytes), comma-separated: the first encrypts, all decrypt,
    # so a key is rotated by putting the new one first and dropping the old one later.
    state_encryption_key: SecretStr | None = None
    # Keys the hash that stands for a phone number in logs, Redis keys and towards AutoCoder.
    phone_hash_salt: SecretStr | None = None
    # Shared secret every gRPC call carries (`authorization: Bearer <token>`).
    service_token: SecretStr | None = None

    # Where the services listen and find each other.
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8000
    agent_addr: str = "127.0.0.1:50051"
    mcp_bridge_addr: str = "127.0.0.1:50052"
    notifier_addr: str = "127.0.0.1:50053"
    autocoder_host: str = "127.0.0.1"
    autocoder_port: int = 8765
    # What gRPC servers bind: loopback by default (`make run`), 0.0.0.0 in a container.
    grpc_bind_host: str = "127.0.0.1"
    # Mutual TLS between services when all three are set (PEM files); the token is checked too.
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_tls_ca: str | None = None
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

    # Durable streams: work pending this long on a consumer that stopped is claimed by another.
    stream_claim_idle_ms: int = 15_000
    # Handled inbox entries kept as a recent history for operators; only acknowledged ones are
    # ever trimmed, so a backlog larger than this is never cut.
    inbox_maxlen: int = 10_000
    # agent: how long a progress relay waits through one AutoCoder outage before telling the user.
    progress_give_up_after_s: float = 600.0

    # Scale-out (docs/adr/0007-scale-out.md). The inbox and outbox are STREAM_SHARDS streams by
    # user hash; every replica of a service owns some shards through a lease in Redis that it
    # renews, and a dead replica's shards are taken over once its leases expire.
    stream_shards: int = 16
    # A blue/green release's colour: its queues, leases and relays are its own, so two colours
    # share one Redis (state, de-duplication, limits) without consuming each other's traffic.
    queue_namespace: str = ""
    shard_lease_ttl_ms: int = 6_000
    # This process among its service's replicas: unset, the hostname (the pod name). Stable
    # across restarts of the same pod, so a restarted replica takes its own shards back at once.
    replica_id: str | None = None
    # A write that Twilio's 200 depends on waits until this many replicas have it (WAIT), when
    # the Redis node has replicas at all; past the timeout the webhook answers 503.
    redis_wait_replicas: int = 1
    # How long a starting service waits for Redis to answer (to tell a cluster from a standalone
    # Redis) before it assumes a standalone one and starts anyway.
    redis_start_wait_s: float = 20.0
    redis_wait_timeout_ms: int = 500

    def secret(self, name: Secret) -> str:
        """The secret's value; in development a public fallback when unset, in production
        MissingSecret (a service checks its secrets at start, see `service_settings`)."""
        value: SecretStr | None = getattr(self, name)
        if value is not None and value.get_secret_value():
            return value.get_secret_value()
        if self.wacoder_env == "development":
            return _DEVELOPMENT_FALLBACKS[name]
        raise MissingSecret(f"{name.upper()} is not set")

    def missing_secrets(self, service: str) -> list[str]:
        if self.wacoder_env == "development":
            return []
        return [
            name.upper()
            for name in SERVICE_SECRETS[service]
            if getattr(self, name) is None or not getattr(self, name).get_secret_value()
        ]


@lru_cache
def get_settings() -> Settings:
    return Settings()


def service_settings(service: str) -> Settings:
    """The settings of `service`'s process, its secrets checked (see `require_secrets`)."""
    settings = get_settings()
    require_secrets(settings, service)
    keys.configure(settings.stream_shards, settings.queue_namespace)
    return settings


def require_secrets(settings: Settings, service: str) -> None:
    """Exits with one clear line when a secret `service` needs is missing in production (fail
    closed: never a public default for a signature check or a hash key)."""
    missing = settings.missing_secrets(service)
    if missing:
        print(
            f"{service}: refusing to start in production without {', '.join(missing)} "
            "(set them, or WACODER_ENV=development for public development values)",
            file=sys.stderr,
        )
        raise SystemExit(2)
