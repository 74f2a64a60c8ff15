"""The tester's jail (docs/adr/0005-sandbox.md): generated tests that try to escape are contained.

Each hostile project is written by hand on disk, in a data dir laid out as AutoCoder's (a
signing key, another user's project), and its tests *pass only if the attack works*: a
contained attack is a failed test, and the run reports failure. The runner is called directly
(`run_pytest` with an explicit policy), then the same is shown end to end through a real
AutoCoder process: sessions fail honestly, and AutoCoder keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autocoder.jail import JAIL_UIDS, NOBODY, Limits
from autocoder.sandbox import SandboxPolicy, SandboxUnavailableError, run_pytest
from autocoder.sandbox import TestResults as Results  # not a test class

from tests.autocoder.conftest import AutoCoderServer, call, mcp_client, wait_finished
from tests.autocoder.test_llm_agents import CALC, CALC_TESTS, PLAN, FakeLLM, answer, run_session

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

SECRET = f"signing-key-{secrets.token_hex(8)}"
BOB_SECRET = f"bob-only-{secrets.token_hex(8)}"
ENV_SECRET = f"env-secret-{secrets.token_hex(8)}"
PASSING = "def test_still_works() -> None:\n    assert sum([1, 2, 3]) == 6\n"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """AutoCoder's data dir as the server lays it out: the key, and another user's project."""
    data = tmp_path / "data"
    (data / "projects" / "proj_bob" / "app").mkdir(parents=True)
    (data / "signing.key").write_text(SECRET)
    (data / "projects" / "proj_bob" / "app" / "secret_of_bob.py").write_text(f"TOKEN = {BOB_SECRET!r}\n")
    return data


@pytest.fixture(autouse=True)
def own_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The runner's temp dirs land here, so each test can see that nothing is left behind."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    left = [p.name for p in scratch.iterdir() if p.name.startswith(("autocoder-tests-", "autocoder-probe-"))]
    assert left == [], "the throwaway copy was not removed"


def project(data_dir: Path, name: str, tests: str, **files: str) -> Path:
    """A project of AutoCoder's (`projects/<name>`) whose tests are `tests`."""
    root = data_dir / "projects" / name
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_generated.py").write_text(tests)
    for path, content in files.items():
        (root / path).write_text(content)
    return root


def jail(data_dir: Path, **limits: Any) -> SandboxPolicy:
    # "bwrap": the jail or no run at all, so a broken jail cannot pass for a working one.
    return SandboxPolicy(mode="bwrap", production=True, data_dir=data_dir, limits=Limits(**limits))


async def run(root: Path, policy: SandboxPolicy, timeout_s: float = 30) -> Results:
    return await run_pytest(root, timeout_s, policy.limits.memory_mb, policy)


def assert_contained(results: Results, attacks: int) -> None:
    """Every attack failed, and the run says so."""
    assert results.isolation == "bwrap"
    assert (results.passed, results.failed) == (0, attacks), results.output_tail
    for secret in (SECRET, BOB_SECRET, ENV_SECRET):
        assert secret not in results.output_tail


async def assert_still_works(data_dir: Path, policy: SandboxPolicy) -> None:
    root = project(data_dir, f"proj_ok_{secrets.token_hex(3)}", PASSING)
    results = await run(root, policy)
    assert (results.passed, results.failed, results.errors) == (1, 0, 0), results.output_tail
    assert results.note == ""


