"""Runs a generated project's tests: a real pytest, jailed (docs/adr/0005-sandbox.md).

The tests run on a throwaway copy of the one project, in a fresh temp dir outside AutoCoder's
data dir (removed after), inside a bubblewrap jail (jail.py): no view of the data dir, its keys
or other projects, no network, an unprivileged uid, limits on CPU time, processes, address
space and file size, and a wall-clock timeout after which the whole jail is killed.

Which isolation is in force is decided once per policy and logged (`isolation()`):
- "bwrap": the jail works here (bwrap found, and a trial run succeeded);
- otherwise, in development (or with `AUTOCODER_SANDBOX=none`), the old fence, with a warning:
  the copy runs as the server's user with the same limits except the process count, and only
  the network cut: "unshare" (an empty network namespace via `unshare -rn`) where this machine
  allows it, else "socket-guard" (a `sitecustomize.py` that makes connections to anything but
  loopback fail; weaker, a test could undo it, but it stops the accidental cases);
- in production (`WACODER_ENV=production`) or with `AUTOCODER_SANDBOX=bwrap`, no jail means
  no test run: `SandboxUnavailableError`, which fails the session and says why.

Nothing here waits on the event loop: the process is awaited, its output goes to a file (a
pipe would keep us waiting for any grandchild that still holds it open), and the file work
around it runs in a thread. There is no `preexec_fn` either: running Python in the child
between fork and exec is unsafe once threads exist (ours do, `asyncio.to_thread`), and it
forces a full fork, which blocks the loop for as long as copying our page tables takes. The
limits are set by a launcher that then execs pytest (jail.LAUNCHER).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from wacoder.settings import get_settings

from autocoder.config import AutoCoderConfig
from autocoder.jail import (
    LAUNCH_FAILED,
    NOBODY,
    OUT,
    PINNED_INI,
    PROJECT,
    Layout,
    Limits,
    bwrap_argv,
    jail_uid,
    launcher_argv,
    prepare_layout,
)
from autocoder.storage import HIDDEN_PARTS

log = logging.getLogger(__name__)

SandboxMode = Literal["auto", "bwrap", "none"]
Isolation = Literal["bwrap", "unshare", "socket-guard"]

OUTPUT_TAIL_CHARS = 2000
OUTPUT_READ_BYTES = 64 * 1024
JUNIT_MAX_BYTES = 8 * 1024 * 1024
PROBE_TIMEOUT_S = 15.0
JAIL_TEARDOWN_S = 30.0
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


class SandboxUnavailableError(RuntimeError):
    """Generated tests may not run here: the jail is required and does not work."""


@dataclass
class TestResults:
    passed: int
    failed: int
    errors: int
    total: int
    output_tail: str
    # Why the run failed when the sandbox stopped or contained it ("tests exceeded the time
    # limit (60 s)"), else empty; also the last line of output_tail.
    note: str = ""
    isolation: str = ""

    def as_dict(self) -> dict[str, Any]:
        # The MCP contract's fields (ADR 0002); note and isolation are the server's own.
        return {
            "passed": self.passed,
            "failed": self.failed,
            "errors": self.errors,
            "total": self.total,
            "output_tail": self.output_tail,
        }


@dataclass(frozen=True)
class SandboxPolicy:
    mode: SandboxMode = "auto"
    production: bool = True  # as wacoder's Settings: fail closed unless told it is development
    bwrap: str = "bwrap"  # the binary, on PATH or a path
    data_dir: Path | None = None  # never shown to the jail, whatever else is
    limits: Limits = field(default_factory=Limits)


@lru_cache(maxsize=1)
def policy_from_environment() -> SandboxPolicy:
    """The server's policy: AutoCoder's config and WACODER_ENV, as main.py reads them."""
    config = AutoCoderConfig()
    return SandboxPolicy(
        mode=config.sandbox,
        production=get_settings().wacoder_env == "production",
        data_dir=config.data_dir.resolve(),
        limits=Limits(
            timeout_s=config.test_timeout_s,
            memory_mb=config.test_memory_mb,
            max_processes=config.test_max_processes,
            file_size_mb=config.test_file_size_mb,
            disk_mb=config.test_disk_mb,
        ),
    )


async def run_pytest(
    project_dir: Path, timeout_s: float, memory_mb: int, policy: SandboxPolicy | None = None
) -> TestResults:
    """The project's tests, run as the policy says (the server's own when None). Raises
    SandboxUnavailableError when they may not run at all."""
    policy = policy or policy_from_environment()
    limits = replace(policy.limits, timeout_s=timeout_s, memory_mb=memory_mb)
    kind = await isolation(policy)
    with jail_uid() as uid:
        tmp_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="autocoder-tests-"))
        layout = _layout(tmp_dir, uid)
        try:
            argv, cwd, env = await asyncio.to_thread(_prepare, project_dir, layout, kind, policy, limits)
            returncode, timed_out = await _run(
                argv, cwd, env, layout.output, limits.timeout_s, jail=kind == "bwrap"
            )
            return await asyncio.to_thread(_results, layout, kind, limits, returncode, timed_out)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp_dir, True)


# --- which isolation ------------------------------------------------------------------------

_decisions: dict[tuple[str, bool, str], Isolation | SandboxUnavailableError] = {}
_decisions_lock = asyncio.Lock()  # the first sessions all wait for the one probe


async def isolation(policy: SandboxPolicy) -> Isolation:
    """The isolation this policy gets here, decided (probed and logged) once; raises
    SandboxUnavailableError when tests may not run."""
    key = (policy.mode, policy.production, policy.bwrap)
    async with _decisions_lock:
        decided = _decisions.get(key)
        if decided is None:
            decided = _decisions[key] = await _decide(policy)
    if isinstance(decided, SandboxUnavailableError):
        raise SandboxUnavailableError(str(decided))
    return decided


async def _decide(policy: SandboxPolicy) -> Isolation | SandboxUnavailableError:
    if policy.mode == "none":
        fallback = await _probe_unshare()
        log.warning(
            "sandbox: AUTOCODER_SANDBOX=none, generated tests run WITHOUT the jail, as the server's user",
            extra={"isolation": fallback},
        )
        return fallback
    problem = await _probe_bwrap(policy)
    if problem is None:
        log.info("sandbox: generated tests run in a bubblewrap jail", extra={"isolation": "bwrap"})
        return "bwrap"
    if policy.mode == "bwrap" or policy.production:
        why = "AUTOCODER_SANDBOX=bwrap" if policy.mode == "bwrap" else "WACODER_ENV=production"
        refused = SandboxUnavailableError(
            f"generated tests were not run: the sandbox is unavailable ({problem}) and {why} "
            "requires it; install bubblewrap, or set AUTOCODER_SANDBOX=none to run them unjailed"
        )
        log.error(
            "sandbox: generated tests will not run, the jail is unavailable",
            extra={"isolation": "refused", "reason": problem, "required_by": why},
        )
        return refused
    fallback = await _probe_unshare()
    log.warning(
        "sandbox: bubblewrap unavailable, generated tests run WITHOUT the jail, as the server's user "
        "who can read the data dir; install bubblewrap (production refuses to run tests like this)",
        extra={"isolation": fallback, "reason": problem},
    )
    return fallback


async def _probe_bwrap(policy: SandboxPolicy) -> str | None:
    """None when a trial jail runs our Python here, else what went wrong."""
    binary = shutil.which(policy.bwrap)
    if binary is None:
        return f"{policy.bwrap} not found on PATH"
    with jail_uid() as uid:
        tmp_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="autocoder-probe-"))
        layout = _layout(tmp_dir, uid)
        try:
            await asyncio.to_thread(_prepare_probe, layout)
            trial = [sys.executable, "-c", "import pytest"]  # the interpreter and site-packages
            argv = _jail_argv(binary, layout, policy.limits, trial, _forbidden(policy))
            returncode, timed_out = await _run(
                argv, tmp_dir, _bwrap_env(), layout.output, PROBE_TIMEOUT_S, jail=True
            )
            if returncode == 0:
                return None
            output = await asyncio.to_thread(_read_tail, layout.output)
            how = "timed out" if timed_out else f"exit status {returncode}"
            return f"{binary} failed ({how}): {output.strip()[-300:]}"
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp_dir, True)


async def _probe_unshare() -> Isolation:
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
        async with asyncio.timeout(10):
            status = await proc.wait()
        return "unshare" if status == 0 else "socket-guard"
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "socket-guard"


# --- one run --------------------------------------------------------------------------------


async def _run(
    argv: list[str], cwd: Path, env: dict[str, str], output_path: Path, timeout_s: float, *, jail: bool
) -> tuple[int | None, bool]:
    """(exit status, timed out). Whatever the command started is dead when this returns."""
    with output_path.open("wb") as output:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    timed_out = False
    try:
        async with asyncio.timeout(timeout_s):
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:
        if jail and proc.returncode is None:  # timed out, or we are being cancelled
            await _end_jail(proc)
        # The whole group, also after a normal exit: what the tests started must not outlive
        # them (a group outlives its leader while a member lives; its id is not reused till then).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()
    return proc.returncode, timed_out


async def _end_jail(bwrap: asyncio.subprocess.Process) -> None:
    """Kills the jail's init, which takes its whole PID namespace with it, and waits for bwrap,
    which exits only once that is done. Killing bwrap instead would return at once while the
    jail's processes still die: a fork bomb's would then count against the next run's limit."""
    for pid in await asyncio.to_thread(_children, bwrap.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(JAIL_TEARDOWN_S):
            await bwrap.wait()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc/*/stat: not every kernel lists them)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat_line = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat_line.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _layout(tmp_dir: Path, uid: int) -> Layout:
    as_root = os.geteuid() == 0
    # Not root: a user namespace, where the jail is `nobody` (and we, outside).
    return Layout(tmp_dir, uid if as_root else NOBODY, as_root)


def _prepare_probe(layout: Layout) -> None:
    layout.src.mkdir()
    prepare_layout(layout)


def _jail_argv(
    binary: str, layout: Layout, limits: Limits, command: list[str], forbidden: list[Path]
) -> list[str]:
    drop_to = layout.uid if layout.as_root else None
    launcher = launcher_argv(limits.rlimits(nproc=True), drop_to=drop_to, jailed=True)
    return bwrap_argv(binary, layout, limits, launcher + command, forbidden)


def _forbidden(policy: SandboxPolicy, *project_dirs: Path) -> list[Path]:
    """What no mount of the jail may show, or hold: the data dir and the project."""
    paths = [p.resolve() for p in project_dirs]
    return paths + ([policy.data_dir.resolve()] if policy.data_dir else [])


def _bwrap_env() -> dict[str, str]:
    # bwrap itself needs nothing; --clearenv and --setenv make the jail's environment.
    return {"PATH": "/usr/bin:/bin"}


def _prepare(
    project_dir: Path, layout: Layout, kind: Isolation, policy: SandboxPolicy, limits: Limits
) -> tuple[list[str], Path, dict[str, str]]:
    """(argv, cwd, env) of the run, and the files it needs in the layout (in a thread)."""
    copy_project(project_dir, layout.src)
    pin = not any((layout.src / name).exists() for name in _CONFIG_FILES)
    if pin:
        # Without a config of its own pytest would adopt one from a parent directory: pin an
        # empty one and the project as rootdir.
        layout.ini.write_text("[pytest]\n")
    if kind == "bwrap":
        prepare_layout(layout)
        binary = shutil.which(policy.bwrap) or policy.bwrap
        pytest = _pytest_argv(f"{OUT}/junit.xml", PINNED_INI if pin else None, PROJECT)
        argv = _jail_argv(binary, layout, limits, pytest, _forbidden(policy, project_dir))
        return argv, layout.root, _bwrap_env()
    # The fallback: the copy, as the server's user, limits but the process count, no network.
    layout.out.mkdir()
    guard_dir = None
    if kind == "socket-guard":
        guard_dir = layout.root / "guard"
        guard_dir.mkdir()
        (guard_dir / "sitecustomize.py").write_text(_GUARD)
    pytest = _pytest_argv(str(layout.out / "junit.xml"), str(layout.ini) if pin else None, str(layout.src))
    argv = launcher_argv(limits.rlimits(nproc=False), drop_to=None, jailed=False) + pytest
    if kind == "unshare":
        argv = ["unshare", "-rn", *argv]
    return argv, layout.src, _fallback_env(layout.src, guard_dir)


def _pytest_argv(junit: str, ini: str | None, rootdir: str) -> list[str]:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    argv += ["-o", "junit_family=xunit2"]
    if ini:
        argv += ["-c", ini, f"--rootdir={rootdir}"]
    return argv


def _fallback_env(project_dir: Path, guard_dir: Path | None) -> dict[str, str]:
    # Only what Python needs: the server's secrets (API keys) must not reach generated code.
    paths = [str(project_dir)] + ([str(guard_dir)] if guard_dir else [])
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(project_dir),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }


def copy_project(project_dir: Path, dest: Path) -> None:
    """The project's regular files and directories, nothing else: a symlink (to the signing
    key, say) or a FIFO (which would block the copy) left in the data dir is not carried over."""
    dest.mkdir()
    for dirpath, dirnames, filenames in os.walk(project_dir):
        here = Path(dirpath)
        target = dest / here.relative_to(project_dir)
        dirnames[:] = [d for d in dirnames if d not in HIDDEN_PARTS and not (here / d).is_symlink()]
        for name in dirnames:
            (target / name).mkdir()
        for name in filenames:
            source = here / name
            mode = source.lstat().st_mode
            if stat.S_ISREG(mode):
                shutil.copyfile(source, target / name, follow_symlinks=False)
                (target / name).chmod(0o755 if mode & 0o100 else 0o644)


# --- what the run says ----------------------------------------------------------------------


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


def _results(
    layout: Layout, kind: Isolation, limits: Limits, returncode: int | None, timed_out: bool
) -> TestResults:
    """What the run says, from the JUnit file and its output (in a thread)."""
    output = _read_tail(layout.output)
    junit = _read_regular(layout.out / "junit.xml", JUNIT_MAX_BYTES)
    counts = parse_junit(junit) if junit is not None else None
    passed, failed, errors, total = counts if counts else parse_summary(output)
    stopped = stop_reason(returncode, timed_out, limits)
    note = stopped or hit_limit(output, limits)
    if stopped or (returncode not in (0, 5) and failed == 0 and errors == 0):
        # Killed, contained, crashed (an exception out of pytest exits 1 too) or a usage
        # error: never report that as a pass.
        errors += 1
    if note:
        output += f"\n[autocoder] {note}\n"
    return TestResults(
        passed=passed,
        failed=failed,
        errors=errors,
        total=total,
        output_tail=output[-OUTPUT_TAIL_CHARS:],
        note=note,
        isolation=kind,
    )


def stop_reason(returncode: int | None, timed_out: bool, limits: Limits) -> str:
    """Why the sandbox stopped the run, or "" when pytest ended on its own."""
    if timed_out:
        return f"tests exceeded the time limit ({limits.timeout_s:g} s); everything they started was killed"
    if returncode == LAUNCH_FAILED:
        return "the sandbox could not start the tests"
    # A signal's death: negative from the process itself, 128 + n through bwrap.
    signum = -returncode if returncode is not None and returncode < 0 else 0
    if returncode is not None and 128 < returncode < 128 + 65:
        signum = returncode - 128
    if signum == signal.SIGXCPU:
        return f"tests exceeded the CPU time limit ({limits.cpu_s} s per process)"
    if signum == signal.SIGXFSZ:
        return f"tests exceeded the file size limit ({limits.file_size_mb} MB)"
    if signum:
        return f"pytest was killed by {signal.Signals(signum).name} (out of memory, or a limit)"
    return ""


def hit_limit(output: str, limits: Limits) -> str:
    """A limit a test ran into and failed on, as its output shows (the run itself went on)."""
    if f"[Errno {errno.EFBIG}]" in output:
        return f"a test hit the file size limit ({limits.file_size_mb} MB)"
    if "MemoryError" in output:
        return f"a test hit the memory limit ({limits.memory_mb} MB of address space)"
    return ""


def _read_tail(path: Path) -> str:
    with path.open("rb") as fh:
        # Only the end matters (the tail we report, pytest's summary line): a chatty test suite
        # must not cost us its whole output in memory.
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - OUTPUT_READ_BYTES))
        return fh.read().decode("utf-8", errors="replace")


def _read_regular(path: Path, max_bytes: int) -> str | None:
    """A file the tests could have written: only a regular file (not a link to a host file, not
    a FIFO that would block us), and only if small enough to parse."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        return fh.read(max_bytes).decode("utf-8", errors="replace")
