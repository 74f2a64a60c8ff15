"""The Kubernetes API behind a small interface: what the operator reads and writes besides Helm.

`KubeApi` speaks plain REST over aiohttp with kopf's connection info (the same kubeconfig or
service account kopf logged in with): JSON merge patches only, so it needs no client library."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from wacoder_operator.rollout import Colour

GROUP, VERSION, PLURAL = "whatsappcoder.dev", "v1alpha1", "whatsappbots"
MANAGER = "wacoder-operator"
CHART_NAME = "whatsapp-coder"  # app.kubernetes.io/name of the chart's pods
ROLES = ("active", "preview")
COMPONENTS = frozenset({"webhook", "agent", "mcp-bridge", "notifier"})  # autocoder is optional


@dataclass(frozen=True)
class BotRef:
    namespace: str
    name: str
    uid: str

    def owner(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WhatsAppBot",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


class Kube(Protocol):
    async def bot(self, bot: BotRef) -> dict[str, Any] | None: ...

    async def config_map(self, bot: BotRef, name: str) -> dict[str, str] | None: ...

    async def write_config_map(self, bot: BotRef, name: str, data: Mapping[str, str]) -> None: ...

    async def routes(self, bot: BotRef) -> dict[str, Colour | None]: ...

    async def route(self, bot: BotRef, role: str, colour: Colour) -> None: ...

    async def deployments(self, bot: BotRef, release: str) -> list[dict[str, Any]]: ...

    async def scale_down(self, bot: BotRef, release: str, keep: Collection[str] = ()) -> None: ...

    async def secret_value(self, bot: BotRef, name: str, key: str) -> str | None: ...

    async def patch_status(self, bot: BotRef, status: Mapping[str, Any]) -> None: ...

    async def clear_annotation(self, bot: BotRef, key: str) -> None: ...

    async def event(self, bot: BotRef, type_: str, reason: str, message: str) -> None: ...


def service_name(bot: str, role: str) -> str:
    return f"{bot}-{role}"


def routing_service(bot: BotRef, role: str, colour: Colour) -> dict[str, Any]:
    """`<bot>-active` / `<bot>-preview`: the webhook pods of one colour (as the chart's routing.yaml)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(bot.name, role),
            "namespace": bot.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGER,
                "app.kubernetes.io/part-of": "whatsapp-coder",
                "app.kubernetes.io/component": "routing",
                "whatsappcoder.dev/bot": bot.name,
                "whatsappcoder.dev/role": role,
            },
            "ownerReferences": [bot.owner()],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {
                "app.kubernetes.io/name": CHART_NAME,
                "whatsappcoder.dev/bot": bot.name,
                "app.kubernetes.io/component": "webhook",
                "colour": colour.value,
            },
            "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def deployment_available(deployment: Mapping[str, Any], version: str) -> bool:
    """Rolled out and available at `version`: the controller saw the latest spec, every replica
    is updated and available, every container runs the version's image."""
    meta, spec, status = (
        deployment.get("metadata", {}),
        deployment.get("spec", {}),
        deployment.get("status") or {},
    )
    replicas = int(spec.get("replicas", 1))
    containers = spec.get("template", {}).get("spec", {}).get("containers", [])
    return (
        bool(containers)
        and all(str(c.get("image", "")).endswith(f":{version}") for c in containers)
        and int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
        and int(status.get("updatedReplicas", 0)) >= replicas
        and int(status.get("availableReplicas", 0)) >= replicas
    )


def deployment_serving(deployment: Mapping[str, Any]) -> bool:
    """Answering now, whatever its version: the Deployment controller's Available condition
    (minimum availability) when it reports one, else every replica available."""
    status = deployment.get("status") or {}
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Available":
            return bool(condition.get("status") == "True")
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    return int(status.get("availableReplicas", 0)) >= replicas


def colour_serving(deployments: list[dict[str, Any]]) -> bool:
    """Every service of the colour answers (the active colour's part in Ready)."""
    components = {d["metadata"].get("labels", {}).get("app.kubernetes.io/component") for d in deployments}
    return COMPONENTS <= components and all(deployment_serving(d) for d in deployments)


def colour_available(deployments: list[dict[str, Any]], version: str) -> bool:
    components = {d["metadata"].get("labels", {}).get("app.kubernetes.io/component") for d in deployments}
    return COMPONENTS <= components and all(deployment_available(d, version) for d in deployments)


