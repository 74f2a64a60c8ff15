"""What the operator derives from a WhatsAppBot's spec: the Helm values of one colour, the bot's
ConfigMap, and the hashes the rollout compares (`rollout.Spec`).

The split that decides "rollout or not": the ConfigMap, shared by both colours and re-read live
by the services, holds only what is safe to change under traffic (the whitelist, the rate limits,
the model's temperature). Everything else a pod runs with (the version, the model's name and
baseUrl, Twilio, Redis, AutoCoder, the Secrets) is in the colour's Helm values, so changing it
means a new revision, which goes blue/green. Replicas are in the values but not the revision:
changing only them upgrades the active colour in place.

One reference AutoCoder per bot: without `spec.autocoder.mcpUrl`, the colour that hosts it (the
first installed, `Status.autocoder`) runs it and the other colour's bridges are pointed at its
Service, so a user's projects (their active project is in the shared Redis) are found after a
switch. Which colour that is does not change a revision: the hashes are of the host's values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from wacoder_operator.rollout import ABORT_ANNOTATION, PROMOTE_ANNOTATION, Colour, Spec

CONFIG_KEY = "bot.yaml"
SERVICES = {"webhook": "webhook", "agent": "agent", "mcpBridge": "mcpBridge", "notifier": "notifier"}
DEFAULT_MODEL = "gpt-4o-mini"
# The chart's defaults the AutoCoder's URL is made of (its clusterDomain, AutoCoder's MCP port).
CLUSTER_DOMAIN = "cluster.local"
AUTOCODER_PORT = 8765


def release_name(bot: str, colour: Colour) -> str:
    return f"{bot}-{colour.value}"


def release_prefix(bot: str, colour: Colour) -> str:
    """What the chart names a colour's objects `<prefix>-<component>` with (its wacoder.prefix,
    the operator setting fullnameOverride to the bot's name)."""
    fullname = bot[:63].removesuffix("-")
    return f"{fullname[:36].removesuffix('-')}-{colour.value}"


def autocoder_url(bot: str, namespace: str, colour: Colour) -> str:
    """The MCP URL of the reference AutoCoder in `colour`'s release, as the chart gives it to
    that release's bridges (wacoder.autocoderMcpUrl)."""
    service = f"{release_prefix(bot, colour)}-autocoder"
    return f"http://{service}.{namespace}.svc.{CLUSTER_DOMAIN}:{AUTOCODER_PORT}/mcp"


def config_map_name(bot: str) -> str:
    return f"{bot}-bot"


def bot_config(spec: Mapping[str, Any]) -> dict[str, str]:
    """The ConfigMap's data: the file BOT_CONFIG_FILE names (wacoder.botconfig reads it)."""
    limits = spec.get("rateLimits") or {}
    model = spec.get("model") or {}
    document = {
        "allowedPhoneNumbers": list(spec.get("whitelist") or []),
        "rateLimits": {
            "perPhonePerMinute": int(limits.get("perPhonePerMinute", 10)),
            "globalPerMinute": int(limits.get("globalPerMinute", 100)),
        },
        # Only the temperature: the name and baseUrl come with the colour (LLM_MODEL, OPENAI_BASE_URL),
        # so a new model reaches users through a rollout, not live into the old colour.
        "model": {"temperature": float(model.get("temperature", 0.2))},
    }
    return {CONFIG_KEY: yaml.safe_dump(document, sort_keys=True)}


