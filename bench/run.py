"""`make bench`: the platform side by side with a minimal inline webhook, in one run.

On a fresh redis-server of its own (so INFO commandstats are the bench's), the local Twilio
stand-in (devtools.twilio_sim) and every service started as `make run` starts them
(devtools.stack.Stack):

1. ack: N signed "/help" POSTs from S whitelisted senders, C at a time (closed loop): ack
   throughput and p50/p95/p99; then every reply awaited at the stand-in, and the CPU and Redis
   commands of the whole span (first POST to last reply) per message;
2. end to end, sequential: "/help" and a free-text message ("what projects do I have?": the
   offline router, the bridge, AutoCoder's list_projects; a fresh sender each, so no cache
   answers), POST to the (last part of the) reply at the stand-in, p50/p95;
3. sustained: paced load at a rate the pipe keeps up with (replies keep pace, the backlog
   stays bounded; the inbox's and outbox's depth sampled), first with our one sender number
   (Twilio's 80 msg/s per sender), then through a Messaging Service of 4 senders;
4. CPU ms per message of each process from /proc (children included), the Twilio stand-in and
   the load generator apart, and Redis commands per message (top commands);
5. the same ack load against bench/reference_webhook.py (one uvicorn worker, inline TwiML) on the
   same Redis, before the stack starts: every figure with its ratio to the reference;
6. the scale-out line, once the rest is done and stopped (bench/scale_out.py): sustained end to
   end with REPLICAS=1 and 2 on a Redis Cluster of its own, side by side (`--no-scale-out`
   skips it; `--quick` runs a small one).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from devtools.stack import Stack, free_port, settings_for
from wacoder import keys
from wacoder.settings import Settings

from bench import load
from bench import scale_out as scale_out_bench
from bench.measure import (
    DepthSampler,
    Meter,
    Sim,
    parts_of,
    percentile,
    statistics_ms,
    steady_rate,
)
from bench.profile import Profiler
from tests.harness import ACCOUNT_SID, AUTH_TOKEN, RedisServer, TwilioSim, inbound, stack_env, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / ".run" / "bench"
LATEST = OUT_DIR / "latest.json"
SERVICES = ("webhook", "agent", "mcp-bridge", "notifier", "autocoder")
PROFILED = ("webhook", "agent", "notifier")  # the ones a "/help" keeps busy
FREE_TEXT = "what projects do I have?"
PATH = "/webhook/whatsapp"
# Twilio's default WhatsApp throughput per sender; the notifier's NOTIFIER_SEND_RATE_PER_S.
PER_SENDER_RATE = 80.0
MESSAGING_SERVICE_SID = "MG" + "b" * 32


@dataclass(frozen=True)
class Options:
    concurrency: int = 32
    messages: int = 1000
    senders: int = 50
    e2e_messages: int = 100
    sustain_s: float = 10.0
    pool_senders: int = 4
    pool_env: tuple[tuple[str, str], ...] = ()
    log_level: str | None = None  # None: the services' default, as `make run`
    idle_s: float = 3.0
    warmup: int = 100
    quick: bool = False
    json_path: Path | None = None
    profile: bool = False  # py-spy the hot services during the ack burst (their figures then suffer)
    # The scale-out line (bench/scale_out.py): "/agents" messages, senders, posters.
    scale_out: bool = True
    scale_out_messages: int = scale_out_bench.MESSAGES
    scale_out_senders: int = scale_out_bench.SENDERS
    scale_out_concurrency: int = scale_out_bench.CONCURRENCY

    @classmethod
    def quick_run(cls, **overrides: Any) -> Options:
        base = dict(
            messages=200,
            e2e_messages=15,
            sustain_s=3.0,
            idle_s=1.0,
            warmup=40,
            quick=True,
            scale_out_messages=100,
            scale_out_senders=20,
            scale_out_concurrency=8,
        )
        return cls(**{**base, **overrides})


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    value: float | None
    reference: float | None
    better: str  # "higher" or "lower"
    noisy: bool
    note: str = ""
    reference_note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.reference is None or self.reference == 0:
            return None
        return self.value / self.reference

    def as_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "value": None if self.value is None else round(self.value, 3),
            "reference": None if self.reference is None else round(self.reference, 3),
            "ratio": None if ratio is None else round(ratio, 3),
            "better": self.better,
            "noisy": self.noisy,
            "note": self.note,
            "reference_note": self.reference_note,
        }


@dataclass
class Phones:
    """Whitelisted senders, a distinct range per phase (no state of one phase carries over)."""

    ack: list[str]
    ref_ack: list[str]
    warm: list[str]
    help: list[str]
    ref_help: list[str]
    text: list[str]
    sustain: list[str]
    pool: list[str]

    @classmethod
    def make(cls, options: Options) -> Phones:
        def block(prefix: int, count: int) -> list[str]:
            return [f"+1555{prefix}{n:05d}" for n in range(count)]

        n, k = options.senders, options.e2e_messages
        return cls(
            ack=block(10, n),
            ref_ack=block(11, n),
            warm=block(12, max(n, 10)),
            help=block(20, k),
            ref_help=block(21, k),
            text=block(22, k + 3),
            sustain=block(30, n),
            pool=block(40, n),
        )

    def everyone(self) -> list[str]:
        return [p for group in vars(self).values() for p in group]


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.phones = Phones.make(options)
        self.redis_server = RedisServer()
        self.sim_process: TwilioSim | None = None
        self.sim: Sim | None = None
        self.stack: Stack | None = None
        self.reference: subprocess.Popen[bytes] | None = None
        self.client: redis.Redis | None = None
        self.sids = (f"SMb{n:031d}" for n in range(10**9))
        self.help_parts = 1
        self.results: dict[str, Any] = {"phases": {}, "not_measured": []}
        self.log_dir = OUT_DIR / "logs"
        self.notes: list[str] = []

    # ---- set-up -------------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        assert self.sim_process is not None
        env = stack_env(
            self.redis_server.url,
            self.sim_process.url,
            ALLOWED_PHONE_NUMBERS=",".join(self.phones.everyone()),
            # Far above what the bench sends, so that nothing is refused (README: per minute).
            RATE_LIMIT_PER_PHONE="1000000",
            RATE_LIMIT_GLOBAL="100000000",
            NOTIFIER_SEND_RATE_PER_S=f"{PER_SENDER_RATE:g}",
            **overrides,
        )
        if self.o.log_level:
            env["LOG_LEVEL"] = self.o.log_level
        return env

    def forms(self, phones: Sequence[str], count: int, body: str) -> list[dict[str, str]]:
        """`count` messages round robin over `phones`, each with a MessageSid of its own."""
        return [inbound(phones[n % len(phones)], body, next(self.sids)) for n in range(count)]

    def roots(self) -> dict[str, int]:
        found: dict[str, int] = {}
        if self.stack is not None:
            for name, process in self.stack.processes.items():
                if process.proc is not None and process.proc.poll() is None:
                    found[name] = process.proc.pid
        if self.reference is not None and self.reference.poll() is None:
            found["reference-webhook"] = self.reference.pid
        if self.sim_process is not None:
            found["twilio-stand-in"] = self.sim_process.proc.pid
        assert self.redis_server.proc is not None
        found["redis-server"] = self.redis_server.proc.pid
        return found

    def meter(self, services: Sequence[str]) -> Meter:
        assert self.client is not None
        return Meter(self.roots, services, "redis-server", self.client)

    # ---- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        began = time.perf_counter()
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True)
        self.redis_server.start()
        try:
            self.client = redis.Redis.from_url(self.redis_server.url)
            self.sim_process = TwilioSim()
            self.sim = Sim(self.sim_process.url, ACCOUNT_SID, AUTH_TOKEN)
            say(f"redis-server {self.redis_server.url} (fresh), Twilio stand-in {self.sim_process.url}")
            self.reference_phases()
            env = self.env()
            self.start_stack(env)
            self.warm_up()
            self.idle()
            ack = self.ack_phase()
            self.e2e_phase("help", self.phones.help, "/help")
            self.e2e_phase("free_text", self.phones.text, FREE_TEXT)
            self.sustained_phase("sustained_one_sender", self.phones.sustain, ack.get("drain_msg_per_s"))
            self.with_messaging_service(env)
            pool_burst = self.burst_phase("pool_burst", self.phones.pool)
            self.sustained_phase("sustained_pool", self.phones.pool, pool_burst.get("drain_msg_per_s"))
        finally:
            self.stop()
        self.results["wall_seconds"] = round(time.perf_counter() - began, 1)
        return self.results

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.stop_reference()
        if self.sim is not None:
            self.sim.close()
        if self.sim_process is not None:
            self.sim_process.stop()
        if self.client is not None:
            self.client.close()
        self.redis_server.stop()
        shutil.rmtree(self.redis_server.dir, ignore_errors=True)

    def start_stack(self, env: Mapping[str, str]) -> None:
        began = time.perf_counter()
        self.stack = Stack(env, log_dir=self.log_dir)
        self.stack.start()
        # The stream names the services use (STREAM_SHARDS, QUEUE_NAMESPACE), for the depth sampler.
        settings = settings_for(env)
        keys.configure(settings.stream_shards, settings.queue_namespace)
        pids = ", ".join(f"{name} {p.proc.pid}" for name, p in self.stack.processes.items() if p.proc)
        say(f"stack ready in {time.perf_counter() - began:.1f} s (pids: {pids}; logs in {rel(self.log_dir)})")

    @property
    def url(self) -> str:
        assert self.stack is not None
        return self.stack.env["PUBLIC_BASE_URL"] + PATH

    # ---- the reference ----------------------------------------------------------------------

    def reference_phases(self) -> None:
        """The ack load and sequential /help against the reference, alone on the machine."""
        assert self.sim_process is not None
        port = free_port()
        env = {
            **os.environ,
            **self.env(),
            "WEBHOOK_PORT": str(port),
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        }
        log = (self.log_dir / "reference-webhook.log").open("ab")
        self.reference = subprocess.Popen(
            [sys.executable, "-m", "bench.reference_webhook"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}{PATH}"
        try:
            wait_for_port(port)
            # Warm-up: imports, the Redis connection, the first requests' code paths.
            warm = load.prepare(url, self.forms(self.phones.ref_ack, self.o.warmup, "/help"), AUTH_TOKEN)
            asyncio.run(load.closed_loop(url, warm, self.o.concurrency))
            requests = load.prepare(
                url, self.forms(self.phones.ref_ack, self.o.messages, "/help"), AUTH_TOKEN
            )
            meter = self.meter(["reference-webhook"])
            meter.start()
            result = asyncio.run(load.closed_loop(url, requests, self.o.concurrency))
            cost = meter.stop(len(requests))
            self.check_acks(result, len(requests), "reference ack")
            inline = sum(b"<Message>" in o.body for o in result.outcomes)
            if inline != len(requests):
                raise RuntimeError(f"reference: {inline} of {len(requests)} answers held the reply")
            self.results["phases"]["reference_ack"] = {
                "ack": statistics_ms(result.latencies_s),
                "ack_throughput_per_s": round(len(requests) / result.wall_s, 1),
                "replies_inline": inline,
                "cost": cost.as_dict(),
            }
            say(
                f"reference ack: {len(requests) / result.wall_s:.0f} req/s, "
                f"p99 {percentile(result.latencies_s, 99) * 1000:.1f} ms, "
                f"{cost.total_ms_per_msg:.2f} CPU ms/msg, {cost.commands_per_msg:.1f} Redis commands/msg"
            )
            single = load.Single(url)
            try:
                latencies = []
                for form in self.forms(self.phones.ref_help, self.o.e2e_messages, "/help"):
                    [request] = load.prepare(url, [form], AUTH_TOKEN)
                    outcome = single.send(request)
                    if b"<Message>" not in outcome.body:
                        raise RuntimeError(
                            f"reference /help answered without the reply: {outcome.body[:200]!r}"
                        )
                    latencies.append(outcome.latency_s)
            finally:
                single.close()
            self.results["phases"]["reference_e2e_help"] = statistics_ms(latencies)
        finally:
            self.stop_reference()
            log.close()

    def stop_reference(self) -> None:
        if self.reference is not None and self.reference.poll() is None:
            self.reference.terminate()
            try:
                self.reference.wait(10)
            except subprocess.TimeoutExpired:
                self.reference.kill()
                self.reference.wait()
        self.reference = None

    # ---- phases against the stack -------------------------------------------------------------

    def warm_up(self) -> None:
        """A message from each warm-up sender and a few free-text turns, every reply awaited:
        connections, caches and code paths warm; the stand-in emptied after."""
        assert self.sim is not None
        forms = self.forms(self.phones.warm, self.o.warmup, "/help")
        requests = load.prepare(self.url, forms, AUTH_TOKEN)
        result = asyncio.run(load.closed_loop(self.url, requests, self.o.concurrency))
        self.check_acks(result, len(requests), "warm-up")
        if not self.sim.wait_count(len(requests), timeout_s=120):
            raise RuntimeError(f"warm-up: not every reply arrived within 120 s ({len(self.sim.all())})")
        replies = self.sim.all()
        self.help_parts = parts_of(replies[0]["body"])
        if self.help_parts != 1:
            if not self.sim.wait_count(len(requests) * self.help_parts, timeout_s=60):
                raise RuntimeError("warm-up: the /help replies' parts did not all arrive")
        single = load.Single(self.url)
        try:
            for phone in self.phones.text[-3:]:
                [request] = load.prepare(self.url, self.forms([phone], 1, FREE_TEXT), AUTH_TOKEN)
                sent = single.send(request)
                self.wait_reply(phone, sent.sent_at, timeout_s=60)
        finally:
            single.close()
        self.sim.clear()

    def idle(self) -> None:
        """What the stack burns doing nothing (lease renewals, blocked reads): part of every
        phase's per-message figure, the more so the slower a phase."""
        meter = self.meter(SERVICES)
        meter.start()
        time.sleep(self.o.idle_s)
        # Per second rather than per message: "messages" = seconds.
        cost = meter.stop(1)
        seconds = cost.seconds
        self.results["idle"] = {
            "seconds": round(seconds, 2),
            "cpu_ms_per_s": {k: round(v / seconds, 2) for k, v in cost.cpu_ms_per_msg.items()},
            "services_cpu_ms_per_s": round(cost.services_ms_per_msg / seconds, 2),
            "redis_cpu_ms_per_s": round(cost.redis_ms_per_msg / seconds, 2),
            "redis_commands_per_s": round(cost.commands_per_msg / seconds, 1),
            "top_redis_commands_per_s": {k: round(v / seconds, 1) for k, v in cost.top_commands.items()},
        }

    def ack_phase(self) -> dict[str, Any]:
        return self.burst_phase("ack", self.phones.ack)

    def burst_phase(self, name: str, phones: Sequence[str]) -> dict[str, Any]:
        """N "/help" as fast as the webhook acknowledges them (C at a time), every reply awaited;
        the cost of the whole span, the replies' drain rate."""
        assert self.sim is not None
        self.sim.clear()
        requests = load.prepare(self.url, self.forms(phones, self.o.messages, "/help"), AUTH_TOKEN)
        profiler = None
        if self.o.profile and name == "ack":
            hot = {k: v for k, v in self.roots().items() if k in PROFILED}
            profiler = Profiler(hot, OUT_DIR / "profiles")
            profiler.start()
            time.sleep(1.0)  # py-spy attached before the load starts
        meter = self.meter(SERVICES)
        meter.start()
        result = asyncio.run(load.closed_loop(self.url, requests, self.o.concurrency))
        expected = len(requests) * self.help_parts
        arrived = self.sim.wait_count(expected, timeout_s=max(60.0, expected / 20))
        cost = meter.stop(len(requests))
        if profiler is not None:
            self.results["profiles"] = profiler.stop()
        self.check_acks(result, len(requests), name)
        replies = self.check_replies(requests, name, complete=arrived)
        arrivals = [float(m["received_at"]) for m in replies]
        first_post = min(o.sent_at for o in result.outcomes)
        drain = steady_rate(arrivals)
        phase: dict[str, Any] = {
            "messages": len(requests),
            "senders": len(set(phones)),
            "concurrency": self.o.concurrency,
            "ack": statistics_ms(result.latencies_s),
            "ack_throughput_per_s": round(len(requests) / result.wall_s, 1),
            "ack_non_200": result.non_200,
            "replies": len(replies),
            "all_replied_s": round(max(arrivals) - first_post, 3),
            "end_to_end_msg_per_s": round(len(requests) / (max(arrivals) - first_post), 1),
            "drain_msg_per_s": None if drain is None else round(drain, 1),
            "cost": cost.as_dict(),
        }
        self.results["phases"][name] = phase
        say(
            f"{name}: ack {phase['ack_throughput_per_s']:.0f} req/s p99 {phase['ack']['p99_ms']:.1f} ms; "
            f"{len(replies)} replies in {phase['all_replied_s']:.1f} s "
            f"(drain {phase['drain_msg_per_s']} msg/s); "
            f"{cost.total_ms_per_msg:.2f} CPU ms/msg, {cost.commands_per_msg:.1f} Redis commands/msg"
        )
        return phase

    def e2e_phase(self, name: str, phones: Sequence[str], body: str) -> None:
        """Sequential: POST, then wait until the (last part of the) reply is at the stand-in."""
        assert self.sim is not None
        self.sim.clear()
        single = load.Single(self.url)
        meter = self.meter(SERVICES)
        meter.start()
        sent: list[tuple[str, float]] = []
        try:
            for phone in phones[: self.o.e2e_messages]:
                [request] = load.prepare(self.url, self.forms([phone], 1, body), AUTH_TOKEN)
                outcome = single.send(request)
                self.wait_reply(phone, outcome.sent_at, timeout_s=60)
                sent.append((phone, outcome.sent_at))
        finally:
            single.close()
        cost = meter.stop(len(sent))
        # The stand-in's own arrival times (this machine's clock), not when a poll noticed them.
        last_part: dict[str, float] = {}
        for message in self.sim.all():
            phone = str(message["to"]).removeprefix("whatsapp:")
            last_part[phone] = max(last_part.get(phone, 0.0), float(message["received_at"]))
        latencies = [last_part[phone] - at for phone, at in sent]
        sample = next((str(m["body"]) for m in self.sim.all()), "")
        self.results["phases"][f"e2e_{name}"] = {
            "body": body,
            "sample_reply": sample[:160],
            "latency": statistics_ms(latencies),
            "cost": cost.as_dict(),
        }
        stats = self.results["phases"][f"e2e_{name}"]["latency"]
        say(
            f"end to end {body!r}: p50 {stats['p50_ms']:.1f} ms, p95 {stats['p95_ms']:.1f} ms (n={len(sent)})"
        )

    def wait_reply(self, phone: str, since: float, timeout_s: float) -> None:
        """Until every part of the reply to `phone` is at the stand-in."""
        assert self.sim is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.sim.to(phone)
            if found and len(found) >= parts_of(str(found[-1]["body"])):
                return
            time.sleep(0.004)
        raise RuntimeError(f"no reply to a sequential message within {timeout_s:.0f} s")

    def sustained_phase(self, name: str, phones: Sequence[str], estimate: float | None) -> None:
        """Paced load at a rate the pipe should keep up with: 95% of the drain rate measured in
        the burst before, lowered by 20% after each failed try (3 tries at most)."""
        if estimate is None:
            self.not_measured(name, "no drain rate to start from (too few replies in the burst)")
            return
        rate = 0.95 * estimate
        tries: list[dict[str, Any]] = []
        for _ in range(3):
            attempt = self.paced_attempt(phones, rate)
            tries.append(attempt)
            say(
                f"{name}: offered {attempt['offered_msg_per_s']:.0f} msg/s for {attempt['seconds']:.0f} s -> "
                f"replies {attempt['reply_msg_per_s']:.0f} msg/s, "
                f"backlog at end {attempt['backlog_at_end']} "
                f"(growing {attempt['backlog_growth_msg_per_s']:+.1f}/s), "
                f"max inbox {attempt['max_inbox_depth']} outbox {attempt['max_outbox_depth']}: "
                f"{'kept up' if attempt['kept_up'] else 'fell behind'}"
            )
            if attempt["kept_up"]:
                break
            rate *= 0.8
        kept = [t for t in tries if t["kept_up"]]
        self.results["phases"][name] = {
            "estimate_msg_per_s": round(estimate, 1),
            "tries": tries,
            "sustained_msg_per_s": kept[-1]["reply_msg_per_s"] if kept else None,
        }
        if not kept:
            self.not_measured(
                name, f"no tried rate was kept up with: {[t['offered_msg_per_s'] for t in tries]}"
            )

    def paced_attempt(self, phones: Sequence[str], rate: float) -> dict[str, Any]:
        assert self.sim is not None and self.client is not None
        self.sim.clear()
        count = max(int(rate * self.o.sustain_s), 20)
        requests = load.prepare(self.url, self.forms(phones, count, "/help"), AUTH_TOKEN)
        streams = {
            "inbox": ([keys.inbox_stream(s) for s in range(keys.SHARDS)], keys.INBOX_GROUP),
            "outbox": ([keys.outbox_stream(s) for s in range(keys.SHARDS)], keys.OUTBOX_GROUP),
        }
        meter = self.meter(SERVICES)
        with DepthSampler(self.client, streams) as depths:
            meter.start()
            result = asyncio.run(load.paced(self.url, requests, rate, self.o.concurrency))
            expected = count * self.help_parts
            arrived = self.sim.wait_count(expected, timeout_s=max(30.0, count / 10))
            cost = meter.stop(count)
        self.check_acks(result, count, "sustained")
        replies = self.check_replies(requests, "sustained", complete=arrived)
        first = min(o.sent_at for o in result.outcomes)
        last = max(o.sent_at for o in result.outcomes)
        acked = sorted(o.sent_at + o.latency_s for o in result.outcomes)
        arrivals = sorted(float(m["received_at"]) for m in replies)
        # Replies that ended a message (its last part): a message is answered when they are in.
        done = arrivals[self.help_parts - 1 :: self.help_parts]
        span = last - first
        window_from = first + span / 4
        replied_in_window = sum(window_from <= t <= last for t in done)
        reply_rate = replied_in_window / (last - window_from) if last > window_from else 0.0
        backlog = sum(t <= last for t in acked) - sum(t <= last for t in done)
        offered = (count - 1) / span if span > 0 else float(count)
        # Kept up: replies came at the offered rate, the backlog (accepted, not yet answered) ended
        # under half a second's worth, and it was not growing over the last three quarters.
        bound = max(10, int(0.5 * rate))
        growth = backlog_growth(acked, done, window_from, last)
        kept_up = reply_rate >= 0.95 * offered and backlog <= bound and growth <= max(1.0, 0.03 * offered)
        return {
            "offered_msg_per_s": round(offered, 1),
            "target_msg_per_s": round(rate, 1),
            "messages": count,
            "seconds": round(span, 2),
            "reply_msg_per_s": round(reply_rate, 1),
            "backlog_at_end": backlog,
            "backlog_bound": bound,
            "backlog_growth_msg_per_s": round(growth, 2),
            "drained_after_s": round(max(arrivals) - last, 2) if arrivals else None,
            "max_inbox_depth": depths.max_depth("inbox"),
            "max_outbox_depth": depths.max_depth("outbox"),
            "ack": statistics_ms(result.latencies_s),
            "kept_up": kept_up,
            "cost": cost.as_dict(),
        }

    def with_messaging_service(self, env: Mapping[str, str]) -> None:
        """Restarts every service with a Messaging Service of `pool_senders` senders."""
        assert self.stack is not None
        extra = messaging_service_env(self.o.pool_senders, dict(self.o.pool_env))
        self.results["messaging_service_env"] = extra
        say(
            f"restarting the stack with a Twilio Messaging Service of {self.o.pool_senders} senders: "
            + ", ".join(f"{k}={v}" for k, v in extra.items())
        )
        if len(extra) == 1:
            self.notes.append(
                "no setting for the Messaging Service's pool size was found in wacoder.settings.Settings "
                "(only TWILIO_MESSAGING_SERVICE_SID was set; pass --pool-env KEY=VALUE)"
            )
        self.stack.stop()
        self.stack = None
        self.start_stack({**env, **extra})

    # ---- checks ---------------------------------------------------------------------------------

    def check_acks(self, result: load.LoadResult, expected: int, phase: str) -> None:
        if result.failures or len(result.outcomes) != expected:
            raise RuntimeError(
                f"{phase}: {len(result.outcomes)} of {expected} accepted; failures {result.failures[:3]}"
            )

    def check_replies(
        self, requests: Sequence[load.Prepared], phase: str, complete: bool
    ) -> list[dict[str, Any]]:
        """Every message answered exactly once (in `help_parts` parts) and nothing else sent."""
        assert self.sim is not None
        time.sleep(0.5)  # a duplicate arriving just after the last expected reply is caught too
        replies = self.sim.all()
        sent = Counter(r.phone for r in requests)
        got = Counter(str(m["to"]).removeprefix("whatsapp:") for m in replies)
        wrong = {
            phone: (got[phone], sent[phone] * self.help_parts)
            for phone in sent.keys() | got.keys()
            if got[phone] != sent[phone] * self.help_parts
        }
        if wrong or not complete:
            sample = dict(list(wrong.items())[:5])
            raise RuntimeError(
                f"{phase}: {len(replies)} replies for {len(requests)} messages; senders with the wrong "
                f"count (received, expected): {sample}"
            )
        return replies

    def not_measured(self, what: str, why: str) -> None:
        self.results["not_measured"].append({"figure": what, "why": why})


