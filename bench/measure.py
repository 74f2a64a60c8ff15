"""What a phase of the bench costs and how its messages fared: CPU per process from /proc,
Redis commands from INFO commandstats, queue depths, percentiles, the Twilio stand-in's replies."""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from bench import procstat

# Commands the bench itself sends during a phase (the snapshots, the depth sampler): left out of
# the per-message counts. The services send neither on their message path.
OWN_COMMANDS = frozenset({"info", "xinfo|groups"})


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def command_calls(client: redis.Redis) -> Counter[str]:
    """Calls per command so far (`INFO commandstats`), sub-commands as `xinfo|groups`."""
    calls: Counter[str] = Counter()
    for name, stats in client.info("commandstats").items():
        calls[name.removeprefix("cmdstat_")] = int(stats["calls"])
    return calls


@dataclass
class PhaseCost:
    """CPU and Redis commands of one phase, per message."""

    messages: int
    seconds: float
    cpu_ms_per_msg: dict[str, float]  # per process (or process tree)
    services_ms_per_msg: float  # the services together (not the stand-in, not the load generator)
    redis_ms_per_msg: float
    total_ms_per_msg: float  # services (or the reference) + redis-server
    other_load_cores: float  # what the rest of the machine burned meanwhile, in cores
    commands_per_msg: float
    top_commands: dict[str, float]  # the most frequent commands, per message
    commands_per_msg_all: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "seconds": round(self.seconds, 3),
            "cpu_ms_per_msg": {k: round(v, 3) for k, v in self.cpu_ms_per_msg.items()},
            "services_cpu_ms_per_msg": round(self.services_ms_per_msg, 3),
            "redis_cpu_ms_per_msg": round(self.redis_ms_per_msg, 3),
            "total_cpu_ms_per_msg": round(self.total_ms_per_msg, 3),
            "other_load_cores": round(self.other_load_cores, 2),
            "redis_commands_per_msg": round(self.commands_per_msg, 3),
            "top_redis_commands_per_msg": {k: round(v, 3) for k, v in self.top_commands.items()},
            "redis_commands_per_msg_all": {k: round(v, 3) for k, v in self.commands_per_msg_all.items()},
        }


class Meter:
    """Reads CPU of the named processes and Redis commandstats at the start and end of a phase.

    `roots()` gives the processes of the moment (`name -> pid`): the ones named in `trees` count
    with every process below them; `own` names the bench's own process (the load generator),
    counted alone (utime + stime of this process: the stack's processes are its children too).
    """

    def __init__(
        self,
        roots: Callable[[], Mapping[str, int]],
        services: Sequence[str],
        redis_name: str,
        client: redis.Redis,
    ) -> None:
        self.roots = roots
        self.services = list(services)
        self.redis_name = redis_name
        self.client = client
        self._before: procstat.Snapshot | None = None
        self._own_before = 0.0
        self._calls_before: Counter[str] = Counter()
        self._began = 0.0

    def start(self) -> None:
        self._calls_before = command_calls(self.client)
        self._own_before = _own_cpu()
        self._before = procstat.snapshot(self.roots())
        self._began = time.perf_counter()

    def stop(self, messages: int) -> PhaseCost:
        assert self._before is not None, "Meter.stop before start"
        seconds = time.perf_counter() - self._began
        after = procstat.snapshot(self.roots())
        own = _own_cpu() - self._own_before
        calls = command_calls(self.client)
        spent = procstat.used(self._before, after)
        spent["load-generator"] = own
        per_msg = {name: s * 1000 / messages for name, s in spent.items()}
        services = sum(per_msg.get(name, 0.0) for name in self.services)
        redis_ms = per_msg.get(self.redis_name, 0.0)
        others = max(procstat.cores_busy(self._before, after) - sum(spent.values()), 0.0) / max(seconds, 1e-9)
        delta = {
            name: count - self._calls_before.get(name, 0)
            for name, count in calls.items()
            if name not in OWN_COMMANDS and count > self._calls_before.get(name, 0)
        }
        per_command = {name: n / messages for name, n in sorted(delta.items(), key=lambda kv: -kv[1])}
        return PhaseCost(
            messages=messages,
            seconds=seconds,
            cpu_ms_per_msg=per_msg,
            services_ms_per_msg=services,
            redis_ms_per_msg=redis_ms,
            total_ms_per_msg=services + redis_ms,
            other_load_cores=others,
            commands_per_msg=sum(delta.values()) / messages,
            top_commands=dict(list(per_command.items())[:6]),
            commands_per_msg_all=per_command,
        )