class KubeApi:
    def __init__(self, server: str, headers: Mapping[str, str], ssl: Any = None) -> None:
        self.server, self.headers, self.ssl = server.rstrip("/"), dict(headers), ssl
        self.session: aiohttp.ClientSession | None = None

    @classmethod
    def from_connection(cls, info: Any) -> KubeApi:
        """From a kopf.ConnectionInfo."""
        ssl = info.as_ssl_context() if info.server.startswith("https") else None
        return cls(info.server, info.as_http_headers(), ssl)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        merge: bool = False,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        headers = {**self.headers, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json" if merge else "application/json"
        async with self.session.request(
            method,
            self.server + path,
            data=None if body is None else json.dumps(body),
            headers=headers,
            params=params,
            ssl=self.ssl if self.ssl is not None else True,
        ) as response:
            if response.status == 404 and method in ("GET", "DELETE"):
                return None
            text = await response.text()
            if response.status >= 400:
                raise KubeError(response.status, f"{method} {path}", _api_message(response.status, text))
            return json.loads(text) if text else None

    async def _upsert(self, collection: str, name: str, body: dict[str, Any]) -> None:
        try:
            await self._call("POST", collection, body)
        except KubeError as error:
            if error.status != 409:
                raise
            await self._call("PATCH", f"{collection}/{name}", body, merge=True)

    @staticmethod
    def _core(bot: BotRef, plural: str) -> str:
        return f"/api/v1/namespaces/{bot.namespace}/{plural}"

    def _bot(self, bot: BotRef) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{bot.namespace}/{PLURAL}/{bot.name}"

    async def bot(self, bot: BotRef) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._call("GET", self._bot(bot))
        return found

    async def config_map(self, bot: BotRef, name: str) -> dict[str, str] | None:
        found = await self._call("GET", f"{self._core(bot, 'configmaps')}/{name}")
        return None if found is None else dict(found.get("data") or {})

    async def write_config_map(self, bot: BotRef, name: str, data: Mapping[str, str]) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": bot.namespace,
                "labels": {"app.kubernetes.io/managed-by": MANAGER, "whatsappcoder.dev/bot": bot.name},
                "ownerReferences": [bot.owner()],
            },
            "data": dict(data),
        }
        await self._upsert(self._core(bot, "configmaps"), name, body)

    async def routes(self, bot: BotRef) -> dict[str, Colour | None]:
        routes: dict[str, Colour | None] = {}
        for role in ROLES:
            found = await self._call("GET", f"{self._core(bot, 'services')}/{service_name(bot.name, role)}")
            colour = ((found or {}).get("spec") or {}).get("selector", {}).get("colour")
            routes[role] = Colour(colour) if colour in ("blue", "green") else None
        return routes

    async def route(self, bot: BotRef, role: str, colour: Colour) -> None:
        service = routing_service(bot, role, colour)
        await self._upsert(self._core(bot, "services"), service["metadata"]["name"], service)

    async def deployments(self, bot: BotRef, release: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={release}"
        path = f"/apis/apps/v1/namespaces/{bot.namespace}/deployments"
        found = await self._call("GET", path, params={"labelSelector": selector}) or {}
        return [  # filtered here too: the selector is all this relies on
            d
            for d in found.get("items", [])
            if d.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/instance") == release
        ]

    async def scale_down(self, bot: BotRef, release: str, keep: Collection[str] = ()) -> None:
        """Every Deployment of the release to zero but those of the components in `keep`."""
        for deployment in await self.deployments(bot, release):
            if deployment["metadata"].get("labels", {}).get("app.kubernetes.io/component") in keep:
                continue
            name = deployment["metadata"]["name"]
            path = f"/apis/apps/v1/namespaces/{bot.namespace}/deployments/{name}"
            await self._call("PATCH", path, {"spec": {"replicas": 0}}, merge=True)

    async def secret_value(self, bot: BotRef, name: str, key: str) -> str | None:
        found = await self._call("GET", f"{self._core(bot, 'secrets')}/{name}")
        value = ((found or {}).get("data") or {}).get(key)
        return base64.b64decode(value).decode() if value else None

    async def patch_status(self, bot: BotRef, status: Mapping[str, Any]) -> None:
        await self._call("PATCH", f"{self._bot(bot)}/status", {"status": dict(status)}, merge=True)

    async def clear_annotation(self, bot: BotRef, key: str) -> None:
        await self._call("PATCH", self._bot(bot), {"metadata": {"annotations": {key: None}}}, merge=True)

    async def event(self, bot: BotRef, type_: str, reason: str, message: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{bot.name}.{uuid.uuid4().hex[:16]}", "namespace": bot.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "WhatsAppBot",
                "name": bot.name,
                "namespace": bot.namespace,
                "uid": bot.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": MANAGER,
        }
        await self._call("POST", self._core(bot, "events"), body)


class KubeError(RuntimeError):
    """A refused API call: `operation` (method and path) and `detail` (the status and what the
    API server said)."""

    def __init__(self, status: int, operation: str, detail: str) -> None:
        super().__init__(f"{operation}: {detail}")
        self.status, self.operation, self.detail = status, operation, detail


def _api_message(status: int, text: str) -> str:
    """`403 Forbidden: services "acme-active" is forbidden: ...` from a Status object, else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return f"{status} {body.get('reason') or ''}: {body['message']}".replace(" :", ":")
    return f"{status} {text[:300]}".strip()
