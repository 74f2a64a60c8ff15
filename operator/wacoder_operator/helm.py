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
    """A failed helm command: `operation` (e.g. "helm upgrade --install acme-blue") and `detail`,
    the gist of what helm said (its `Error:` lines; else its last line)."""

    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation, self.detail = operation, detail


def error_summary(stderr: str, returncode: int | None) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    return " ".join(errors or lines[-1:]) or f"exit status {returncode}"


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
            if "not found" not in error.detail:
                raise

    async def _run(self, *args: str) -> str:
        operation = "helm " + " ".join(args[:3] if args[0] == "upgrade" else args[:2])
        try:
            process = await asyncio.create_subprocess_exec(
                self.binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as error:  # no helm where HELM_BIN or PATH says: a failure like any other
            raise HelmError(operation, f"cannot run {self.binary}: {error}") from error
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise HelmError(operation, f"timed out after {self.timeout_s}s") from None
        if process.returncode != 0:
            raise HelmError(operation, error_summary(err.decode(errors="replace"), process.returncode))
        return out.decode(errors="replace")