def backlog_growth(acked: Sequence[float], done: Sequence[float], since: float, until: float) -> float:
    """How fast the backlog (accepted minus answered) grew between `since` and `until`, in
    messages per second: the least-squares slope of ten samples a second."""
    points: list[tuple[float, float]] = []
    at = since
    while at <= until:
        points.append((at, bisect.bisect_right(acked, at) - bisect.bisect_right(done, at)))
        at += 0.1
    if len(points) < 3:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_b = statistics.fmean(b for _, b in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (b - mean_b) for t, b in points) / spread


def messaging_service_env(senders: int, given: Mapping[str, str]) -> dict[str, str]:
    """TWILIO_MESSAGING_SERVICE_SID, and the pool's size or numbers where Settings has a field for
    them (`twilio_messaging_service_*`): an integer field gets the count, a text field the
    numbers, comma-separated. `given` (--pool-env) wins."""
    env = {"TWILIO_MESSAGING_SERVICE_SID": MESSAGING_SERVICE_SID}
    numbers = ",".join(f"whatsapp:+1415523{8886 + n:04d}" for n in range(senders))
    for name, spec in Settings.model_fields.items():
        if not name.startswith("twilio_messaging_service_") or name == "twilio_messaging_service_sid":
            continue
        kinds = set(typing.get_args(spec.annotation)) | {spec.annotation}
        if int in kinds:
            env[name.upper()] = str(senders)
        elif str in kinds or any(typing.get_origin(k) in (list, tuple) for k in kinds):
            env[name.upper()] = numbers
    env.update(given)
    return env


