"""Scale-out: two replicas of the agent, the bridge and the notifier on a real Redis Cluster
(3 masters, 3 replicas), as Kubernetes would run them.

- A conversation and a coding session work on the cluster.
- A session's relay taken over: its owner kill -9'd mid-relay and left dead, the other agent
  replica takes the shard lease after its TTL and relays the rest; every line arrives once.
- Chaos: 200 messages from 20 users (commands, free text, coding sessions) while agent and
  notifier replicas are kill -9'd at random (both services lose some): every accepted message
  is answered exactly once, in order per user; every session's progress (its agents' lines, not
  only the summary) is relayed exactly once; AutoCoder holds exactly one project and one
  session per user that asked for them.
- A Redis master killed during traffic (its replica promoted): nothing that got a 200 is lost.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from devtools.stack import Stack
from wacoder import keys
from wacoder.phones import phone_hash

from tests import redis_cluster as topologies
from tests.autocoder.conftest import mcp_client
from tests.harness import PROGRESS, Conversation, TwilioSim, inbound, post_signed, start_stack, user_of
from tests.redis_cluster import RedisClusterServer

# The fixture, bound by assignment (imported, every test taking it would redefine the import).
redis_cluster = topologies.redis_cluster

REPLICAS = 2
USERS = 20


@pytest.fixture(scope="module")
def module_redis(redis_cluster: RedisClusterServer) -> RedisClusterServer:
    return redis_cluster


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {
        # A dead replica's shards are taken over within a few seconds.
        "SHARD_LEASE_TTL_MS": "3000",
        "NOTIFIER_BACKOFF_BASE_S": "0.05",
    }


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[Stack]:
    stack = start_stack(env, replicas=REPLICAS)
    yield stack
    stack.stop()


def test_a_conversation_on_the_cluster(new_user: Callable[[], Conversation]) -> None:
    alice = new_user()
    assert "Commands" in alice.ask("/help")
    assert "Created project *cluster-notes*" in alice.ask("/new cluster-notes")
    assert "cluster-notes" in alice.ask("/list")
    assert "didn't understand" in alice.ask("zzqx plover")


def test_a_coding_session_on_the_cluster(new_user: Callable[[], Conversation]) -> None:
    bob = new_user()
    bob.ask("/new cluster-api")
    started = bob.ask("/run build a small greeting API", timeout_s=40)
    assert "Started session" in started
    session_id = re.search(r"`(sess_[0-9a-f]+)`", started)
    assert session_id is not None
    summary = bob.wait_progress(rf"Session `{session_id.group(1)}` in \*cluster-api\*", timeout_s=120)
    assert "Tests:" in summary


# A test of the project's own that keeps the tester (the last agent) busy this long: the session
# is still running, its relay mid-way, when the relaying replica dies.
SLOW_TEST = """import time


def test_takes_its_time() -> None:
    time.sleep(15)
