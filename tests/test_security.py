"""Security as users and operators check it: secrets fail closed, nothing private in Redis or
in production logs, refusals that cannot be abused, a bot config that reloads, and service-to-
service calls that need the token. Real processes, a Redis of the module's own."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
import redis
import yaml
from devtools.stack import SERVICES, Stack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from wacoder import keys
from wacoder.v1 import agent_pb2, agent_pb2_grpc, bridge_pb2, bridge_pb2_grpc, notifier_pb2, notifier_pb2_grpc

from tests.harness import (
    Conversation,
    RedisServer,
    TwilioSim,
    inbound,
    inbox_entries,
    post_signed,
    service_channel,
    stack_env,
)
from tests.harness import (
    accepted as accepted_by_webhook,
)

ALICE, BOB, CAROL = "+15557770001", "+15557770002", "+15557770003"
STRANGER = "+15557779999"
# The whitelist between tests: Bob written as a person would type him (E.164 normalisation).
WHITELIST = [ALICE, "whatsapp:+1 (555) 777-0002", CAROL]


class ConfigMap:
    """A bot config mounted the way Kubernetes mounts a ConfigMap: config.yaml -> ..data/config.yaml,
    ..data -> a timestamped directory, updated by swapping the ..data symlink atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "config.yaml"
        self.version = 0

    def write(self, document: dict[str, object]) -> None:
        self.version += 1
        data = self.root / f"..2026_11_29_{self.version:04d}"
        data.mkdir()
        (data / "config.yaml").write_text(yaml.safe_dump(document))
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/config.yaml")


def bot_config(allowed: list[str], per_phone: int = 1000) -> dict[str, object]:
    return {
        "allowedPhoneNumbers": allowed,
        "rateLimits": {"perPhonePerMinute": per_phone, "globalPerMinute": 100_000},
        "model": {"name": "gpt-4o-mini"},
    }


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # every key in it is dumped


@pytest.fixture(scope="module")
def config_map(tmp_path_factory: pytest.TempPathFactory) -> ConfigMap:
    config = ConfigMap(tmp_path_factory.mktemp("configmap"))
    config.write(bot_config(WHITELIST))
    return config


@pytest.fixture(scope="module")
def stack_overrides(config_map: ConfigMap) -> dict[str, str]:
    # Production said explicitly (it is the default too): its secrets are all given by stack_env.
    return {"BOT_CONFIG_FILE": str(config_map.path), "ALLOWED_PHONE_NUMBERS": "", "WACODER_ENV": "production"}