def say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ---- figures, table, JSON -----------------------------------------------------------------------


def figures(results: Mapping[str, Any], options: Options) -> list[Figure]:
    p = results["phases"]
    ref = p["reference_ack"]
    ref_help = p["reference_e2e_help"]
    ack = p["ack"]
    c = options.concurrency
    found = [
        Figure(
            "ack_throughput",
            f"ack throughput, {c} concurrent",
            "req/s",
            ack["ack_throughput_per_s"],
            ref["ack_throughput_per_s"],
            "higher",
            True,
        ),
    ]
    for q in ("p50", "p95", "p99"):
        found.append(
            Figure(
                f"ack_{q}",
                f"ack {q}, {c} concurrent",
                "ms",
                ack["ack"][f"{q}_ms"],
                ref["ack"][f"{q}_ms"],
                "lower",
                True,
            )
        )
    inline = "inline TwiML: the reply is in the ack (sequential)"
    for q in ("p50", "p95"):
        found.append(
            Figure(
                f"e2e_help_{q}",
                f"end to end /help {q}",
                "ms",
                p["e2e_help"]["latency"][f"{q}_ms"],
                ref_help[f"{q}_ms"],
                "lower",
                True,
                reference_note=inline,
            )
        )
    for q in ("p50", "p95"):
        found.append(
            Figure(
                f"e2e_free_text_{q}",
                f"end to end free text {q}",
                "ms",
                p["e2e_free_text"]["latency"][f"{q}_ms"],
                None,
                "lower",
                True,
                note=f"{FREE_TEXT!r}: router, bridge, AutoCoder",
                reference_note="the reference has no free-text path",
            )
        )
    capacity = "inline replies: its ack throughput is its sustained rate"
    for key, label in (
        ("sustained_one_sender", "sustained end to end, 1 sender"),
        ("sustained_pool", f"sustained end to end, Messaging Service of {options.pool_senders}"),
    ):
        value = p.get(key, {}).get("sustained_msg_per_s")
        found.append(
            Figure(
                key,
                label,
                "msg/s",
                value,
                ref["ack_throughput_per_s"],
                "higher",
                True,
                note=f"per-sender limit {PER_SENDER_RATE:g} msg/s",
                reference_note=capacity,
            )
        )
    # Side by side: the same load with one and with two replicas of each gRPC service.
    cluster = results.get("scale_out", {}).get("median_msg_per_s", {})
    for replicas in scale_out_bench.REPLICA_COUNTS:
        found.append(
            Figure(
                f"scale_out_replicas_{replicas}",
                f"sustained end to end, Redis Cluster, REPLICAS={replicas}",
                "msg/s",
                cluster.get(str(replicas)),
                None,
                "higher",
                True,
                note="'/agents' at full speed, no send-rate cap; agent, bridge, notifier replicated",
                reference_note="one process on one standalone Redis: it has no replicas",
            )
        )
    found.append(
        Figure(
            "end_to_end_burst",
            f"end to end after a burst of {ack['messages']}",
            "msg/s",
            ack["end_to_end_msg_per_s"],
            ref["ack_throughput_per_s"],
            "higher",
            True,
            note="first POST to the last reply",
            reference_note=capacity,
        )
    )
    cost, ref_cost = ack["cost"], ref["cost"]
    found.append(
        Figure(
            "cpu_total",
            "CPU per message, services + Redis",
            "ms",
            cost["total_cpu_ms_per_msg"],
            ref_cost["total_cpu_ms_per_msg"],
            "lower",
            False,
            note="ack burst, every reply sent",
        )
    )
    ref_total = ref_cost["total_cpu_ms_per_msg"]
    for name in SERVICES:
        found.append(
            Figure(
                f"cpu_{name}",
                f"  CPU {name}",
                "ms",
                cost["cpu_ms_per_msg"].get(name),
                ref_total,
                "lower",
                False,
                reference_note="the reference's whole CPU (process + Redis)",
            )
        )
    found.append(
        Figure(
            "cpu_redis",
            "  CPU redis-server",
            "ms",
            cost["redis_cpu_ms_per_msg"],
            ref_cost["redis_cpu_ms_per_msg"],
            "lower",
            False,
        )
    )
    found.append(
        Figure(
            "redis_commands",
            "Redis commands per message",
            "cmds",
            cost["redis_commands_per_msg"],
            ref_cost["redis_commands_per_msg"],
            "lower",
            False,
        )
    )
    return found


