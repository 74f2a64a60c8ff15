"""/share and /unshare through the running services: an owner shares a project with a
whitelisted number, that user is told, lists it, uses it and runs in it; a third user sees
nothing of it; unsharing takes it all back at once (the bridge's cached lists too)."""

from __future__ import annotations

import re

import pytest
import redis
from wacoder import keys, templates

from tests.harness import Conversation, TwilioSim, user_of

OWNER, MEMBER, THIRD = "+15558990001", "+15558990002", "+15558990003"
STRANGER = "+15558990009"  # not whitelisted
PROJECT_ID = re.compile(r"`(proj_[0-9a-f]+)`")
SESSION_ID = re.compile(r"`(sess_[0-9a-f]+)`")


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"ALLOWED_PHONE_NUMBERS": ",".join([OWNER, MEMBER, THIRD])}


@pytest.fixture
def r(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)


def talk(env: dict[str, str], sim: TwilioSim, phone: str) -> Conversation:
    return Conversation(env, sim, phone)


def test_share_use_run_and_unshare(
    stack: object, env: dict[str, str], twilio_sim: TwilioSim, r: redis.Redis
) -> None:
    owner, member, third = (talk(env, twilio_sim, p) for p in (OWNER, MEMBER, THIRD))
    created = owner.ask("/new team-shop : a shop we build together")
    [project_id] = PROJECT_ID.findall(created)

    # Before sharing, the member sees nothing of it (and caches that empty list in the bridge).
    assert "no projects yet" in member.ask("/list")
    assert member.ask(f"/use {project_id}") == templates.PROJECT_NOT_FOUND

    # Refusals: a number that is not whitelisted, a malformed one, bad arguments, not one's own project.
    refused = owner.ask(f"/share team-shop {STRANGER}")
    assert STRANGER in refused and "whitelist" in refused
    assert "international format" in owner.ask("/share team-shop 5558990002")
    assert owner.ask("/share team-shop").startswith("Usage: /share")
    assert owner.ask("/share").startswith("Usage: /share")
    assert owner.ask(f"/share no-such-project {MEMBER}") == templates.PROJECT_NOT_FOUND
    assert third.ask(f"/share {project_id} {MEMBER}") == templates.PROJECT_NOT_FOUND
    assert "your own number" in owner.ask(f"/share team-shop {OWNER}")

    shared = owner.ask(f"/share team-shop {MEMBER}")
    assert "Shared *team-shop*" in shared and MEMBER in shared
    # The member is told, by a message of their own.
    [told] = member.next()
    assert told == f"👥 {OWNER} shared project *team-shop* with you; /use {project_id}"

    # The member lists it (the bridge's cached empty list was dropped), uses it, runs in it.
    listed = member.ask("/list")
    assert "*team-shop*" in listed and project_id in listed and "shared with you" in listed
    assert member.ask(f"/use {project_id}") == f"📂 Active project: *team-shop* (`{project_id}`)."
    started = member.ask("/run write a project plan")
    assert "in *team-shop*" in started
    [session_id] = SESSION_ID.findall(started)
    member.wait_progress(rf"Session `{session_id}` in \*team-shop\*: \*(succeeded|failed)\*", timeout_s=90)
    status = member.ask(f"/status {session_id}")
    assert session_id in status and "succeeded" in status
    assert session_id in member.ask(f"/files {session_id}")
    # The owner sees the member's session too.
    assert "succeeded" in owner.ask(f"/status {session_id}")

    # Only the owner shares.
    assert "Only the owner" in member.ask(f"/share team-shop {THIRD}")
    assert "Only the owner" in member.ask(f"/unshare team-shop {MEMBER}")

    # A third user still sees nothing of it.
    assert "no projects yet" in third.ask("/list")
    assert third.ask(f"/use {project_id}") == templates.PROJECT_NOT_FOUND
    assert "Session not found" in third.ask(f"/status {session_id}")

    # The seed's index names the member (by hash) beside the owner.
    member_hash, owner_hash = user_of(env, MEMBER), user_of(env, OWNER)
    assert r.smembers(keys.project_users(project_id)) == {owner_hash, member_hash}
    assert project_id in r.lrange(keys.user_projects(member_hash), 0, -1)

    # Unsharing takes it all back at once: the list (cached a moment ago), /use, the sessions.
    unshared = owner.ask(f"/unshare team-shop {MEMBER}")
    assert MEMBER in unshared and "no longer has access" in unshared
    assert member.next() == [f"👥 {OWNER} stopped sharing project *team-shop* with you."]
    assert "no projects yet" in member.ask("/list")
    assert member.ask(f"/use {project_id}") == templates.PROJECT_NOT_FOUND
    assert "Session not found" in member.ask(f"/status {session_id}")
    assert "Session not found" in member.ask(f"/files {session_id}")
    assert member.ask("/run add a README") == templates.PROJECT_NOT_FOUND  # the active project is gone
    assert r.smembers(keys.project_users(project_id)) == {owner_hash}
    assert project_id not in r.lrange(keys.user_projects(member_hash), 0, -1)
    assert "had no access" in owner.ask(f"/unshare team-shop {MEMBER}")  # a repeat changes nothing

    # Nothing private went to Redis in clear: the numbers appear nowhere, keys or values.
    raw = redis.Redis.from_url(env["REDIS_URL"])
    numbers = [p.lstrip("+").encode() for p in (OWNER, MEMBER, THIRD, STRANGER)]
    for key in raw.scan_iter(count=1000):
        assert not any(n in key for n in numbers), key
        if raw.type(key) == b"string":
            value = raw.get(key) or b""
            assert not any(n in value for n in numbers), key
