"""Fixtures of the end-to-end tests: their own redis-server, the local Twilio Messages API,
and a stack of every service per test module.

A module tunes its stack by overriding `stack_overrides` (environment variables)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from devtools.stack import Stack

from tests.harness import Conversation, RedisServer, TwilioSim, stack_env, start_stack

_phones = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def twilio_sim() -> Iterator[TwilioSim]:
    sim = TwilioSim()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one module: for a module that stops Redis, or counts what is global."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_redis(redis_server: RedisServer) -> RedisServer:
    """The Redis of a module's stack: the shared one, unless the module overrides this."""
    return redis_server


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def env(
    module_redis: RedisServer,
    twilio_sim: TwilioSim,
    tmp_path_factory: pytest.TempPathFactory,
    stack_overrides: dict[str, str],
) -> dict[str, str]:
    data_dir = str(tmp_path_factory.mktemp("autocoder"))
    return stack_env(module_redis.url, twilio_sim.url, **{"AUTOCODER_DATA_DIR": data_dir, **stack_overrides})


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[Stack]:
    stack = start_stack(env)
    yield stack
    stack.stop()


@pytest.fixture
def new_user(stack: Stack, env: dict[str, str], twilio_sim: TwilioSim) -> Callable[[], Conversation]:
    """A fresh WhatsApp user (a number nobody used before in this test run)."""
    return lambda: Conversation(env, twilio_sim, f"+1555{next(_phones):07d}")


# Modules that run in-process (no service, Redis or browser of their own): everything else starts
# real processes and is marked `e2e`, so `pytest -m "not e2e"` is the quick loop while editing and
# `pytest -m e2e` (or one module) runs the slow part alone.
IN_PROCESS = {
    "tests/agent/test_media_checks.py",
    "tests/agent/test_router.py",
    "tests/autocoder/test_journal.py",
    "tests/autocoder/test_bounded.py",
    "tests/lib/test_grpc_metrics.py",
    "tests/lib/test_grpc_targets.py",
    "tests/lib/test_tracing.py",
    "tests/lib/test_waiting.py",
    "tests/operator/test_rollout.py",
    "tests/test_protos.py",
    "tests/test_twiml.py",
    "tests/test_whatsapp_text.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.relative_to(config.rootpath).as_posix() not in IN_PROCESS:
            item.add_marker(pytest.mark.e2e)