def _own_cpu() -> float:
    return procstat.own_cpu_seconds()


class DepthSampler:
    """Samples the inbox's and the outbox's depth (entries not yet handled: the consumer group's
    lag plus its pending entries, over every shard) in a thread, every `every_s`."""

    def __init__(
        self,
        client: redis.Redis,
        streams: Mapping[str, tuple[list[str], str]],
        every_s: float = 0.5,
    ) -> None:
        self.client = client
        self.streams = streams  # "inbox" -> ([stream names], group)
        self.every_s = every_s
        self.samples: list[tuple[float, dict[str, int | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DepthSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def depth(self) -> dict[str, int | None]:
        pipe = self.client.pipeline(transaction=False)
        order = []
        for queue, (names, _group) in self.streams.items():
            for name in names:
                pipe.xinfo_groups(name)
                order.append(queue)
        found: dict[str, int | None] = {queue: 0 for queue in self.streams}
        for queue, groups in zip(order, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(groups, Exception):
                continue  # no such stream yet: nothing queued there
            group = next((g for g in groups if _text(g.get("name")) == self.streams[queue][1]), None)
            if group is None:
                continue
            lag = group.get("lag")
            if lag is None or found[queue] is None:
                found[queue] = None  # Redis cannot tell the lag (entries deleted): unknown
            else:
                found[queue] = int(found[queue] or 0) + int(lag) + int(group.get("pending") or 0)
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.depth()))
            except redis.RedisError:
                pass
            self._stop.wait(self.every_s)

    def max_depth(self, queue: str, since: float = 0.0) -> int | None:
        values = [sample[queue] for at, sample in self.samples if at >= since]
        if not values or any(v is None for v in values):
            return None
        return max(int(v) for v in values if v is not None)

    def last_depth(self, queue: str) -> int | None:
        return self.samples[-1][1][queue] if self.samples else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Sim:
    """Reads the local Twilio stand-in (devtools.twilio_sim) the way the bench needs it."""

    def __init__(self, url: str, account_sid: str, auth_token: str) -> None:
        self.url = url
        self.client = httpx.Client(timeout=30)
        self.messages_url = f"{url}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self.auth = (account_sid, auth_token)

    def has(self, count: int) -> bool:
        """Whether at least `count` messages were received: one message of the list at index
        count - 1 (a tiny answer, where the full list would send every message)."""
        if count <= 0:
            return True
        answer = self.client.get(self.messages_url, params={"PageSize": 1, "Page": count - 1}, auth=self.auth)
        return bool(answer.json()["messages"])

    def wait_count(self, count: int, timeout_s: float, poll_s: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.has(count):
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
        return True

    def to(self, phone: str, size: int = 20) -> list[dict[str, Any]]:
        """The newest messages to `phone`, newest first (Twilio's list, filtered)."""
        answer = self.client.get(
            self.messages_url, params={"To": f"whatsapp:{phone}", "PageSize": size}, auth=self.auth
        )
        return list(answer.json()["messages"])

    def all(self) -> list[dict[str, Any]]:
        """Every message received, with the stand-in's own bookkeeping (received_at)."""
        return list(self.client.get(f"{self.url}/_sim/messages").json()["messages"])

    def clear(self) -> None:
        self.client.delete(f"{self.url}/_sim/messages")

    def close(self) -> None:
        self.client.close()


_PART = re.compile(r"^\((\d+)/(\d+)\) ")


def parts_of(body: str) -> int:
    """How many parts the message this part belongs to has ("(1/3) ..." -> 3; unsplit -> 1)."""
    numbered = _PART.match(body)
    return int(numbered.group(2)) if numbered else 1


def steady_rate(times: Sequence[float], low: float = 10, high: float = 90) -> float | None:
    """Events per second between the low-th and high-th percentile of their times: the rate of
    a drain once it is under way, without its ramp-up and its tail."""
    if len(times) < 10:
        return None
    t_low, t_high = percentile(times, low), percentile(times, high)
    if t_high <= t_low:
        return None
    return len(times) * (high - low) / 100 / (t_high - t_low)


def statistics_ms(samples_s: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "n": len(ms),
    }