def table(found: Sequence[Figure]) -> str:
    """The figures, one a line; a reference that is not like for like carries a footnote mark."""
    notes: list[str] = []
    for f in found:
        if f.reference_note and f.reference_note not in notes:
            notes.append(f.reference_note)
    width = max(len(f.label) for f in found) + 2
    rows = [f"{'figure':<{width}}{'unit':>6} {'this':>10} {'reference':>12} {'ratio':>8}"]
    for f in found:
        value = "—" if f.value is None else f"{f.value:,.2f}"
        reference = "—" if f.reference is None else f"{f.reference:,.2f}"
        if f.reference_note:
            reference += f" [{notes.index(f.reference_note) + 1}]"
        ratio = "—" if f.ratio is None else f"{f.ratio:.2f}x"
        flag = "noisy" if f.noisy else "steady"
        rows.append(f"{f.label:<{width}}{f.unit:>6} {value:>10} {reference:>12} {ratio:>8}  {flag}")
    rows += [f"  [{n}] reference: {note}" for n, note in enumerate(notes, start=1)]
    return "\n".join(rows)


def report(results: dict[str, Any], options: Options) -> dict[str, Any]:
    found = figures(results, options)
    p = results["phases"]
    print()
    print(table(found))
    print()
    cost = p["ack"]["cost"]
    top = ", ".join(f"{k} {v:.1f}" for k, v in cost["top_redis_commands_per_msg"].items())
    ref_top = ", ".join(
        f"{k} {v:.1f}" for k, v in p["reference_ack"]["cost"]["top_redis_commands_per_msg"].items()
    )
    print(f"Redis commands per message: {top}  (reference: {ref_top})")
    besides = cost["cpu_ms_per_msg"]
    print(
        f"not in the sums (same cores): Twilio stand-in {besides.get('twilio-stand-in', 0):.2f} ms/msg, "
        f"load generator {besides.get('load-generator', 0):.2f} ms/msg "
        f"(reference run: {p['reference_ack']['cost']['cpu_ms_per_msg'].get('load-generator', 0):.2f})"
    )
    idle = results["idle"]
    print(
        f"idle stack: services {idle['services_cpu_ms_per_s']:.1f} CPU ms/s, redis "
        f"{idle['redis_cpu_ms_per_s']:.1f} ms/s, {idle['redis_commands_per_s']:.0f} Redis commands/s "
        "(included in the per-message figures)"
    )
    for key in ("sustained_one_sender", "sustained_pool"):
        kept = [t for t in p.get(key, {}).get("tries", []) if t["kept_up"]]
        if kept:
            t = kept[-1]
            print(
                f"{key}: {t['reply_msg_per_s']:.1f} msg/s for {t['seconds']:.0f} s, backlog at end "
                f"{t['backlog_at_end']} (bound {t['backlog_bound']}), max depth inbox {t['max_inbox_depth']} "
                f"outbox {t['max_outbox_depth']}, {t['cost']['total_cpu_ms_per_msg']:.2f} CPU ms/msg"
            )
    if "scale_out" in results:
        print(scale_out_line(results["scale_out"]))
    others = max(c.get("other_load_cores", 0.0) for c in [p["ack"]["cost"], p["reference_ack"]["cost"]])
    print(
        "noisy: wall-clock figures (throughput, latency, sustained rates) move with whatever else runs on "
        f"the machine (up to {others:.2f} cores busy elsewhere during the ack phases); steady: CPU ms/msg "
        "(/proc utime+stime) and Redis commands/msg"
    )
    for service, summary in results.get("profiles", {}).items():
        if "error" in summary:
            print(f"profile {service}: {summary['error']}")
            continue
        print(
            f"profile {service} ({summary['samples']} samples on CPU during the ack burst; {summary['raw']}):"
        )
        for title, key in (
            ("self", "self_percent"),
            ("by package", "package_percent"),
            ("own code, deepest frame", "own_code_deepest_percent"),
            ("own code, inclusive", "own_code_inclusive_percent"),
        ):
            shares = "; ".join(f"{frame} {pct:.0f}%" for frame, pct in list(summary[key].items())[:6])
            print(f"  {title}: {shares}")
    for item in results["not_measured"]:
        print(f"not measured: {item['figure']}: {item['why']}")
    return {"figures": [f.as_dict() for f in found]}


