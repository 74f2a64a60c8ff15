"""Language with the LLM on: the system prompt the fake OpenAI server receives asks for the
user's language, and the answer it scripts reaches the user as it was written (the offline
router's Spanish and Portuguese intents are tests/agent/test_router.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from agent.prompts import LANGUAGE_GUIDELINE, WHATSAPP_SYSTEM_PROMPT

from tests.harness import Conversation
from tests.test_llm_agent import FakeLlm


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLlm]:
    fake = FakeLlm()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack_overrides(llm: FakeLlm) -> dict[str, str]:
    return llm.stack_env()


def test_the_system_prompt_asks_for_the_users_language(
    new_user: Callable[[], Conversation], llm: FakeLlm
) -> None:
    user = new_user()
    llm.script([{"text": "¡Hola! Puedo crear proyectos y ejecutar tareas de código. Escribe /help."}])
    assert user.ask("hola, ¿qué puedes hacer?", timeout_s=40).startswith("¡Hola! Puedo crear proyectos")

    [request] = llm.requests()
    system, *_, last = request["messages"]
    assert system["role"] == "system"
    assert system["content"].startswith(WHATSAPP_SYSTEM_PROMPT)
    assert LANGUAGE_GUIDELINE in system["content"]
    assert "reply in the language the user writes in" in system["content"]
    assert last == {"role": "user", "content": "hola, ¿qué puedes hacer?"}
    # Sharing is /share's alone: the model is never offered the tools that grant access.
    offered = {t["function"]["name"] for t in request["tools"]}
    assert "execute_coding_task" in offered
    assert not offered & {"share_project", "unshare_project"}
