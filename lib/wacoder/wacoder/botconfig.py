"""The bot's own configuration: who may use it, how fast, and which model answers.

The environment gives the defaults (ALLOWED_PHONE_NUMBERS, RATE_LIMIT_PER_PHONE,
RATE_LIMIT_GLOBAL, LLM_MODEL, OPENAI_BASE_URL); `BOT_CONFIG_FILE` (the bot's ConfigMap, which the
operator edits in place) overrides them and is re-read when it changes, so a whitelist or limit
change applies without a restart:

    allowedPhoneNumbers: ["+15551234567", "whatsapp:+44 20 7946 0958"]
    rateLimits: {perPhonePerMinute: 10, globalPerMinute: 100}
    model: {name: gpt-4o-mini, baseUrl: https://api.openai.com/v1, temperature: 0.2}

Kubernetes updates a ConfigMap mount by swapping a symlink (`..data`), so the file is watched by
what it resolves to (device, inode, size, mtime), not by the name's own metadata.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from wacoder.phones import to_e164
from wacoder.settings import Settings

log = logging.getLogger("wacoder.botconfig")

RELOAD_INTERVAL_S = 1.0


@dataclass(frozen=True)
class BotConfig:
    allowed: frozenset[str]  # E.164 numbers; "*" allows everybody
    per_phone_per_minute: int
    global_per_minute: int
    model_name: str
    model_base_url: str | None
    model_temperature: float | None

    def is_allowed(self, phone: str) -> bool:
        return "*" in self.allowed or to_e164(phone) in self.allowed

    @classmethod
    def from_settings(cls, settings: Settings) -> BotConfig:
        return cls(
            allowed=allowed_set(settings.allowed_phone_numbers.split(",")),
            per_phone_per_minute=settings.rate_limit_per_phone,
            global_per_minute=settings.rate_limit_global,
            model_name=settings.llm_model,
            model_base_url=settings.openai_base_url,
            model_temperature=None,
        )

    def overridden_by(self, document: dict[str, Any]) -> BotConfig:
        """This config with what the file says on top. Raises ValueError for a malformed file."""
        config = self
        if "allowedPhoneNumbers" in document:
            numbers = document["allowedPhoneNumbers"] or []
            if not isinstance(numbers, list):
                raise ValueError("allowedPhoneNumbers must be a list")
            config = replace(config, allowed=allowed_set(str(n) for n in numbers))
        limits = _section(document, "rateLimits")
        if "perPhonePerMinute" in limits:
            config = replace(config, per_phone_per_minute=_positive(limits, "perPhonePerMinute"))
        if "globalPerMinute" in limits:
            config = replace(config, global_per_minute=_positive(limits, "globalPerMinute"))
        model = _section(document, "model")
        if "name" in model:
            config = replace(config, model_name=str(model["name"]))
        if "baseUrl" in model:
            config = replace(config, model_base_url=str(model["baseUrl"]) if model["baseUrl"] else None)
        if "temperature" in model:
            config = replace(config, model_temperature=float(model["temperature"]))
        return config


def allowed_set(numbers: Any) -> frozenset[str]:
    return frozenset(n if n == "*" else to_e164(n) for n in (str(x).strip() for x in numbers) if n)


def _section(document: dict[str, Any], name: str) -> dict[str, Any]:
    section = document.get(name) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{name} must be a mapping")
    return section


def _positive(section: dict[str, Any], name: str) -> int:
    value = int(section[name])
    if value <= 0:
        raise ValueError(f"{name} must be positive")
    return value


class BotConfigSource:
    """The current BotConfig; `watch()` keeps it in step with BOT_CONFIG_FILE."""

    def __init__(self, settings: Settings) -> None:
        self.defaults = BotConfig.from_settings(settings)
        self.path = Path(settings.bot_config_file) if settings.bot_config_file else None
        self._seen: tuple[int, int, int, int] | None = None
        self.current = self.defaults
        self.reload()

    def reload(self) -> bool:
        """Re-reads the file if it changed; True when the config was replaced. A file that
        cannot be read or parsed keeps the last good config (and says so in the log)."""
        if self.path is None:
            return False
        try:
            stat = os.stat(self.path)  # follows the symlink: a swapped ConfigMap is a new file
        except OSError as error:
            if self._seen is not None:
                log.error("bot config unreadable; keeping the last one", extra={"error": repr(error)})
                self._seen = None
            return False
        seen = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            document = yaml.safe_load(self.path.read_text()) or {}
            if not isinstance(document, dict):
                raise ValueError("the file must hold a mapping")
            config = self.defaults.overridden_by(document)
        except (OSError, ValueError, TypeError, yaml.YAMLError) as error:
            log.error("bot config rejected; keeping the last one", extra={"error": str(error)})
            return False
        changed = config != self.current
        self.current = config
        if changed:
            log.info(
                "bot config loaded",
                extra={
                    "allowed_numbers": len(config.allowed),
                    "per_phone_per_minute": config.per_phone_per_minute,
                    "global_per_minute": config.global_per_minute,
                    "model": config.model_name,
                },
            )
        return changed

    async def watch(self, interval_s: float = RELOAD_INTERVAL_S) -> None:
        """Polls the file until cancelled (a poll is one stat: cheap, and works on every mount)."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload()