@needs_bwrap
async def test_the_signing_key_and_the_environment_are_out_of_reach(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOCODER_SIGNING_KEY", ENV_SECRET)
    tests = f"""import os
from pathlib import Path


def test_relative_path() -> None:
    print(Path("../../signing.key").read_text())


def test_absolute_path() -> None:
    print(Path({str(data_dir / "signing.key")!r}).read_text())


def test_environment() -> None:
    print(os.environ["AUTOCODER_SIGNING_KEY"])


def test_other_processes_environment() -> None:
    found = []
    for environ in Path("/proc").glob("*/environ"):
        try:
            found.append(environ.read_bytes())
        except OSError:
            pass
    assert any(b"AUTOCODER_SIGNING_KEY" in data for data in found)
"""
    results = await run(project(data_dir, "proj_alice", tests), jail(data_dir))
    assert_contained(results, 4)
    assert "FileNotFoundError" in results.output_tail and "KeyError" in results.output_tail


@needs_bwrap
async def test_another_users_project_cannot_be_listed_or_read(data_dir: Path) -> None:
    bob = data_dir / "projects" / "proj_bob"
    tests = f"""import os
from pathlib import Path


def test_list_by_absolute_path() -> None:
    print(os.listdir({str(bob)!r}))


def test_read_by_absolute_path() -> None:
    print(Path({str(bob / "app" / "secret_of_bob.py")!r}).read_text())


def test_list_the_siblings() -> None:
    assert "proj_bob" in os.listdir("..")


def test_search_the_filesystem() -> None:
    tops = ("/tmp", "/project", "/autocoder", "/root", "/work")
    assert any(any(Path(top).rglob("secret_of_bob.py")) for top in tops)
"""
    results = await run(project(data_dir, "proj_alice", tests), jail(data_dir))
    assert_contained(results, 4)


@needs_bwrap
async def test_no_connection_reaches_the_host(data_dir: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        tests = f"""import socket


def test_loopback_listener_of_the_host() -> None:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()


def test_the_internet() -> None:
    socket.create_connection(("1.1.1.1", 53), timeout=3).close()
"""
        results = await run(project(data_dir, "proj_alice", tests), jail(data_dir))
        assert_contained(results, 2)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever arrived


@needs_bwrap
async def test_writes_stop_at_the_file_size_and_space_limits(data_dir: Path) -> None:
    tests = GIGABYTE  # (below) 1 GB three ways: in the project, in /tmp, in many files
    results = await run(project(data_dir, "proj_alice", tests), jail(data_dir, file_size_mb=64, disk_mb=128))
    assert_contained(results, 3)
    assert "[Errno 27] File too large" in results.output_tail  # RLIMIT_FSIZE
    assert "[Errno 28] No space left on device" in results.output_tail  # the tmpfs size
    assert results.note == "a test hit the file size limit (64 MB)"
    assert results.output_tail.rstrip().endswith("[autocoder] a test hit the file size limit (64 MB)")
    await assert_still_works(data_dir, jail(data_dir))


# --- the fork bomb ---------------------------------------------------------------------------


def jailed_processes() -> dict[str, int]:
    """Live processes on this machine run by a jail's uid, counted per PID namespace (each jail
    has its own; other test runs may be jailed at the same time)."""
    uids = set(JAIL_UIDS) | {NOBODY}
    counts: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            namespace = os.readlink(entry / "ns" / "pid")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) in uids and not fields["State"].strip().startswith("Z"):
            counts[namespace] = counts.get(namespace, 0) + 1
    return counts


FORK_UNTIL_REFUSED = """import os
import signal
import time


def test_forks_are_refused_at_the_limit() -> None:
    children = []
    try:
        while len(children) < 1000:
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    except BlockingIOError:
        pass
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
    print(f"FORKS={len(children)}")
    assert len(children) < 1000
"""

FORK_BOMB = """import os


def test_fork_bomb() -> None:
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="counts the jail's processes by its uid on the host")
@pytest.mark.timeout(120)
async def test_a_fork_bomb_is_bounded_and_stopped(data_dir: Path) -> None:
    limit = 32
    policy = jail(data_dir, max_processes=limit)
    # First, bounded: the jail really refuses forks at its limit (else no bomb goes off here).
    verbose = {"pytest.ini": "[pytest]\naddopts = -s\n"}
    bounded = project(data_dir, "proj_forks", FORK_UNTIL_REFUSED, **verbose)
    results = await run(bounded, policy)
    assert results.passed == 1, results.output_tail
    forks = int(results.output_tail.split("FORKS=")[1].split()[0])
    assert 0 < forks < limit  # pytest itself is one of the `limit`

    before = set(jailed_processes())
    peak: dict[str, int] = {}
    slowest = 0.0
    done = False

    def watch() -> None:
        nonlocal slowest
        while not done:
            for namespace, count in jailed_processes().items():
                if namespace not in before:
                    peak[namespace] = max(peak.get(namespace, 0), count)
            started = time.monotonic()
            subprocess.run(["true"], check=True)  # the machine still starts processes at once
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.1)

    watcher = asyncio.create_task(asyncio.to_thread(watch))
    started = time.monotonic()
    try:
        results = await run(project(data_dir, "proj_bomb", FORK_BOMB), policy, timeout_s=8)
    finally:
        done = True
        await watcher
    elapsed = time.monotonic() - started

    assert 8 <= elapsed < 20, elapsed  # stopped by the wall clock, and the jail is gone at once
    assert results.errors == 1 and results.passed == 0, results
    assert results.note == "tests exceeded the time limit (8 s); everything they started was killed"
    assert results.output_tail.rstrip().endswith(results.note)
    bomb = max(peak, key=lambda ns: peak[ns])  # other jails may run at once: ours is the biggest
    assert limit - 5 <= peak[bomb] <= limit, peak  # it did go off, and no further than the limit
    assert slowest < 2, slowest
    assert bomb not in jailed_processes()  # nothing of it is left
    await assert_still_works(data_dir, policy)


# --- time, and the limits the jail sets ------------------------------------------------------


@needs_bwrap
async def test_a_hanging_test_is_killed_at_the_time_limit(data_dir: Path) -> None:
    tests = "import time\n\n\ndef test_hangs() -> None:\n    time.sleep(600)\n"
    started = time.monotonic()
    results = await run(project(data_dir, "proj_hang", tests), jail(data_dir), timeout_s=3)
    assert time.monotonic() - started < 10
    assert (results.passed, results.errors) == (0, 1)
    assert "tests exceeded the time limit (3 s)" in results.output_tail


@needs_bwrap
async def test_the_jail_runs_unprivileged_with_its_limits(data_dir: Path) -> None:
    tests = """import os
import resource
import socket
from pathlib import Path

MB = 1024 * 1024


def test_who_and_where() -> None:
    assert os.getuid() != 0 and os.geteuid() != 0
    assert os.getcwd() == "/project" and os.environ["HOME"] == "/tmp"
    assert set(os.environ) <= {
        "HOME", "LANG", "PATH", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTHONDONTWRITEBYTECODE",
        "PYTHONHASHSEED", "PYTHONPATH", "PWD", "PYTEST_CURRENT_TEST", "PYTEST_VERSION",
    }
    status = Path("/proc/self/status").read_text()
    assert "CapEff:\\t0000000000000000" in status and "NoNewPrivs:\\t1" in status
    assert socket.gethostbyname("localhost") == "127.0.0.1"


def test_limits() -> None:
    assert resource.getrlimit(resource.RLIMIT_AS) == (512 * MB, 512 * MB)
    assert resource.getrlimit(resource.RLIMIT_FSIZE) == (8 * MB, 8 * MB)
    assert resource.getrlimit(resource.RLIMIT_NPROC) == (40, 40)
    assert resource.getrlimit(resource.RLIMIT_CPU)[0] == 30


def test_read_only_outside_the_project() -> None:
    Path("written.txt").write_text("the project copy is writable")
    for path in ("/usr/x", "/etc/x", "/autocoder/src/x", "/x"):
        try:
            Path(path).write_text("x")
        except OSError:
            continue
        raise AssertionError(f"{path} is writable")
"""
    policy = jail(data_dir, memory_mb=512, file_size_mb=8, max_processes=40)
    results = await run(project(data_dir, "proj_alice", tests), policy)
    assert (results.passed, results.failed, results.errors) == (3, 0, 0), results.output_tail
    # The tests wrote into their copy, never into the project in the data dir.
    assert not (data_dir / "projects" / "proj_alice" / "written.txt").exists()


@needs_bwrap
async def test_symlinks_and_fifos_in_the_project_are_not_copied(data_dir: Path) -> None:
    tests = "from pathlib import Path\n\n\ndef test_link() -> None:\n    print(Path('key').read_text())\n"
    root = project(data_dir, "proj_alice", tests)
    (root / "key").symlink_to(data_dir / "signing.key")
    os.mkfifo(root / "pipe")  # would block a naive copy forever
    results = await run(root, jail(data_dir))
    assert_contained(results, 1)


# --- without the jail ------------------------------------------------------------------------


def missing_bwrap() -> str:
    # A fresh name per test: the decision is made once per policy and remembered.
    return f"/nonexistent/bwrap-{secrets.token_hex(4)}"


async def test_production_refuses_to_run_tests_without_the_jail(data_dir: Path) -> None:
    policy = SandboxPolicy(mode="auto", production=True, bwrap=missing_bwrap(), data_dir=data_dir)
    with pytest.raises(SandboxUnavailableError) as refused:
        await run(project(data_dir, "proj_alice", PASSING), policy)
    message = str(refused.value)
    assert "generated tests were not run" in message and "WACODER_ENV=production" in message
    assert "not found on PATH" in message and "AUTOCODER_SANDBOX=none" in message


async def test_sandbox_bwrap_refuses_even_in_development(data_dir: Path) -> None:
    policy = SandboxPolicy(mode="bwrap", production=False, bwrap=missing_bwrap(), data_dir=data_dir)
    with pytest.raises(SandboxUnavailableError, match="AUTOCODER_SANDBOX=bwrap"):
        await run(project(data_dir, "proj_alice", PASSING), policy)


async def test_development_falls_back_with_one_warning(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = SandboxPolicy(mode="auto", production=False, bwrap=missing_bwrap(), data_dir=data_dir)
    root = project(data_dir, "proj_alice", PASSING)
    with caplog.at_level(logging.WARNING, logger="autocoder.sandbox"):
        first = await run(root, policy)
        second = await run(root, policy)
    for results in (first, second):
        assert (results.passed, results.failed, results.errors) == (1, 0, 0), results.output_tail
        assert results.isolation in ("unshare", "socket-guard")
    warnings = [r.getMessage() for r in caplog.records if "WITHOUT the jail" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "bubblewrap unavailable" in warnings[0]


async def test_sandbox_none_runs_unjailed_even_in_production(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = SandboxPolicy(mode="none", production=True, bwrap=missing_bwrap(), data_dir=data_dir)
    with caplog.at_level(logging.WARNING, logger="autocoder.sandbox"):
        results = await run(project(data_dir, "proj_alice", PASSING), policy)
    assert (results.passed, results.errors) == (1, 0)
    assert results.isolation in ("unshare", "socket-guard")
    assert any("AUTOCODER_SANDBOX=none" in r.getMessage() for r in caplog.records)


async def test_unjailed_runs_keep_their_limits_and_the_time_kill(data_dir: Path) -> None:
    policy = SandboxPolicy(mode="none", production=False, data_dir=data_dir)
    tests = """import time

MB = b"x" * (1 << 20)


def test_big_file() -> None:
    with open("big.bin", "wb") as fh:
        for _ in range(64):
            fh.write(MB)


def test_hangs() -> None:
    time.sleep(600)
"""
    results = await run(project(data_dir, "proj_alice", tests), policy, timeout_s=4)
    assert results.passed == 0 and results.errors == 1
    assert "tests exceeded the time limit (4 s)" in results.output_tail


# --- end to end: a real AutoCoder -----------------------------------------------------------


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def jailed_autocoder(fake_llm: FakeLLM) -> Iterator[AutoCoderServer]:
    server = AutoCoderServer(
        OPENAI_API_KEY="sk-fake-key-of-the-server",
        OPENAI_BASE_URL=f"{fake_llm.url}/v1",
        LLM_MODEL="fake-model-sandbox",
        LLM_TIMEOUT_S="10",
        AUTOCODER_LLM="auto",
        AUTOCODER_TEST_TIMEOUT_S="6",
    )
    # The key the download links are signed with lives in the data dir, as by default.
    del server.env["AUTOCODER_SIGNING_KEY"]
    server.start()
    yield server
    assert server.stop() == 0
    server.cleanup()


async def llm_session(fake_llm: FakeLLM, server: AutoCoderServer, name: str, tests: str) -> dict[str, Any]:
    await fake_llm.script(
        [
            answer(("PLAN.md", PLAN)),
            answer(("calc/__init__.py", ""), ("calc/core.py", CALC)),
            answer(("tests/test_calc.py", tests)),
        ]
    )
    async with mcp_client(server.mcp_url) as s:
        details, _ = await run_session(s, name, "build a calculator app")
    return details


@needs_bwrap
async def test_a_hostile_session_fails_honestly_and_autocoder_keeps_serving(
    fake_llm: FakeLLM, jailed_autocoder: AutoCoderServer
) -> None:
    data_dir = jailed_autocoder.data_dir
    key = (data_dir / "signing.key").read_bytes()
    # Another user's project, with something of theirs in it.
    await fake_llm.script([answer(("PLAN.md", f"# Bob's plan\n\n{BOB_SECRET}\n"))])
    async with mcp_client(jailed_autocoder.mcp_url) as s:
        bob = await call(s, "create_project", caller="caller-b", name="bob")
        queued = await call(
            s,
            "execute_coding_task",
            caller="caller-b",
            project_id=bob["project_id"],
            task="plan it",
            agents=["planner"],
        )
        assert (await wait_finished(s, queued["session_id"], caller="caller-b"))["status"] == "succeeded"
    bob_dir = data_dir / "projects" / bob["project_id"]
    assert BOB_SECRET in (bob_dir / "PLAN.md").read_text()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        hostile = f"""import os
import socket
from pathlib import Path


def test_key_relative() -> None:
    print(Path("../../signing.key").read_bytes())


def test_key_absolute() -> None:
    print(Path({str(data_dir / "signing.key")!r}).read_bytes())


def test_other_project() -> None:
    print(os.listdir({str(bob_dir)!r}), Path({str(bob_dir / "PLAN.md")!r}).read_text())


def test_server_environment() -> None:
    print(os.environ["OPENAI_API_KEY"])


def test_host_listener() -> None:
    socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}), timeout=3).close()
