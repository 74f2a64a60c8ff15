"""The LLM path: AutoCoder's agents prompting a real OpenAI-compatible server that answers.

Two real processes: the scripted fake LLM (`tests.fakes.openai_server`) and the AutoCoder
server with OPENAI_API_KEY / OPENAI_BASE_URL pointing at it. Everything goes over real MCP.
The fake answers requests in order, and the agents of a session run one after another, so a
script of one answer per agent (planner, developer, tester) is exactly what each one gets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession

from tests.autocoder.conftest import AutoCoderServer, call, free_port, mcp_client, wait_finished

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "fake-model-llm-agents"
AGENTS = ["planner", "developer", "tester"]

# Built-in developer + tester output (what a fallback writes for a project without a spec file).
BUILTIN_DEVELOPER_FILES = {
    "app/__init__.py",
    "app/main.py",
    "app/store.py",
    "app/security.py",
    "requirements.txt",
    "README.md",
    "pytest.ini",
    "conftest.py",
    "tests/__init__.py",
}
BUILTIN_FILES = {"PLAN.md", *BUILTIN_DEVELOPER_FILES, "tests/test_api.py"}


class FakeLLM:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeLLM:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_server", "--port", str(self.port)],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the fake OpenAI server exited")
            try:
                if httpx.get(f"{self.url}/_fake/requests", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the fake OpenAI server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def script(self, answers: list[dict[str, Any]], fail_with: int | None = None) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.post(
                f"{self.url}/_fake/script", json={"answers": answers, "fail_with": fail_with}
            )
            response.raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"{self.url}/_fake/requests")
            response.raise_for_status()
            return list(response.json()["requests"])


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def llm_autocoder(fake_llm: FakeLLM) -> Iterator[AutoCoderServer]:
    server = AutoCoderServer(
        OPENAI_API_KEY="sk-fake-key",
        OPENAI_BASE_URL=f"{fake_llm.url}/v1",
        LLM_MODEL=MODEL,
        LLM_TIMEOUT_S="10",
        AUTOCODER_LLM="auto",
    ).start()
    yield server
    assert server.stop() == 0
    server.cleanup()


def answer(*files: tuple[str, str], message: str = "done") -> dict[str, str]:
    """A scripted assistant message: the JSON an agent asks the model for."""
    return {"text": json.dumps({"files": [{"path": p, "content": c} for p, c in files], "message": message})}


def role_of(request: dict[str, Any]) -> str:
    system = request["messages"][0]
    assert system["role"] == "system"
    for role in AGENTS:
        if f"You are the {role} agent" in system["content"]:
            return role
    raise AssertionError(f"no known role in the system prompt: {system['content'][:200]}")


def user_payload(request: dict[str, Any]) -> dict[str, Any]:
    user = request["messages"][-1]
    assert user["role"] == "user"
    return dict(json.loads(user["content"]))


async def run_session(s: ClientSession, name: str, task: str, **extra: Any) -> tuple[dict, dict[str, dict]]:
    project = await call(s, "create_project", name=name)
    queued = await call(s, "execute_coding_task", project_id=project["project_id"], task=task, **extra)
    assert queued["agents"] == AGENTS
    details = await wait_finished(s, queued["session_id"])
    listing = await call(s, "get_session_files", session_id=queued["session_id"])
    details["project_id"] = project["project_id"]
    return details, {f["path"]: f for f in listing["files"]}


async def download(files: dict[str, dict]) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=10) as http:
        out = {}
        for path, entry in files.items():
            response = await http.get(entry["download_url"])
            assert response.status_code == 200, path
            out[path] = response.text
        return out


PLAN = "# Calculator plan\n\n- add, subtract, multiply\n- three pytest tests\n"
CALC = (
    '"""A tiny calculator, written by the (fake) LLM."""\n\n\n'
    "def add(a: int, b: int) -> int:\n    return a + b\n\n\n"
    "def subtract(a: int, b: int) -> int:\n    return a - b\n\n\n"
    "def multiply(a: int, b: int) -> int:\n    return a * b\n"
)
CALC_TESTS = (
    "from calc.core import add, multiply, subtract\n\n\n"
    "def test_add() -> None:\n    assert add(2, 3) == 5\n\n\n"
    "def test_subtract() -> None:\n    assert subtract(2, 3) == -1\n\n\n"
    "def test_multiply() -> None:\n    assert multiply(4, 5) == 20\n"
)
LLM_FILES = {
    "PLAN.md": PLAN,
    "calc/__init__.py": "",
    "calc/core.py": CALC,
    "tests/test_calc.py": CALC_TESTS,
}


async def test_agents_write_what_the_llm_answers(fake_llm: FakeLLM, llm_autocoder: AutoCoderServer) -> None:
    task = "build a calculator app with add subtract multiply"
    await fake_llm.script(
        [
            answer(("PLAN.md", PLAN), message="plan written"),
            answer(("calc/__init__.py", ""), ("calc/core.py", CALC), message="calculator written"),
            answer(("tests/test_calc.py", CALC_TESTS), message="3 tests written"),
        ]
    )
    async with mcp_client(llm_autocoder.mcp_url) as s:
        health = await call(s, "check_system_health")
        details, files = await run_session(s, "calculator", task)
    assert health["llm"] == "openai"
    assert details["status"] == "succeeded", details
    assert details["agents"] == {"planner": "done", "developer": "done", "tester": "done"}
    assert not [e for e in details["events"] if "LLM unavailable" in e["message"]]
    # The agents' own messages (the model's "message") make it into the events.
    messages = " | ".join(e["message"] for e in details["events"])
    assert "plan written" in messages and "calculator written" in messages and "3 tests written" in messages

    # Exactly the model's files: the pipeline adds nothing of its own on the LLM path.
    assert set(files) == set(LLM_FILES)
    assert await download(files) == LLM_FILES
    assert {p: f["size"] for p, f in files.items()} == {p: len(c.encode()) for p, c in LLM_FILES.items()}

    # The tester really ran the model's three tests against the model's code.
    results = details["test_results"]
    assert (results["passed"], results["failed"], results["errors"]) == (3, 0, 0), results

    # One request per agent, in pipeline order, for the configured model, with the task inside.
    requests = await fake_llm.requests()
    assert [role_of(r) for r in requests] == AGENTS
    for request in requests:
        assert request["model"] == MODEL
        assert request["response_format"] == {"type": "json_object"}
        payload = user_payload(request)
        assert payload["task"] == task
        assert payload["project"]["name"] == "calculator"
        assert payload["pipeline"] == AGENTS
    planner, developer, tester = (user_payload(r) for r in requests)
    # Later agents see the plan the LLM planner wrote and the files written before them.
    assert planner["plan"] == "" and planner["existing_files"] == []
    assert developer["plan"] == PLAN and developer["existing_files"] == ["PLAN.md"]
    assert tester["plan"] == PLAN
    assert tester["existing_files"] == ["PLAN.md", "calc/__init__.py", "calc/core.py"]


async def test_failing_llm_tests_fail_the_session(fake_llm: FakeLLM, llm_autocoder: AutoCoderServer) -> None:
    """Proof the sandbox runs the model's tests as written: a wrong one fails the session."""
    wrong = CALC_TESTS + "\n\ndef test_wrong() -> None:\n    assert add(2, 2) == 5\n"
    await fake_llm.script(
        [
            answer(("PLAN.md", PLAN)),
            answer(("calc/__init__.py", ""), ("calc/core.py", CALC)),
            answer(("tests/test_calc.py", wrong)),
        ]
    )
    async with mcp_client(llm_autocoder.mcp_url) as s:
        details, files = await run_session(s, "calculator-wrong", "build a calculator app")
    assert details["status"] == "failed", details
    assert details["agents"]["tester"] == "failed"
    results = details["test_results"]
    assert (results["passed"], results["failed"], results["errors"]) == (3, 1, 0), results
    assert set(files) == set(LLM_FILES)