"""


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_dead_replicas_relay_is_taken_over_and_every_line_arrives_once(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, redis_cluster: RedisClusterServer
) -> None:
    """One replica relays a session (the one whose lease holds the user's shard); killed with -9
    and not restarted, its lease expires and the other replica takes the shard over and relays
    the rest: each agent's line and the summary reach the user exactly once."""
    carol = Conversation(env, twilio_sim, "+15558840001")
    project_id = re.search(r"`(proj_[0-9a-f]+)`", carol.ask("/new takeover-api"))
    assert project_id is not None
    tests = Path(env["AUTOCODER_DATA_DIR"]) / "projects" / project_id.group(1) / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (tests / "test_takes_its_time.py").write_text(SLOW_TEST)
    shard = keys.shard_of(user_of(env, carol.phone))
    r = redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    agents = {process.env["REPLICA_ID"]: process for process in stack.replicas("agent")}
    assert len(agents) == 2

    started = carol.ask("/run build a greeting API with a database and a Dockerfile", timeout_s=40)
    session = re.search(r"`(sess_[0-9a-f]+)`", started)
    assert session is not None, started
    session_id = session.group(1)
    first = carol.wait_progress(r"^✅ \*planner\* done", timeout_s=60)
    summary_pattern = rf"Session `{session_id}` in \*takeover-api\*"
    # The replica relaying it: the one whose lease holds the user's shard.
    owner = r.get(keys.shard_lease("agent", shard))
    assert owner in agents, f"the user's shard is not held by an agent replica: {owner}"
    [successor] = [replica for replica in agents if replica != owner]
    try:
        # Mid-relay: a batch is out, the session still runs (the tester sleeps), the relay is
        # still registered.
        assert not any(re.search(summary_pattern, body) for body in carol.progress), carol.progress
        assert r.exists(keys.session_watch(shard, session_id))
        agents[owner].kill()
        before_kill = len(twilio_sim.messages(f"whatsapp:{carol.phone}"))

        summary = carol.wait_progress(summary_pattern, timeout_s=120)
        assert r.get(keys.shard_lease("agent", shard)) == successor, "the shard was taken over"
        # Nothing more can come: the relay has ended (its record is gone), and the user's outbox
        # shard is empty (the notifier deletes what it has sent).
        wait_until(lambda: not r.exists(keys.session_watch(shard, session_id)), 30, "the relay to end")
        wait_until(lambda: r.xlen(keys.outbox_stream(shard)) == 0, 30, "the outbox to drain")
    finally:
        # For the tests after this one, which want two agents again.
        if not agents[owner].alive:
            agents[owner].start()
            agents[owner].wait_ready()
        r.close()

    bodies = [m["body"] for m in twilio_sim.messages(f"whatsapp:{carol.phone}")]
    progress = [body for body in bodies if PROGRESS.match(body)]
    assert first in progress and progress[-1] == summary, progress
    lines = [line for body in progress for line in body.splitlines() if PROGRESS.match(line)]
    twice = [line for line, n in Counter(lines).items() if n > 1]
    assert not twice, f"relayed twice: {twice}"
    assert sum(1 for line in lines if "Session `" in line) == 1, lines
    # Each agent of the session has its one line: those before the kill from the dead replica,
    # the rest from its successor.
    ran = re.search(r"^Agents: (.+)$", summary, re.M)
    assert ran is not None, summary
    agent_names = [part.split()[0] for part in ran.group(1).split(", ")]
    assert {"planner", "developer", "tester"} <= set(agent_names), agent_names
    relayed = Counter(re.findall(r"^(?:✅|❌|⏭️) \*(\w+)\*", "\n".join(lines), re.M))
    assert relayed == Counter(agent_names), (relayed, agent_names)
    # The tester was still at work when the owner died: its line came from the successor.
    assert any("*tester*" in body for body in bodies[before_kill:]), bodies[before_kill:]
    assert "Tests:" in summary and "0 failed" in summary, summary


def runs_a_session(u: int) -> bool:
    # Every fourth user: five coding sessions (each runs its tests in the jail) are what two
    # cores carry alongside the chaos.
    return u % 4 == 0


def script(u: int) -> list[tuple[str, Callable[[str], bool]]]:
    """What user `u` sends (10 messages), each with how its reply is recognised: a project, a
    coding session (or another command), commands and free text (echoed in "didn't understand")."""
    token = lambda m: f"zq{u:02d}x{m:03d}"  # noqa: E731
    second: tuple[str, Callable[[str], bool]] = (
        (f"/run {token(1)} build a small greeting API", lambda reply: f"Task: {token(1)}" in reply)
        if runs_a_session(u)
        else (token(1), lambda reply: f"didn't understand “{token(1)}”" in reply)
    )
    status: tuple[str, Callable[[str], bool]] = (
        ("/status", lambda reply: reply.startswith(("⏳", "⚙️", "✅", "❌")) and token(1) in reply)
        if runs_a_session(u)
        else ("/status", lambda reply: "No coding session yet" in reply)
    )
    return [
        (f"/new {token(0)}", lambda reply: f"Created project *{token(0)}*" in reply),
        second,
        ("/agents", lambda reply: "AutoCoder agents" in reply),
        (token(3), lambda reply: f"didn't understand “{token(3)}”" in reply),
        ("/list", lambda reply: "Your projects" in reply and token(0) in reply),
        status,
        (token(6), lambda reply: f"didn't understand “{token(6)}”" in reply),
        ("/help", lambda reply: "Commands" in reply),
        (token(8), lambda reply: f"didn't understand “{token(8)}”" in reply),
        ("/agents", lambda reply: "AutoCoder agents" in reply),
    ]


def send_until_accepted(env: dict[str, str], form: dict[str, str], tries: int = 100) -> bool:
    """Posts as Twilio does: again after anything but a 200 (a 503, no answer)."""
    for _ in range(tries):
        try:
            if post_signed(env, "/webhook/whatsapp", form).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def split_replies(twilio_sim: TwilioSim) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each user's replies and progress messages, apart (later parts of a long one included)."""
    replies: dict[str, list[str]] = defaultdict(list)
    progress: dict[str, list[str]] = defaultdict(list)
    in_progress: dict[str, bool] = {}
    for message in twilio_sim.messages():
        phone, body = message["to"].removeprefix("whatsapp:"), message["body"]
        later_part = re.match(r"\((\d+)/\d+\) ", body) and not body.startswith("(1/")
        in_progress[phone] = in_progress.get(phone, False) if later_part else bool(PROGRESS.match(body))
        (progress if in_progress[phone] else replies)[phone].append(body)
    return replies, progress


def test_chaos_with_replicas_every_message_answered_once_in_order_and_progress_relayed_once(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    twilio_sim.clear()
    phones = [f"+1555881{u:04d}" for u in range(USERS)]
    accepted: dict[str, list[Callable[[str], bool]]] = defaultdict(list)
    done = threading.Event()

    def write(u: int) -> None:
        for m, (body, expect) in enumerate(script(u)):
            if send_until_accepted(env, inbound(phones[u], body, f"SMscale{u:02d}{m:03d}" + "0" * 22)):
                accepted[phones[u]].append(expect)
            time.sleep(random.uniform(0.3, 1.0))  # people type; the chaos needs time to strike

    # Agent and notifier replicas in turn, a random one of each: both services lose replicas.
    by_service = [stack.replicas("agent"), stack.replicas("notifier")]
    victims = [process for replicas in by_service for process in replicas]
    kills: list[str] = []

    def chaos() -> None:
        rng = random.Random(7)
        while not done.wait(rng.uniform(0.5, 1.5)):
            victim = rng.choice(by_service[len(kills) % 2])
            victim.kill()
            kills.append(victim.env.get("REPLICA_ID", victim.spec.name))
            # As Kubernetes would; not waiting: the next kill may come first.
            victim.start()
        for process in victims:
            process.wait_ready()

    writers = [threading.Thread(target=write, args=(u,)) for u in range(USERS)]
    killer = threading.Thread(target=chaos)
    killer.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    killer.join()
    assert len(kills) >= 4, kills
    for service in ("agent", "notifier"):
        assert any(kill.startswith(f"{service}-") for kill in kills), f"no {service} replica killed: {kills}"
    total = sum(len(v) for v in accepted.values())
    assert total == USERS * len(script(0))

    sessions = [phone for u, phone in enumerate(phones) if runs_a_session(u)]

    def finished() -> bool:
        replies, progress = split_replies(twilio_sim)
        summaries = sum(1 for phone in sessions for body in progress[phone] if "Session `" in body)
        return sum(map(len, replies.values())) >= total and summaries >= len(sessions)

    deadline = time.monotonic() + 240
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(5)  # a duplicate would show up now
    replies, progress = split_replies(twilio_sim)
    for phone, expectations in accepted.items():
        answers = replies[phone]
        assert len(answers) == len(expectations), (
            f"{phone}: {len(answers)} replies (kills: {kills}): {answers}"
        )
        for n, (expect, reply) in enumerate(zip(expectations, answers, strict=True)):
            assert expect(reply), f"{phone}: reply {n} out of order or wrong (kills: {kills}): {reply!r}"

    # Each session's progress: every line once, one summary, nothing for those without one.
    for phone in phones:
        lines = [line for body in progress[phone] for line in body.splitlines() if PROGRESS.match(line)]
        twice = [line for line, n in Counter(lines).items() if n > 1]
        assert not twice, f"{phone}: progress relayed twice (kills: {kills}): {twice}"
        summaries = [line for line in lines if "Session `" in line]
        assert len(summaries) == (1 if phone in sessions else 0), f"{phone}: {summaries}"
        # A session's agents were relayed as they finished, not only its summary.
        agent_lines = [line for line in lines if "Session `" not in line]
        assert bool(agent_lines) == (phone in sessions), f"{phone}: progress {lines} (kills: {kills})"

    # The redo of a turn that created something did not create it twice.
    async def count_at_autocoder() -> dict[str, tuple[int, int]]:
        salt = env["PHONE_HASH_SALT"]
        counts = {}
        bearer = {"Authorization": f"Bearer {env['AUTOCODER_API_KEY']}"}
        async with mcp_client(env["AUTOCODER_MCP_URL"], bearer) as session:
            for phone in phones:
                result = await session.call_tool(
                    "list_projects", {}, meta={"caller": phone_hash(phone, salt)}
                )
                projects = (result.structuredContent or {})["projects"]
                counts[phone] = (len(projects), sum(len(p["sessions"]) for p in projects))
        return counts

    expected = {phone: (1, int(runs_a_session(u))) for u, phone in enumerate(phones)}
    assert asyncio.run(count_at_autocoder()) == expected


def test_a_message_no_replica_confirmed_is_a_503_and_its_retry_is_answered_once(
    env: dict[str, str], twilio_sim: TwilioSim, redis_cluster: RedisClusterServer
) -> None:
    """Twilio's 200 means the message is on a replica too: with the replica of the user's
    master stopped, the webhook answers 503 (Twilio retries); once it is back, the retry (now a
    duplicate at the master) is confirmed and answered, once."""
    phone = "+15558830001"
    master = redis_cluster.master_for_key(keys.inbox_stream(keys.shard_of(user_of(env, phone))))
    [replica] = redis_cluster.replicas_of(master)
    form = inbound(phone, "/agents", "SMnotreplicated" + "0" * 19)
    redis_cluster.pause(replica)
    try:
        answers = [post_signed(env, "/webhook/whatsapp", form).status_code for _ in range(2)]
    finally:
        redis_cluster.resume(replica)
    assert answers == [503, 503]
    assert send_until_accepted(env, form)
    [reply] = twilio_sim.wait_for(f"whatsapp:{phone}", count=1, timeout_s=30)
    assert "AutoCoder agents" in reply["body"]
    time.sleep(2)
    assert len(twilio_sim.messages(f"whatsapp:{phone}")) == 1


# Last in the module: it leaves the cluster with a master fewer.
def test_a_master_killed_during_traffic_loses_nothing_that_got_a_200(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, redis_cluster: RedisClusterServer
) -> None:
    twilio_sim.clear()
    phones = [f"+1555882{u:04d}" for u in range(8)]
    accepted: dict[str, int] = Counter()
    halfway = threading.Event()

    def write(u: int) -> None:
        for m in range(12):
            if m == 4:
                halfway.set()
            form = inbound(phones[u], f"/agents {m}", f"SMmaster{u:02d}{m:03d}" + "0" * 21)
            if send_until_accepted(env, form, tries=150):
                accepted[phones[u]] += 1
            time.sleep(0.2)

    writers = [threading.Thread(target=write, args=(u,)) for u in range(len(phones))]
    for w in writers:
        w.start()
    halfway.wait(30)
    # The master of the first user's shard: their messages, state and replies live there.
    victim = redis_cluster.master_for_key(keys.inbox_stream(keys.shard_of(user_of(env, phones[0]))))
    redis_cluster.kill(victim)
    redis_cluster.wait_failover(victim, timeout_s=30)
    for w in writers:
        w.join()

    assert sum(accepted.values()) == 12 * len(phones)
    for phone in phones:
        got = twilio_sim.wait_for(f"whatsapp:{phone}", count=accepted[phone], timeout_s=120)
        assert all("AutoCoder agents" in m["body"] for m in got)
    time.sleep(3)
    for phone in phones:
        assert len(twilio_sim.messages(f"whatsapp:{phone}")) == accepted[phone], "answered exactly once"