def helm_values(
    bot: str,
    spec: Mapping[str, Any],
    colour: Colour,
    image_repository: str | None = None,
    autocoder_host: Colour | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The values file of `helm upgrade --install <bot>-<colour>` (on top of the chart's defaults).

    `autocoder_host`: the colour running the bot's reference AutoCoder (None: this one would);
    another colour's release runs none and uses that one, in `namespace`."""
    model = spec.get("model") or {}
    twilio = spec.get("twilio") or {}
    autocoder = spec.get("autocoder") or {}
    image: dict[str, Any] = {"tag": str(spec["version"])}
    if image_repository:
        image["repository"] = image_repository
    config: dict[str, Any] = {}
    if twilio.get("messagingServiceSid"):
        config["twilioMessagingServiceSid"] = twilio["messagingServiceSid"]
        config["twilioMessagingServiceSenders"] = int(twilio.get("messagingServiceSenders", 1))
    if twilio.get("whatsappNumber"):
        config["twilioWhatsappNumber"] = twilio["whatsappNumber"]
    if twilio.get("publicBaseUrl"):
        config["publicBaseUrl"] = twilio["publicBaseUrl"]
    if twilio.get("apiBaseUrl"):
        config["twilioApiBaseUrl"] = twilio["apiBaseUrl"]
    values: dict[str, Any] = {
        "colour": colour.value,
        "botName": bot,
        "fullnameOverride": bot,
        "image": image,
        "routing": {"enabled": False},  # the operator owns <bot>-active and <bot>-preview
        "botConfig": {
            "existingConfigMap": config_map_name(bot),
            "existingConfigMapKey": CONFIG_KEY,
            "model": {
                "name": str(model.get("name") or DEFAULT_MODEL),
                "baseUrl": str(model.get("baseUrl") or ""),
            },
        },
        "config": config,
        "secrets": _secrets(spec),
        "autocoder": {"enabled": not autocoder.get("mcpUrl"), "mcpUrl": str(autocoder.get("mcpUrl") or "")},
    }
    if not autocoder.get("mcpUrl") and autocoder_host not in (None, colour):
        assert autocoder_host is not None and namespace is not None
        values["autocoder"] = {"enabled": False, "mcpUrl": autocoder_url(bot, namespace, autocoder_host)}
    for key, values_key in SERVICES.items():
        replicas = (spec.get("replicas") or {}).get(key)
        if replicas is not None:
            values[values_key] = {"replicas": int(replicas)}
    return values


def _secrets(spec: Mapping[str, Any]) -> dict[str, Any]:
    secrets: dict[str, Any] = {}
    if (spec.get("secretRef") or {}).get("name"):
        secrets["existingSecret"] = spec["secretRef"]["name"]
    redis = (spec.get("redis") or {}).get("urlSecretRef") or {}
    if redis.get("name"):
        secrets["redisUrl"] = {"name": redis["name"], "key": redis.get("key", "redis-url")}
    twilio = (spec.get("twilio") or {}).get("secretRef") or {}
    if twilio.get("name"):
        secrets["twilioAccountSid"] = {
            "name": twilio["name"],
            "key": twilio.get("accountSidKey", "twilio-account-sid"),
        }
        secrets["twilioAuthToken"] = {
            "name": twilio["name"],
            "key": twilio.get("authTokenKey", "twilio-auth-token"),
        }
    openai = (spec.get("model") or {}).get("apiKeySecretRef") or {}
    if openai.get("name"):
        secrets["openaiApiKey"] = {"name": openai["name"], "key": openai.get("key", "openai-api-key")}
    autocoder = (spec.get("autocoder") or {}).get("secretRef") or {}
    if autocoder.get("name"):
        secrets["autocoderApiKey"] = {
            "name": autocoder["name"],
            "key": autocoder.get("key", "autocoder-api-key"),
        }
    return secrets


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def rollout_spec(
    bot: str,
    spec: Mapping[str, Any],
    generation: int,
    annotations: Mapping[str, str],
    image_repository: str | None = None,
) -> Spec:
    """The state machine's view of a resource (its defaults are the CRD's, for a server that
    did not apply them)."""
    values = helm_values(bot, spec, Colour.BLUE, image_repository)  # as the AutoCoder's host
    pods = {key: value for key, value in values.items() if key not in SERVICES.values()}
    rollout = spec.get("rollout") or {}
    return Spec(
        generation=generation,
        version=str(spec["version"]),
        revision=_hash(pods),
        values_hash=_hash(values),
        config_hash=_hash(bot_config(spec)),
        auto_promote=bool(rollout.get("autoPromote", True)),
        scale_down_delay_s=int(rollout.get("scaleDownDelaySeconds", 300)),
        progress_deadline_s=int(rollout.get("progressDeadlineSeconds", 600)),
        promote=_annotated(annotations, PROMOTE_ANNOTATION),
        abort=_annotated(annotations, ABORT_ANNOTATION),
        own_autocoder=not (spec.get("autocoder") or {}).get("mcpUrl"),
    )


def config_hash(data: Mapping[str, str] | None) -> str | None:
    return None if data is None else _hash(dict(data))


def _annotated(annotations: Mapping[str, str], key: str) -> bool:
    return key in annotations and annotations[key].strip().lower() not in ("false", "no", "0")
