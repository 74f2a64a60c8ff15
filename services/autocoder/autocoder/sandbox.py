"""Runs a generated project's tests: a real pytest, fenced in.

Limits: a wall-clock timeout (the whole process group is killed), an address-space limit
(RLIMIT_AS, set in the child before exec), no secrets in the environment, and no network.
No network is done with `unshare -rn` (a fresh, empty network namespace as an unprivileged
user) when this machine allows it — checked once and cached. Where it does not (containers
without user namespaces), a `sitecustomize.py` guard is put on the child's PYTHONPATH that makes
socket connections to anything but loopback fail; weaker (a test could undo it) but it stops
the accidental cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OUTPUT_TAIL_CHARS = 2000
_CONFIG_FILES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")

_GUARD = textwrap.dedent("""
    # Installed by AutoCoder's sandbox: generated tests may not reach the network.
    import ipaddress
    import socket

    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex

    def _allowed(address):
        if not isinstance(address, tuple):
            return True  # AF_UNIX
        try:
            return ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            return address[0] == "localhost"

    def connect(self, address):
        if not _allowed(address):
            raise OSError(101, "network access is disabled in the AutoCoder sandbox")
        return _connect(self, address)

    def connect_ex(self, address):
        if not _allowed(address):
            return 101
        return _connect_ex(self, address)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
""")


@dataclass
class TestResults:
    passed: int
    failed: int
    errors: int
    total: int
    output_tail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_isolation: str | None = None


async def network_isolation() -> str:
    """ "unshare" when an empty network namespace works here, else "socket-guard" (cached)."""
    global _isolation
    if _isolation is None:
        _isolation = "socket-guard"
        unshare = shutil.which("unshare")
        if unshare:
            try:
                proc = await asyncio.create_subprocess_exec(
                    unshare,
                    "-rn",
                    sys.executable,
                    "-c",
                    "pass",
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                if await asyncio.wait_for(proc.wait(), 10) == 0:
                    _isolation = "unshare"
            except (OSError, TimeoutError):
                pass
        log.info("sandbox network isolation", extra={"isolation": _isolation})
    return _isolation


def _limit_memory(limit_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def _child_env(project_dir: Path, guard_dir: Path | None) -> dict[str, str]:
    # Only what Python needs: the server's secrets (API keys) must not reach generated code.
    paths = [str(project_dir)] + ([str(guard_dir)] if guard_dir else [])
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(project_dir),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        # Generated projects need plain pytest; the server's own plugins (asyncio, hypothesis,
        # timeout) would only slow every run down by a second or more.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }


def parse_junit(xml_text: str) -> tuple[int, int, int, int] | None:
    """(passed, failed, errors, total) from pytest's JUnit XML."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = failed = errors = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return total - failed - errors - skipped, failed, errors, total


def parse_summary(output: str) -> tuple[int, int, int, int]:
    """Fallback when there is no JUnit file: the counts on pytest's last summary line."""
    counts = {k: 0 for k in ("passed", "failed", "error", "skipped")}
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", output):
        counts["error" if word.startswith("error") else word] = int(number)
    total = sum(counts.values())
    return counts["passed"], counts["failed"], counts["error"], total


async def run_pytest(project_dir: Path, timeout_s: float, memory_mb: int) -> TestResults:
    isolation = await network_isolation()
    with tempfile.TemporaryDirectory(prefix="autocoder-pytest-") as tmp:
        tmp_dir = Path(tmp)
        junit = tmp_dir / "junit.xml"
        guard_dir: Path | None = None
        if isolation != "unshare":
            guard_dir = tmp_dir / "guard"
            guard_dir.mkdir()
            (guard_dir / "sitecustomize.py").write_text(_GUARD)
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit2",
        ]
        if not any((project_dir / name).exists() for name in _CONFIG_FILES):
            # Without a config of its own pytest would adopt one from a parent directory (ours,
            # when the data dir lives in the repo): pin an empty one and the project as rootdir.
            (tmp_dir / "pytest.ini").write_text("[pytest]\n")
            argv += ["-c", str(tmp_dir / "pytest.ini"), f"--rootdir={project_dir}"]
        if isolation == "unshare":
            argv = ["unshare", "-rn", *argv]
        limit = memory_mb * 1024 * 1024
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=project_dir,
            env=_child_env(project_dir, guard_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _limit_memory(limit),
        )
        timed_out = False
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            timed_out = True
            # The whole group: pytest may have started children of its own.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = await proc.communicate()
        output = out.decode("utf-8", errors="replace")
        if timed_out:
            output += f"\n[autocoder] pytest killed after {timeout_s:.0f}s wall-clock timeout\n"
        counts = parse_junit(junit.read_text()) if junit.exists() else None
        passed, failed, errors, total = counts if counts else parse_summary(output)
        if timed_out or (proc.returncode not in (0, 1, 5) and failed == 0 and errors == 0):
            # Killed, crashed (e.g. out of memory) or a usage error: never report that as a pass.
            errors += 1
        return TestResults(
            passed=passed, failed=failed, errors=errors, total=total, output_tail=output[-OUTPUT_TAIL_CHARS:]
        )
