"""Runs a generated project's tests: a real pytest, fenced in.

Limits: a wall-clock timeout (the whole process group is killed), an address-space limit
(RLIMIT_AS, set by a tiny Python launcher that then execs pytest), no secrets in the
environment, and no network.
No network is done with `unshare -rn` (a fresh, empty network namespace as an unprivileged
user) when this machine allows it — checked once and cached. Where it does not (containers
without user namespaces), a `sitecustomize.py` guard is put on the child's PYTHONPATH that makes
socket connections to anything but loopback fail; weaker (a test could undo it) but it stops
the accidental cases.

Nothing here waits on the event loop: the process is awaited, its output goes to a file (a
pipe would keep us waiting for any grandchild that still holds it open), and the file work
around it runs in a thread. There is no `preexec_fn` either: running Python in the child
between fork and exec is unsafe once threads exist (ours do, `asyncio.to_thread`), and it
forces a full fork, which blocks the loop for as long as copying our page tables takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
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
OUTPUT_READ_BYTES = 64 * 1024
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
_isolation_lock = asyncio.Lock()  # the first sessions all wait for the one probe


async def network_isolation() -> str:
    """ "unshare" when an empty network namespace works here, else "socket-guard" (cached)."""
    global _isolation
    async with _isolation_lock:
        if _isolation is None:
            _isolation = await _probe_unshare()
            log.info("sandbox network isolation", extra={"isolation": _isolation})
    return _isolation


async def _probe_unshare() -> str:
    unshare = shutil.which("unshare")
    if not unshare:
        return "socket-guard"
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
    except OSError:
        return "socket-guard"
    try:
        return "unshare" if await asyncio.wait_for(proc.wait(), 10) == 0 else "socket-guard"
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "socket-guard"


# argv: [limit in bytes, program, args...]. Sets the address-space limit, then becomes the program.
_LIMIT_THEN_EXEC = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_AS, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


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
    tmp_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="autocoder-pytest-"))
    try:
        argv = await asyncio.to_thread(_prepare, project_dir, tmp_dir, isolation, memory_mb)
        guard_dir = tmp_dir / "guard" if isolation != "unshare" else None
        with (tmp_dir / "output.txt").open("wb") as output:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=project_dir,
                env=_child_env(project_dir, guard_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            timed_out = True
        finally:
            # The whole group, also after a normal exit: what the tests started must not outlive
            # them (a group outlives its leader while a member lives; its id is not reused till then).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.returncode is None:  # timed out, or we are being cancelled
                await proc.wait()
        return await asyncio.to_thread(_results, tmp_dir, proc.returncode, timed_out, timeout_s)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp_dir, True)


def _prepare(project_dir: Path, tmp_dir: Path, isolation: str, memory_mb: int) -> list[str]:
    """The command line, and the files it needs in `tmp_dir` (in a thread)."""
    if isolation != "unshare":
        (tmp_dir / "guard").mkdir()
        (tmp_dir / "guard" / "sitecustomize.py").write_text(_GUARD)
    limit = memory_mb * 1024 * 1024
    # -I -S: the launcher starts in milliseconds and reads nothing from the project.
    argv = [sys.executable, "-I", "-S", "-c", _LIMIT_THEN_EXEC, str(limit)]
    argv += [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={tmp_dir / 'junit.xml'}",
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
    return argv


def _results(tmp_dir: Path, returncode: int | None, timed_out: bool, timeout_s: float) -> TestResults:
    """What the run says, from the JUnit file and its output (in a thread)."""
    with (tmp_dir / "output.txt").open("rb") as fh:
        # Only the end matters (the tail we report, pytest's summary line): a chatty test suite
        # must not cost us its whole output in memory.
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - OUTPUT_READ_BYTES))
        output = fh.read().decode("utf-8", errors="replace")
    if timed_out:
        output += f"\n[autocoder] pytest killed after {timeout_s:.0f}s wall-clock timeout\n"
    junit = tmp_dir / "junit.xml"
    counts = parse_junit(junit.read_text()) if junit.exists() else None
    passed, failed, errors, total = counts if counts else parse_summary(output)
    if timed_out or (returncode not in (0, 1, 5) and failed == 0 and errors == 0):
        # Killed, crashed (e.g. out of memory) or a usage error: never report that as a pass.
        errors += 1
    return TestResults(
        passed=passed, failed=failed, errors=errors, total=total, output_tail=output[-OUTPUT_TAIL_CHARS:]
    )