"""
        details = await llm_session(fake_llm, jailed_autocoder, "hostile", hostile)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert details["status"] == "failed" and details["agents"]["tester"] == "failed", details
    results = details["test_results"]
    assert (results["passed"], results["failed"], results["errors"]) == (0, 5, 0), results
    tail = results["output_tail"]
    for secret in (key.hex(), repr(key)[2:30], BOB_SECRET, "sk-fake-key-of-the-server"):
        assert secret not in tail
    assert "tests did not pass" in details["summary"]

    # A test that never ends: killed at AUTOCODER_TEST_TIMEOUT_S, and the session says why.
    hang = "import time\n\n\ndef test_hangs() -> None:\n    time.sleep(600)\n"
    started = time.monotonic()
    details = await llm_session(fake_llm, jailed_autocoder, "hangs", hang)
    assert time.monotonic() - started < 20
    assert details["status"] == "failed", details
    results = details["test_results"]
    assert (results["passed"], results["errors"]) == (0, 1), results
    assert "tests exceeded the time limit (6 s)" in results["output_tail"]
    assert "tests did not pass (tests exceeded the time limit" in details["summary"]

    # AutoCoder keeps serving: a sound project's tests pass, in the jail.
    details = await llm_session(fake_llm, jailed_autocoder, "sound", CALC_TESTS)
    assert details["status"] == "succeeded", details
    assert details["test_results"]["passed"] == 3
    async with mcp_client(jailed_autocoder.mcp_url) as s:
        health = await call(s, "check_system_health")
        assert health["status"] == "ok" and health["sandbox"] == "bwrap"
    log = jailed_autocoder.log_path.read_text()
    assert log.count("generated tests run in a bubblewrap jail") == 1


GIGABYTE = """from pathlib import Path

