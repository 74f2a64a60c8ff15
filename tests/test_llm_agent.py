"""Free text through the LLM agent, against a local OpenAI-compatible server that scripts
tool calls: the agent must call the right AutoCoder tool with the right arguments, feed the
result back, and send the LLM's answer; the LLM sees the system prompt and that user's last
10 exchanges only."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from agent.prompts import WHATSAPP_SYSTEM_PROMPT
from devtools.stack import free_port
from wacoder import templates
from wacoder.whatsapp_text import MAX_MESSAGE_CHARS

from tests.harness import Conversation, wait_for_port


class FakeLlm:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai_server", "--port", str(self.port)]
        )
        wait_for_port(self.port)

    def stack_env(self) -> dict[str, str]:
        """What a stack needs to talk to this LLM."""
        return {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": f"{self.url}/v1",
            "LLM_MODEL": "gpt-test",
            # Room for a first call on a busy machine (CI saw 8 s run out); the timeout case
            # waits far longer than this.
            "LLM_TIMEOUT_S": "15",
            # AutoCoder's own agents would use the same LLM; here they use their built-in
            # generators (the UI/UX one notes a design reference).
            "AUTOCODER_LLM": "builtin",
        }

    def script(self, answers: list[dict[str, Any]], fail_with: int | None = None, delay_s: float = 0) -> None:
        httpx.post(
            f"{self.url}/_fake/script", json={"answers": answers, "fail_with": fail_with, "delay_s": delay_s}
        )

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_fake/requests").json()["requests"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # still holding a deliberately slow answer open
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLlm]:
    fake = FakeLlm()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack_overrides(llm: FakeLlm) -> dict[str, str]:
    return llm.stack_env()


@pytest.fixture
def carol(new_user: Callable[[], Conversation]) -> Conversation:
    return new_user()


@pytest.fixture
def dave(new_user: Callable[[], Conversation]) -> Conversation:
    return new_user()


def tool_calls(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        call for m in request["messages"] if m["role"] == "assistant" for call in m.get("tool_calls") or []
    ]


def test_llm_calls_the_right_tool_and_answers_with_its_result(carol: Conversation, llm: FakeLlm) -> None:
    llm.script(
        [
            {
                "tool_call": {
                    "name": "create_project",
                    "arguments": {"name": "shop", "description": "an online store"},
                }
            },
            {"text": "Your project is ready: {tool_result}"},
        ]
    )
    reply = carol.ask("I need a project for my online store, call it shop", timeout_s=40)

    project_id = re.search(r"proj_[0-9a-f]+", reply).group(0)
    assert reply.startswith("Your project is ready:") and '"name": "shop"' in reply
    first, second = llm.requests()
    assert first["model"] == "gpt-test"
    assert {t["function"]["name"] for t in first["tools"]} >= {
        "create_project",
        "list_projects",
        "execute_coding_task",
        "get_session_details",
        "get_session_files",
        "check_system_health",
    }
    assert tool_calls(second)[0]["function"]["name"] == "create_project"
    # The project really exists at AutoCoder, for this user, and is now the active one.
    llm.script([])
    assert project_id in carol.ask("/list") and "← active" in carol.ask("/list")


def test_llm_starts_a_coding_task_in_the_active_project(carol: Conversation, llm: FakeLlm) -> None:
    project_id = re.search(r"proj_[0-9a-f]+", carol.ask("/new api")).group(0)
    llm.script(
        [
            {
                "tool_call": {
                    "name": "execute_coding_task",
                    "arguments": {
                        "project_id": project_id,
                        "task": "build a REST API with user authentication",
                    },
                }
            },
            {"text": "Started: {tool_result}"},
        ]
    )
    reply = carol.ask("build a REST API with user authentication")
    assert re.search(r"sess_[0-9a-f]+", reply), (reply, llm.requests())
    session_id = re.search(r"sess_[0-9a-f]+", reply).group(0)
    assert session_id in carol.ask("/status")
    system = llm.requests()[0]["messages"][0]
    assert system["role"] == "system" and project_id in system["content"]


def test_the_llm_sees_the_system_prompt_and_only_this_users_last_ten_exchanges(
    carol: Conversation, dave: Conversation, llm: FakeLlm
) -> None:
    for i in range(12):
        llm.script([{"text": f"answer {i}"}])
        assert carol.ask(f"carol says {i}") == f"answer {i}"
    llm.script([{"text": "hello dave"}])
    dave.ask("dave says hi")
    llm.script([{"text": "final"}])
    carol.ask("carol's last word")

    [request] = llm.requests()
    messages = request["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith(WHATSAPP_SYSTEM_PROMPT)
    earlier = messages[1:-1]
    assert len(earlier) == 20  # 10 exchanges
    assert [m["content"] for m in earlier if m["role"] == "user"] == [f"carol says {i}" for i in range(2, 12)]
    assert [m["content"] for m in earlier if m["role"] == "assistant"] == [
        f"answer {i}" for i in range(2, 12)
    ]
    assert messages[-1] == {"role": "user", "content": "carol's last word"}
    assert "dave" not in str(messages)


@pytest.mark.parametrize("failure", [{"fail_with": 500}, {"delay_s": 30.0}])
def test_llm_errors_and_timeouts_become_the_connection_template(
    carol: Conversation, llm: FakeLlm, failure: dict[str, Any]
) -> None:
    llm.script([{"text": "never"}], **failure)
    assert carol.ask("build me something", timeout_s=40) == templates.CONNECTION


def test_long_answers_are_split_into_numbered_parts(carol: Conversation, llm: FakeLlm) -> None:
    paragraphs = [f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(8)]
    code = "```python\n" + "\n".join(f"print({i})" for i in range(150)) + "\n```"
    llm.script([{"text": "\n\n".join(paragraphs) + "\n\n" + code}])
    carol.send("explain everything")
    first = carol.next(1)[0]
    total = int(re.match(r"\(1/(\d+)\) ", first).group(1))
    parts = [first, *carol.next(total - 1)]
    assert total >= 3
    for i, part in enumerate(parts, 1):
        assert part.startswith(f"({i}/{total}) ")
        assert len(part) <= MAX_MESSAGE_CHARS
        body = part.removeprefix(f"({i}/{total}) ")
        assert sum(1 for line in body.splitlines() if line.strip().startswith("```")) % 2 == 0
