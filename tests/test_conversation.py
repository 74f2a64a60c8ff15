"""The conversation agent through the running services: commands, the offline router,
conversation state in Redis, and isolation between users (AutoCoder is the reference
server, reached over real MCP through the bridge)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable

import pytest
import redis
from agent.catalog import AGENTS, HELP
from devtools.stack import Stack
from wacoder import keys, templates
from wacoder.crypto import StateCipher
from wacoder.inbox import decode_entry
from wacoder.phones import phone_hash

from tests.harness import Conversation, inbox_entries

PROJECT_ID = re.compile(r"`(proj_[0-9a-f]+)`")
SESSION_ID = re.compile(r"`(sess_[0-9a-f]+)`")


@pytest.fixture
def r(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)


@pytest.fixture
def alice(new_user: Callable[[], Conversation]) -> Conversation:
    return new_user()


@pytest.fixture
def bob(new_user: Callable[[], Conversation]) -> Conversation:
    return new_user()


def user(env: dict[str, str], phone: str) -> str:
    """How Redis keys name a user: the keyed hash of their number."""
    return phone_hash(phone, env["PHONE_HASH_SALT"])


def state_of(env: dict[str, str], r: redis.Redis, phone: str) -> dict[str, object]:
    raw = r.get(keys.conversation(user(env, phone)))
    assert raw is not None
    return json.loads(StateCipher(env["STATE_ENCRYPTION_KEY"]).decrypt(raw))


def test_help_and_agents(alice: Conversation) -> None:
    assert alice.ask("/help") == HELP
    assert alice.ask("/HeLp") == HELP
    agents = alice.ask("/agents")
    for name in AGENTS:
        assert name in agents


@pytest.mark.parametrize("command", ["/frobnicate", "/deploy now", "/x"])
def test_unknown_command_gets_the_template(alice: Conversation, command: str) -> None:
    assert alice.ask(command) == templates.INVALID_COMMAND.format(command=command.split()[0])


@pytest.mark.parametrize(
    "bad",
    [
        "/new",
        "/use",
        "/run",
        "/list everything",
        "/status a b",
        "/files a b",
        "/clear all",
        "/new " + "x" * 61,
    ],
)
def test_bad_arguments_get_the_usage_line(alice: Conversation, bad: str) -> None:
    assert alice.ask(bad).startswith(f"Usage: {bad.split()[0]}")


def test_project_lifecycle(alice: Conversation, env: dict[str, str], r: redis.Redis) -> None:
    created = alice.ask("/new shop : an online store")
    assert "shop" in created
    shop_id = PROJECT_ID.search(created).group(1)
    blog_id = PROJECT_ID.search(alice.ask("/NEW blog")).group(1)

    listing = alice.ask("/list")
    assert "shop" in listing and "an online store" in listing and shop_id in listing
    assert re.search(rf"{blog_id}`\) ← active", listing)

    assert "shop" in alice.ask("/use SHOP")
    assert state_of(env, r, alice.phone)["active_project"] == {"project_id": shop_id, "name": "shop"}
    assert "blog" in alice.ask(f"/use {blog_id}")
    assert alice.ask("/use nothing-like-it") == templates.PROJECT_NOT_FOUND

    # The seed's indexes, both ways.
    assert r.lrange(keys.user_projects(user(env, alice.phone)), 0, -1) == [blog_id, shop_id]
    assert r.smembers(keys.project_users(shop_id)) == {user(env, alice.phone)}
    assert 0 < r.ttl(keys.user_projects(user(env, alice.phone))) <= keys.INDEX_TTL_S


def test_run_status_files_and_clear(alice: Conversation, env: dict[str, str], r: redis.Redis) -> None:
    assert "No coding session yet" in alice.ask("/status")
    assert "No coding session yet" in alice.ask("/files")

    alice.ask("/new todo")
    started = alice.ask("/run build a REST API for todos")
    session_id = SESSION_ID.search(started).group(1)
    assert "planner" in started

    status = alice.ask("/status")
    assert session_id in status
    assert session_id in alice.ask(f"/status {session_id}")
    assert alice.ask("/status sess_0000000000").startswith("🔎 Session not found")

    assert "cleared" in alice.ask("/clear").lower()
    state = state_of(env, r, alice.phone)
    assert state["history"] == [] and state["active_project"] is None and state["last_session"] is None


def test_a_newcomers_first_request_creates_a_project_runs_it_and_reports(alice: Conversation) -> None:
    started = alice.ask("build me a todo app with a database")
    assert "Created project *todo-app*" in started
    session_id = SESSION_ID.search(started).group(1)
    assert "database" in started and "Task: build me a todo app with a database" in started
    assert "todo-app" in alice.ask("/list")
    alice.wait_progress(rf"Session `{session_id}` in \*todo-app\*: \*(succeeded|failed)\*", timeout_s=90)

    made = alice.ask("what did you make?")
    assert session_id in made and "Tests:" in made and "*Files*" in made

    # Another request without an active project gets a project of its own, never a clash.
    alice.ask("/clear")
    again = alice.ask("/run build a todo app")
    assert "Created project *todo-app-2*" in again and "Your other projects: /list" in again


def test_state_is_encrypted_with_a_24h_ttl(alice: Conversation, env: dict[str, str], r: redis.Redis) -> None:
    alice.ask("/new secret-garden : my hidden plans")
    raw = r.get(keys.conversation(user(env, alice.phone)))
    assert "secret-garden" not in raw and "hidden plans" not in raw
    assert 86_000 < r.ttl(keys.conversation(user(env, alice.phone))) <= 86_400
    state = state_of(env, r, alice.phone)
    assert state["history"][0]["text"] == "/new secret-garden : my hidden plans"
    assert state["history"][1]["role"] == "assistant"


def test_history_keeps_the_last_ten_exchanges(
    alice: Conversation, env: dict[str, str], r: redis.Redis
) -> None:
    for i in range(12):
        alice.ask(f"/status {i}")
    history = state_of(env, r, alice.phone)["history"]
    assert [h["text"] for h in history if h["role"] == "user"] == [f"/status {i}" for i in range(2, 12)]


def test_concurrent_messages_are_processed_in_arrival_order(
    alice: Conversation, env: dict[str, str], r: redis.Redis
) -> None:
    sids: list[str] = []
    threads = [
        threading.Thread(target=lambda i=i: sids.append(alice.send(f"note number {i}"))) for i in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alice.next(10)

    cipher = StateCipher(env["STATE_ENCRYPTION_KEY"])
    arrival = [
        decode_entry(cipher, fields).body
        for _, fields in inbox_entries(r)
        if decode_entry(cipher, fields).sender == f"whatsapp:{alice.phone}"
    ]
    history = [h["text"] for h in state_of(env, r, alice.phone)["history"] if h["role"] == "user"]
    assert len(history) == 10
    assert history == arrival[-10:]


def test_offline_router_handles_free_text(alice: Conversation) -> None:
    created = alice.ask("please create a project called garden-api for plant tracking")
    assert "garden-api" in created and PROJECT_ID.search(created)
    assert "garden-api" in alice.ask("what projects do I have?")
    started = alice.ask("design a schema for plants and watering schedules")
    assert SESSION_ID.search(started) and "database" in started
    assert "didn't understand" in alice.ask("qwxz plorb")
    assert "/help" in alice.ask("hello!")


def test_users_never_see_each_others_work(alice: Conversation, bob: Conversation) -> None:
    created = alice.ask("/new alices-secret")
    project_id = PROJECT_ID.search(created).group(1)
    session_id = SESSION_ID.search(alice.ask("/run build a REST API")).group(1)

    assert "alices-secret" not in bob.ask("/list")
    assert bob.ask("/use alices-secret") == templates.PROJECT_NOT_FOUND
    assert bob.ask(f"/use {project_id}") == templates.PROJECT_NOT_FOUND
    assert bob.ask(f"/status {session_id}").startswith("🔎 Session not found")
    assert bob.ask(f"/files {session_id}").startswith("🔎 Session not found")
    assert session_id not in bob.ask(f"status of {session_id}")
    # Alice still can.
    assert session_id in alice.ask(f"/status {session_id}")


def test_production_logs_hold_no_phone_numbers_or_message_text(alice: Conversation, stack: Stack) -> None:
    alice.ask("/new my-very-private-project : a diary of secrets")
    alice.ask("please create a project called hush-hush-plans")
    logs = {
        name: process.log_path.read_text() for name, process in stack.processes.items() if process.log_path
    }
    assert logs["agent"] and logs["webhook"]
    national = alice.phone.removeprefix("+1")
    for name, text in logs.items():
        for secret in (
            alice.phone,
            national,
            "my-very-private-project",
            "diary of secrets",
            "hush-hush-plans",
        ):
            assert secret not in text, f"{secret!r} leaked into the {name} log"
    assert "phone_number_hash" in logs["agent"]