MB = b"x" * (1 << 20)


def write_a_gigabyte(path: str) -> None:
    with open(path, "wb") as fh:
        for _ in range(1024):
            fh.write(MB)


def test_in_the_project() -> None:
    write_a_gigabyte("big.bin")


def test_in_tmp() -> None:
    write_a_gigabyte("/tmp/big.bin")


def test_many_files_up_to_a_gigabyte() -> None:
    for n in range(1024 // 16):
        with open(f"/tmp/part{n}.bin", "wb") as fh:
            for _ in range(16):
                fh.write(MB)
"""


def disk_usage(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@needs_bwrap
@pytest.mark.timeout(240)
async def test_sessions_that_fork_without_bound_or_write_a_gigabyte_fail_honestly(
    fake_llm: FakeLLM, jailed_autocoder: AutoCoderServer
) -> None:
    """Through a real AutoCoder with its default limits (128 processes, 64 MB files, 256 MB
    of tmpfs): each session is contained and reported failed, and AutoCoder serves on."""
    # Counting the jail's processes by its uid needs root (as test_a_fork_bomb_is_bounded_and_stopped).
    counting = os.geteuid() == 0
    before = set(jailed_processes()) if counting else set()
    peak: dict[str, int] = {}
    done = False

    def watch() -> None:
        while counting and not done:
            for namespace, count in jailed_processes().items():
                if namespace not in before:
                    peak[namespace] = max(peak.get(namespace, 0), count)
            time.sleep(0.1)

    watcher = asyncio.create_task(asyncio.to_thread(watch))
    try:
        details = await llm_session(fake_llm, jailed_autocoder, "forks", FORK_BOMB)
    finally:
        done = True
        await watcher
    assert details["status"] == "failed" and details["agents"]["tester"] == "failed", details
    results = details["test_results"]
    assert (results["passed"], results["failed"], results["errors"]) == (0, 0, 1), results
    stopped = "tests exceeded the time limit (6 s); everything they started was killed"
    assert stopped in results["output_tail"]
    assert f"tests did not pass ({stopped})" in details["summary"]
    if counting:
        bomb = max(peak, key=lambda ns: peak[ns])  # other jails may run at once: ours is the biggest
        assert 10 < peak[bomb] <= 128, peak  # it went off, and no further than the limit
        assert bomb not in jailed_processes()  # nothing of it is left

    used = disk_usage(jailed_autocoder.data_dir)
    details = await llm_session(fake_llm, jailed_autocoder, "gigabyte", GIGABYTE)
    assert details["status"] == "failed" and details["agents"]["tester"] == "failed", details
    results = details["test_results"]
    assert (results["passed"], results["failed"], results["errors"]) == (0, 3, 0), results
    assert "[Errno 27] File too large" in results["output_tail"]  # RLIMIT_FSIZE
    assert "[Errno 28] No space left on device" in results["output_tail"]  # the jail's tmpfs
    assert "tests did not pass (a test hit the file size limit (64 MB))" in details["summary"]
    # Written into the jail's throwaway tmpfs, never into AutoCoder's data dir.
    assert disk_usage(jailed_autocoder.data_dir) - used < 1 << 20
    assert not list(jailed_autocoder.data_dir.rglob("big.bin"))

    # AutoCoder keeps serving: a sound project's tests pass, in the jail.
    details = await llm_session(fake_llm, jailed_autocoder, "sound-after", CALC_TESTS)
    assert details["status"] == "succeeded", details
    assert details["test_results"]["passed"] == 3
    async with mcp_client(jailed_autocoder.mcp_url) as s:
        health = await call(s, "check_system_health")
        assert health["status"] == "ok" and health["sandbox"] == "bwrap"


PRODUCTION = {"WACODER_ENV": "production", "PHONE_HASH_SALT": "salt-of-the-sandbox-tests"}


async def builtin_session(server: AutoCoderServer, api_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A session's details, and AutoCoder's health after it."""
    async with mcp_client(server.mcp_url, {"Authorization": f"Bearer {api_key}"}) as s:
        project_ = await call(s, "create_project", name="todo")
        queued = await call(
            s, "execute_coding_task", project_id=project_["project_id"], task="build a todo API"
        )
        details = await wait_finished(s, queued["session_id"], timeout_s=60)
        health = await call(s, "check_system_health")
        assert health["status"] == "ok"
    return details, health


@pytest.mark.parametrize("sandbox", ["auto", "none"])
async def test_production_without_bubblewrap(sandbox: str) -> None:
    """No bwrap on PATH: production refuses to run generated tests unless told
    AUTOCODER_SANDBOX=none, and says why; either way AutoCoder keeps serving."""
    api_key = secrets.token_hex(16)
    bare_path = Path(tempfile.mkdtemp(prefix="autocoder-path-"))
    (bare_path / "unshare").symlink_to(shutil.which("unshare") or "/usr/bin/unshare")
    server = AutoCoderServer(
        **PRODUCTION,
        AUTOCODER_API_KEY=api_key,
        AUTOCODER_LLM="builtin",
        AUTOCODER_SANDBOX=sandbox,
        PATH=str(bare_path),  # no bwrap here
    ).start()
    try:
        details, health = await builtin_session(server, api_key)
    finally:
        assert server.stop() == 0
        log = server.log_path.read_text()
        server.cleanup()
        shutil.rmtree(bare_path)
    if sandbox == "auto":
        assert details["status"] == "failed", details
        assert details["agents"]["tester"] == "failed"
        assert details["test_results"] is None  # not run at all
        assert "generated tests were not run" in details["summary"]
        assert "WACODER_ENV=production" in details["summary"]
        assert "refused" in log
        assert health["sandbox"] == "refused"  # an operator sees it without reading logs
    else:
        assert details["status"] == "succeeded", details
        assert details["test_results"]["passed"] >= 3
        assert "AUTOCODER_SANDBOX=none" in log
        assert health["sandbox"] != "bwrap"