@pytest.fixture
def r(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Seconds until `condition` held; fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "not within the time allowed"
        time.sleep(0.1)
    return time.monotonic() - started


_sids = itertools.count(1)


def message_sid(tag: str) -> str:
    return f"SM{tag}{next(_sids):06d}".ljust(34, "0")


def admitted(env: dict[str, str], r: redis.Redis, phone: str, body: str = "/agents") -> bool:
    """Sends one signed message from `phone`; whether the webhook stored it for the agent."""
    sid = message_sid("adm")
    answer = post_signed(env, "/webhook/whatsapp", inbound(phone, body, sid))
    assert answer.status_code == 200
    return accepted_by_webhook(r, env, phone, sid)


_probes = itertools.count(1)


def apply(
    config_map: ConfigMap, env: dict[str, str], r: redis.Redis, allowed: list[str], **limits: int
) -> None:
    """Writes a bot config, and waits until the webhook runs with it: the config whitelists a
    number of its own, which the webhook admits once it has read the file."""
    probe = f"+1555778{next(_probes):04d}"
    config_map.write(bot_config([*allowed, probe], **limits))
    wait_until(lambda: admitted(env, r, probe), timeout_s=10)


def webhook_counts(env: dict[str, str]) -> dict[tuple[str, str], float]:
    """The webhook's message outcomes and refusal notices, from its /metrics."""
    exposition = httpx.get(env["PUBLIC_BASE_URL"] + "/metrics", timeout=5).text
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "wacoder_webhook_messages_total":
                counts[("messages", sample.labels["outcome"])] = sample.value
            elif sample.name == "wacoder_webhook_refusal_notices_total":
                counts[("notices", sample.labels["reason"])] = sample.value
    return counts


class NotifierClient:
    """The notifier's Send, as the agent calls it: whether it took a message for `to`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.channel = service_channel(env["NOTIFIER_ADDR"], env)
        self.stub = notifier_pb2_grpc.NotifierServiceStub(self.channel)

    def may_write(self, to: str, body: str = "hello") -> bool:
        try:
            self.stub.Send(
                notifier_pb2.SendRequest(to=f"whatsapp:{to}", body=body, idempotency_key=message_sid("ntf")),
                timeout=5,
            )
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED, error
            return False
        return True

    def close(self) -> None:
        self.channel.close()


# --- Fail closed ----------------------------------------------------------------------------


# What each service must refuse to start without (issue 9, the README): the test's own table, so
# that a secret dropped from the code's (wacoder.settings.SERVICE_SECRETS) fails it. The agent
# fetches users' media from Twilio with the account's token; AutoCoder speaks neither Twilio,
# Redis nor gRPC, so it needs only the hash key and its API key.
REQUIRED_SECRETS = {
    "webhook": ("TWILIO_AUTH_TOKEN", "PHONE_HASH_SALT", "STATE_ENCRYPTION_KEY", "SERVICE_TOKEN"),
    "agent": ("TWILIO_AUTH_TOKEN", "PHONE_HASH_SALT", "STATE_ENCRYPTION_KEY", "SERVICE_TOKEN"),
    "notifier": ("TWILIO_AUTH_TOKEN", "PHONE_HASH_SALT", "STATE_ENCRYPTION_KEY", "SERVICE_TOKEN"),
    "mcp-bridge": ("PHONE_HASH_SALT", "STATE_ENCRYPTION_KEY", "SERVICE_TOKEN", "AUTOCODER_API_KEY"),
    "autocoder": ("PHONE_HASH_SALT", "AUTOCODER_API_KEY"),
}


def test_each_service_refuses_to_start_in_production_without_each_secret(
    twilio_sim: TwilioSim, module_redis: RedisServer
) -> None:
    base = stack_env(module_redis.url, twilio_sim.url, WACODER_ENV="production")
    modules = {spec.name: spec.module for spec in SERVICES}
    assert set(REQUIRED_SECRETS) == set(modules)  # every service of the stack is held to it
    started: list[tuple[str, str, subprocess.Popen[str]]] = []
    for service, secrets in REQUIRED_SECRETS.items():
        for secret in secrets:
            env = {k: v for k, v in {**os.environ, **base}.items() if k != secret}
            proc = subprocess.Popen(
                [sys.executable, "-m", modules[service]],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            started.append((service, secret, proc))
    # One deadline for all of them: a machine under load may take a while to import them all.
    deadline = time.monotonic() + 150
    wrong: list[str] = []
    try:
        for service, variable, proc in started:
            try:
                _, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                wrong.append(f"{service} started without {variable}")
                continue
            lines = [line for line in stderr.splitlines() if line.strip()]
            if proc.returncode == 0 or not lines or variable not in lines[-1] or "Traceback" in stderr:
                wrong.append(f"{service} without {variable} exited {proc.returncode}: {stderr[-300:]}")
    finally:
        for _, _, proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not wrong, "\n".join(wrong)


# --- Trust between services -------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_grpc_calls_without_the_service_token_are_refused(
    stack: Stack, env: dict[str, str], token: str | None
) -> None:
    calls = {
        "AGENT_ADDR": lambda ch: agent_pb2_grpc.AgentServiceStub(ch).SubmitMessage(
            agent_pb2.SubmitMessageRequest(
                message=agent_pb2.InboundMessage(
                    message_sid="SMforged", sender=f"whatsapp:{ALICE}", body="/help"
                )
            ),
            timeout=5,
        ),
        "MCP_BRIDGE_ADDR": lambda ch: bridge_pb2_grpc.McpBridgeServiceStub(ch).ListTools(
            bridge_pb2.ListToolsRequest(), timeout=5
        ),
        "NOTIFIER_ADDR": lambda ch: notifier_pb2_grpc.NotifierServiceStub(ch).Send(
            notifier_pb2.SendRequest(to=f"whatsapp:{ALICE}", body="forged", idempotency_key="forged"),
            timeout=5,
        ),
    }
    for addr, call in calls.items():
        with grpc.insecure_channel(env[addr]) as channel:
            metadata = [("authorization", f"Bearer {token}")] if token else None
            with pytest.raises(grpc.RpcError) as refused:
                call(grpc.intercept_channel(channel, _Metadata(metadata)) if metadata else channel)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED, addr
            # Probes stay open.
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_calls_with_the_service_token_are_served(stack: Stack, env: dict[str, str]) -> None:
    with service_channel(env["MCP_BRIDGE_ADDR"], env) as channel:
        tools = bridge_pb2_grpc.McpBridgeServiceStub(channel).ListTools(
            bridge_pb2.ListToolsRequest(), timeout=10
        )
        assert {"create_project", "execute_coding_task"} <= {t.name for t in tools.tools}
    with service_channel(env["NOTIFIER_ADDR"], env) as channel:
        sent = notifier_pb2_grpc.NotifierServiceStub(channel).Send(
            notifier_pb2.SendRequest(
                to=f"whatsapp:{ALICE}", body="hello from a test", idempotency_key="tok-1"
            ),
            timeout=5,
        )
        assert sent.outbox_ids


class _Metadata(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, metadata: list[tuple[str, str]] | None) -> None:
        self.metadata = metadata

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(details._replace(metadata=self.metadata), request)


# --- Refusals that cannot be abused -----------------------------------------------------------


def burst(env: dict[str, str], phone: str, count: int, tag: str) -> list[str]:
    """`count` signed messages from `phone` at once; the TwiML bodies Twilio got back."""
    answers: list[str] = [""] * count

    def post(i: int) -> None:
        form = inbound(phone, f"/help {tag}{i}", f"SM{tag}{i:04d}".ljust(34, "0"))
        answer = post_signed(env, "/webhook/whatsapp", form)
        assert answer.status_code == 200
        answers[i] = answer.text

    threads = [threading.Thread(target=post, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_a_burst_is_limited_exactly_and_told_once_and_strangers_once(
    stack: Stack, env: dict[str, str], config_map: ConfigMap, r: redis.Redis
) -> None:
    apply(config_map, env, r, WHITELIST, per_phone=5)
    before = webhook_counts(env)

    answers = burst(env, CAROL, 50, "burst")
    inbox = [f["sid"] for _, f in inbox_entries(r) if f.get("sid", "").startswith("SMburst")]
    assert len(inbox) == 5  # exact, under concurrency
    told = [a for a in answers if "<Message>" in a]
    assert len(told) == 1  # one paid refusal, not 45
    assert "Too many requests" in told[0]

    stranger = burst(env, STRANGER, 20, "stranger")
    told = [a for a in stranger if "<Message>" in a]
    assert len(told) == 1
    assert "not authorized" in told[0]
    assert not any(f.get("sid", "").startswith("SMstranger") for _, f in inbox_entries(r))

    # An operator sees the same on the webhook's /metrics: every refusal, and the one notice each.
    after = webhook_counts(env)
    delta = {key: after[key] - before.get(key, 0) for key in after}
    assert delta[("messages", "accepted")] == 5
    assert delta[("messages", "rate_limited")] == 45
    assert delta[("notices", "rate_limited")] == 1
    assert delta[("messages", "unauthorized")] == 20
    assert delta[("notices", "unauthorized")] == 1
    config_map.write(bot_config(WHITELIST))


# --- Config that reloads ----------------------------------------------------------------------


def test_the_agent_applies_a_whitelist_edit_to_share(
    stack: Stack, env: dict[str, str], config_map: ConfigMap, twilio_sim: TwilioSim
) -> None:
    member = "+15557770044"
    alice = Conversation(env, twilio_sim, ALICE)
    alice.ask("/new reload-share")
    assert "may not use this bot" in alice.ask(f"/share reload-share {member}")
    # /share reads the whitelist the agent holds: the edited one, the number as a person types it.
    config_map.write(bot_config([*WHITELIST, "whatsapp:+1 555-777-0044"]))
    edited = time.monotonic()
    while "👥 Shared *reload-share*" not in (reply := alice.ask(f"/share reload-share {member}")):
        assert "may not use this bot" in reply, reply
        assert time.monotonic() - edited < 15, "the agent did not apply the edit"
        time.sleep(0.2)
    # The member is told, even when the notifier applies the edit a moment after the agent did.
    told = twilio_sim.wait_for(f"whatsapp:{member}", timeout_s=15)
    assert "shared project *reload-share* with you" in told[0]["body"]
    config_map.write(bot_config(WHITELIST))


def test_editing_the_bot_config_applies_within_5_s_in_webhook_and_notifier(
    stack: Stack, env: dict[str, str], config_map: ConfigMap, r: redis.Redis, twilio_sim: TwilioSim
) -> None:
    # Two newcomers: one writes to the webhook, the other only ever receives, so the notifier's
    # verdict is the whitelist's and never the 24-hour window the first one's messages open.
    writer, recipient = "+15557770042", "+15557770043"
    assert (
        "not authorized"
        in post_signed(env, "/webhook/whatsapp", inbound(writer, "/help", message_sid("rld"))).text
    )
    notifier = NotifierClient(env)
    try:
        assert not notifier.may_write(recipient)
        # Both as people type them; the per-phone limit lowered from 1000 to 2 in the same edit.
        config_map.write(
            bot_config([*WHITELIST, "whatsapp:+1 555-777 0042", "+1 (555) 777-0043"], per_phone=2)
        )
        edited = time.monotonic()  # one clock for both services, from the swap
        took: dict[str, float] = {}
        admissions: list[bool] = []
        while len(took) < 3:
            elapsed = time.monotonic() - edited
            assert elapsed < 5, f"not applied within 5 s of the edit: {took}"
            if "notifier" not in took and notifier.may_write(recipient, "welcome"):
                took["notifier"] = time.monotonic() - edited
            if "limit" not in took:
                sid = message_sid("rld")
                answer = post_signed(env, "/webhook/whatsapp", inbound(writer, "/agents", sid))
                if accepted_by_webhook(r, env, writer, sid):
                    took.setdefault("whitelist", time.monotonic() - edited)
                    admissions.append(True)
                elif "Too many requests" in answer.text:
                    took["limit"] = time.monotonic() - edited
                    admissions.append(False)
                else:
                    assert "whitelist" not in took, answer.text  # a stranger still: quietly refused
            time.sleep(0.05)
    finally:
        notifier.close()
    # Admitted twice (the new limit, not the old 1000), then told once that it is too many.
    assert admissions == [True, True, False], admissions
    assert twilio_sim.wait_for(f"whatsapp:{recipient}")[-1]["body"] == "welcome"
    # The number written with a prefix, parentheses and spaces (Bob's, in WHITELIST) is admitted.
    assert admitted(env, r, BOB)
    config_map.write(bot_config(WHITELIST))


def test_the_notifier_writes_off_the_whitelist_only_to_who_wrote_within_24_hours(
    stack: Stack, env: dict[str, str], config_map: ConfigMap, r: redis.Redis, twilio_sim: TwilioSim
) -> None:
    wrote, silent = "+15557770051", "+15557770052"
    apply(config_map, env, r, [*WHITELIST, wrote, silent])
    assert admitted(env, r, wrote, "/help")  # opens its 24-hour window
    twilio_sim.wait_for(f"whatsapp:{wrote}")
    # Both taken off the whitelist.
    config_map.write(bot_config(WHITELIST))
    notifier = NotifierClient(env)
    try:
        # Refused (PERMISSION_DENIED) once the notifier has read the edit ...
        wait_until(lambda: not notifier.may_write(silent), timeout_s=5)
        # ... while the number that wrote within 24 hours is still written to.
        assert notifier.may_write(wrote, "you wrote today")
    finally:
        notifier.close()
    assert twilio_sim.wait_for(f"whatsapp:{wrote}", 2)[-1]["body"] == "you wrote today"


# --- Nothing private in Redis or in production logs -------------------------------------------


def dump(r: redis.Redis) -> str:
    """Every key and every value in Redis, as text."""
    lines = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "string":
            # Raw: a string may be binary (the active-users HyperLogLog), and is searched as text.
            raw = r.execute_command("GET", key, NEVER_DECODE=True)
            value: object = raw.decode(errors="replace") if raw is not None else None
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "set":
            value = r.smembers(key)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = r.xrange(key)
        else:
            value = kind
        lines.append(f"{key} = {value}")
    return "\n".join(lines)


# Keys meant to live until their work is done, or for ever (wacoder.keys, docs/architecture.md):
# the inbox and outbox streams and dead letters (trimmed, never expired), and the notifier's
# running total of sends outside the 24-hour window. Every other key has a TTL.
FOREVER = re.compile(
    r"^(stream:(inbox|outbox|outbox:dead):\{s\d+\}|metrics:notifier:outside_window_total:\{s\d+\})$"
)


def test_redis_and_production_logs_hold_no_number_and_no_message_text(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, config_map: ConfigMap, r: redis.Redis
) -> None:
    dave = "+15557770061"
    alice = Conversation(env, twilio_sim, ALICE)
    alice.ask("/new zebra-garden : my secret orchid plans")
    started = alice.ask("/run build a REST API for orchid watering")
    found = re.search(r"`(sess_[0-9a-f]+)`", started)
    assert found, started
    session_id = found.group(1)
    # The whole session: its progress and its final summary (the zip and file links).
    summary = alice.wait_progress(
        rf"Session `{session_id}` in \*zebra-garden\*: \*(succeeded|failed)\*", timeout_s=180
    )
    assert "/f/" in summary
    alice.ask("please tell me about the purple walrus")
    alice.ask("/list")
    post_signed(env, "/webhook/whatsapp", inbound(STRANGER, "let me in, walrus", message_sid("dump")))
    # A rate-limit refusal: Dave may write twice a minute; the third is refused, and he is told.
    apply(config_map, env, r, [*WHITELIST, dave], per_phone=2)
    answers = [
        post_signed(env, "/webhook/whatsapp", inbound(dave, f"walrus number {i}", message_sid("dump"))).text
        for i in range(3)
    ]
    assert "Too many requests" in answers[-1]
    twilio_sim.wait_for(f"whatsapp:{dave}", 2)  # his two accepted messages answered
    config_map.write(bot_config(WHITELIST))

    private = [
        number
        for phone in (ALICE, STRANGER, dave)
        for number in (phone, phone.removeprefix("+"), phone.removeprefix("+1"))
    ]
    private += ["zebra-garden", "orchid", "walrus"]
    everything = dump(r)
    assert everything  # there is state to look at
    for secret in private:
        assert secret not in everything, f"{secret!r} is in Redis in clear"
    for name, process in stack.processes.items():
        log = process.log_path.read_text() if process.log_path else ""
        assert log  # a production process that said nothing would prove nothing
        for secret in private:
            assert secret not in log, f"{secret!r} leaked into the {name} log"

    # Nothing lives for ever that is not meant to: the seed's indexes included (30 days).
    forever = sorted(key for key in r.scan_iter(count=1000) if r.ttl(key) == -1 and not FOREVER.match(key))
    assert forever == [], f"keys without a TTL: {forever}"
    indexes = [*r.scan_iter("project:*:users"), *r.scan_iter("user:*:projects")]
    assert indexes
    for key in indexes:
        assert 0 < r.ttl(key) <= keys.INDEX_TTL_S, key