# Generated tests that leave processes behind: one in pytest's process group, one detached
# (its own session) that keeps pytest's stdout open for 20 s (`-s`: no capture, so the
# children get pytest's own stdout). Their durations tell them apart in the host's process
# list (the jail's PIDs mean nothing outside it). And the memory limit applies.
CHILD_SLEEP, DETACHED_SLEEP = "20.0417", "20.0419"
SANDBOX_TESTS = f"""import resource
import subprocess


def test_the_memory_limit_applies() -> None:
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == 2048 * 1024 * 1024


def test_leaves_processes_behind() -> None:
    subprocess.Popen(["sleep", "{CHILD_SLEEP}"])
    subprocess.Popen(["sleep", "{DETACHED_SLEEP}"], start_new_session=True)
"""


def sleeping(duration: str) -> list[int]:
    """Live `sleep <duration>` processes on this machine (a zombie is dead already)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")[:2]
            status = (proc / "status").read_text()
        except OSError:
            continue
        if argv == [b"sleep", duration.encode()] and "\nState:\tZ" not in status:
            pids.append(int(proc.name))
    return pids


async def test_the_sandbox_waits_for_pytest_only_and_kills_what_it_left(
    fake_llm: FakeLLM, llm_autocoder: AutoCoderServer
) -> None:
    await fake_llm.script(
        [
            answer(("PLAN.md", PLAN)),
            answer(
                ("calc/__init__.py", ""), ("calc/core.py", CALC), ("pytest.ini", "[pytest]\naddopts = -s\n")
            ),
            answer(("tests/test_sandbox.py", SANDBOX_TESTS)),
        ]
    )
    async with mcp_client(llm_autocoder.mcp_url) as s:
        started = time.monotonic()
        details, _ = await run_session(s, "sandbox", "build a calculator app")
        elapsed = time.monotonic() - started
    assert details["status"] == "succeeded", details
    assert details["test_results"]["passed"] == 2, details["test_results"]
    # Not held up by the detached process that still has pytest's output open...
    assert elapsed < 15, elapsed
    # ...and what the tests left in their process group did not outlive them. In the jail the
    # detached one died too (with the jail's PID namespace); without it, it ends on its own.
    assert sleeping(CHILD_SLEEP) == []
    if "generated tests run in a bubblewrap jail" in llm_autocoder.log_path.read_text():
        assert sleeping(DETACHED_SLEEP) == []


async def test_garbage_answers_fall_back_to_the_builtin_generators(
    fake_llm: FakeLLM, llm_autocoder: AutoCoderServer
) -> None:
    await fake_llm.script(
        [
            answer(("PLAN.md", PLAN)),
            {"text": "Sure! Here is your code: def add(a, b): return a + b"},  # developer: not JSON
            {"text": json.dumps({"files": []})},  # tester: JSON, but no files
        ]
    )
    async with mcp_client(llm_autocoder.mcp_url) as s:
        details, files = await run_session(s, "notes", "build a notes API")
    assert details["status"] == "succeeded", details
    assert details["agents"] == {"planner": "done", "developer": "done", "tester": "done"}
    fallbacks = [e["agent"] for e in details["events"] if "LLM unavailable" in e["message"]]
    assert fallbacks == ["developer", "tester"]
    # The planner's file is the model's, the others the built-in generators'.
    assert set(files) == BUILTIN_FILES
    content = await download(files)
    assert content["PLAN.md"] == PLAN
    assert "FastAPI" in content["app/main.py"] and "/notes" in content["app/main.py"]
    assert "def test_" in content["tests/test_api.py"]
    assert details["test_results"]["passed"] >= 3 and details["test_results"]["failed"] == 0
    assert [role_of(r) for r in await fake_llm.requests()] == AGENTS


async def test_http_500_falls_back_to_the_builtin_generators(
    fake_llm: FakeLLM, llm_autocoder: AutoCoderServer
) -> None:
    await fake_llm.script([], fail_with=500)
    async with mcp_client(llm_autocoder.mcp_url) as s:
        details, files = await run_session(s, "todo", "build a todo API")
    assert details["status"] == "succeeded", details
    fallbacks = [e["agent"] for e in details["events"] if "LLM unavailable" in e["message"]]
    assert fallbacks == AGENTS
    assert set(files) == BUILTIN_FILES
    content = await download(files)
    assert content["PLAN.md"].startswith("# todo — plan")
    assert "/todos" in content["app/main.py"]
    assert details["test_results"]["passed"] >= 3 and details["test_results"]["failed"] == 0
    # The client retries once (max_retries=1), then the agent falls back.
    roles = [role_of(r) for r in await fake_llm.requests()]
    assert roles == [role for role in AGENTS for _ in range(2)]


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def check_nothing_escaped(data_dir: Path, project_dir: Path, before: set[str]) -> None:
    new = files_under(data_dir) - before
    outside = {p for p in new if not (data_dir / p).resolve().is_relative_to(project_dir)}
    assert outside <= {"index.json", "journal.jsonl"}, outside  # the index is the only other write
    assert files_under(project_dir) == BUILTIN_FILES
    assert not Path("/tmp/autocoder-llm-escape").exists()
    assert not (data_dir / "etc").exists() and not (data_dir / "x").exists()


@pytest.mark.parametrize(
    "bad_path",
    [
        "../../etc/x",
        "../x",
        "tests/../../../x",
        "/tmp/autocoder-llm-escape/x",
        # Not escapes, but paths the store refuses: before the fix they failed the whole session.
        "",
        ".",
        "..\\..\\x",
        ".autocoder/x",
        "PLAN.md/x",  # under a file of the same reply / the project: a file-directory clash
    ],
)
async def test_paths_outside_the_project_are_never_written(
    fake_llm: FakeLLM, llm_autocoder: AutoCoderServer, bad_path: str
) -> None:
    data_dir = llm_autocoder.data_dir
    before = files_under(data_dir)
    # The bad path comes with a good one: the whole answer is refused, nothing of it written.
    await fake_llm.script(
        [
            answer(("PLAN.md", PLAN), (bad_path, "escaped\n")),
            answer(("calc/core.py", CALC), (bad_path, "escaped\n")),
            answer(("tests/test_calc.py", CALC_TESTS), (bad_path, "escaped\n")),
        ]
    )
    async with mcp_client(llm_autocoder.mcp_url) as s:
        details, files = await run_session(s, "escape", "build a todo API")
    assert details["status"] == "succeeded", details
    fallbacks = [e["agent"] for e in details["events"] if "LLM unavailable" in e["message"]]
    assert fallbacks == AGENTS
    assert set(files) == BUILTIN_FILES

    check_nothing_escaped(data_dir, data_dir / "projects" / details["project_id"], before)
