from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import RedisServer, TwilioSim


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