def scale_out_line(measured: Mapping[str, Any]) -> str:
    """The scale-out figures in one line: msg/s and CPU per message with 1 and with 2 replicas."""
    runs = {run["replicas"]: run for run in measured["results"]}
    side = " | ".join(
        f"REPLICAS={r} {msg_per_s:.1f} msg/s, {runs[int(r)]['cpu_ms_per_msg_services']:.2f} CPU ms/msg"
        for r, msg_per_s in measured["median_msg_per_s"].items()
    )
    first = next(iter(runs.values()))
    return (
        f"scale-out on a Redis Cluster (3 masters + 3 replicas; {first['messages']} '/agents' from "
        f"{first['senders']} senders): {side}; {measured['ratio_msg_per_s']:.2f}x"
    )


def measure_scale_out(options: Options) -> dict[str, Any]:
    """bench/scale_out.py with the options' sizes (it prints its own table as it goes)."""
    say(
        "scale-out: REPLICAS=1 and 2 on a Redis Cluster of its own (bench/scale_out.py; "
        "--no-scale-out skips it)"
    )
    measured = scale_out_bench.run(
        options.scale_out_messages, options.scale_out_senders, options.scale_out_concurrency
    )
    return scale_out_bench.summary(measured)


def write_json(results: dict[str, Any], options: Options, path: Path) -> None:
    document = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "options": {
            "concurrency": options.concurrency,
            "messages": options.messages,
            "senders": options.senders,
            "e2e_messages": options.e2e_messages,
            "sustain_seconds": options.sustain_s,
            "pool_senders": options.pool_senders,
            "quick": options.quick,
            "per_sender_rate": PER_SENDER_RATE,
            "log_level": options.log_level or "service default",
            "scale_out": options.scale_out,
            "scale_out_messages": options.scale_out_messages,
            "scale_out_senders": options.scale_out_senders,
            "scale_out_concurrency": options.scale_out_concurrency,
        },
        **results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def main(options: Options) -> dict[str, Any]:
    bench = Bench(options)
    say(
        f"{options.messages} '/help' at {options.concurrency} concurrent from {options.senders} senders; "
        f"{options.e2e_messages} sequential per end-to-end figure; sustained tries of {options.sustain_s:g} s"
        + (" (--quick)" if options.quick else "")
    )
    began = time.perf_counter()
    results = bench.run()
    # After the rest is stopped: the scale-out stacks have the machine to themselves.
    if options.scale_out:
        results["scale_out"] = measure_scale_out(options)
    else:
        bench.not_measured("scale-out (REPLICAS=1 and 2 on a Redis Cluster)", "--no-scale-out")
    results["wall_seconds"] = round(time.perf_counter() - began, 1)
    if options.profile:
        bench.notes.append("--profile: py-spy sampled the services during the ack burst; its figures suffer")
    if options.quick:
        bench.notes.append(
            "--quick: a smoke run; its sustained tries are too short to use up the notifier's one-second "
            "burst allowance, so its sustained rates overstate"
        )
    results["notes"] = bench.notes
    results.update(report(results, options))
    for note in bench.notes:
        print(f"note: {note}")
    target = options.json_path or LATEST
    write_json(results, options, target)
    print(f"figures in {rel(target)} ({results['wall_seconds']:.0f} s in all)")
    return results
