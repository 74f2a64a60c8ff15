"""Helm behind a small interface: `helm` from PATH (or HELM_BIN) against the current kubeconfig."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml


class HelmError(RuntimeError):
    pass


class Helm(Protocol):
    async def upgrade_install(self, release: str, namespace: str, values: Mapping[str, Any]) -> None: ...

    async def uninstall(self, release: str, namespace: str) -> None: ...


def write_values(values: Mapping[str, Any], path: Path) -> Path:
    """The values file exactly as the operator hands it to helm."""
    path.write_text(yaml.safe_dump(dict(values), sort_keys=True))
    return path


def find_helm() -> str:
    return os.environ.get("HELM_BIN") or shutil.which("helm") or "helm"


class HelmCli:
    def __init__(self, chart: str, binary: str | None = None, timeout_s: float = 300) -> None:
        self.chart, self.binary, self.timeout_s = chart, binary or find_helm(), timeout_s

    async def upgrade_install(self, release: str, namespace: str, values: Mapping[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="wacoder-operator-") as tmp:
            path = write_values(values, Path(tmp) / f"{release}.yaml")
            # The CRD is the operator chart's to install; this service account may not create it.
            await self._run(
                "upgrade", "--install", release, self.chart, "-n", namespace, "-f", str(path), "--skip-crds"
            )

    async def uninstall(self, release: str, namespace: str) -> None:
        try:
            await self._run("uninstall", release, "-n", namespace)
        except HelmError as error:
            if "not found" not in str(error):
                raise

    async def _run(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            self.binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise HelmError(f"helm {args[0]} timed out after {self.timeout_s}s") from None
        if process.returncode != 0:
            raise HelmError(f"helm {' '.join(args[:3])}: {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")
