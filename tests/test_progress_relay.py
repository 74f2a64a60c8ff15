"""A coding session's progress relay through bridge outages: two short blips far apart are two
short outages, not one long one, so the user still gets the summary (and no "I lost track")."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from devtools.stack import Stack

from tests.bridge.conftest import FakeAutoCoder
from tests.harness import Conversation, TwilioSim, start_stack

# One blip (2 s down, then the restart) stays well under this; the time from the first blip to
# the end of the second is well over it.
GIVE_UP_AFTER_S = 12


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAutoCoder]:
    autocoder = FakeAutoCoder(step_s=5)  # a session of six steps: 30 s
    autocoder.start()
    yield autocoder
    autocoder.stop()


@pytest.fixture(scope="module")
def stack_overrides(fake: FakeAutoCoder) -> dict[str, str]:
    return {"AUTOCODER_MCP_URL": fake.url, "PROGRESS_GIVE_UP_AFTER_S": str(GIVE_UP_AFTER_S)}


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[Stack]:
    stack = start_stack(env, ["mcp-bridge", "notifier", "agent", "webhook"])
    yield stack
    stack.stop()


def blip(stack: Stack, seconds: float) -> None:
    """The bridge dies and is back `seconds` later."""
    stack["mcp-bridge"].kill()
    time.sleep(seconds)
    stack["mcp-bridge"].start()
    stack["mcp-bridge"].wait_ready()


def test_two_short_bridge_blips_far_apart_do_not_end_the_relay(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    user = Conversation(env, twilio_sim, "+15556660001")
    user.ask("/new blips")
    started = user.ask("/run build a small API")
    assert "Started session" in started

    time.sleep(1)
    blip(stack, 2)  # shorter than GIVE_UP_AFTER_S ...
    time.sleep(GIVE_UP_AFTER_S)  # ... and so is the next one, which starts after it
    blip(stack, 2)

    summary = user.wait_progress(r"Session `\w+` in \*blips\*: \*succeeded\*", timeout_s=60)
    assert "lost track" not in summary
    assert not [p for p in user.progress if "lost track" in p]
