"""`make bench`'s scale-out line: sustained end-to-end throughput with one and with two replicas
of the agent, the bridge and the notifier, on a real Redis Cluster (3 masters, 3 replicas).
`make bench` runs it after its other figures (`--no-scale-out` skips it; `--quick` runs a small
one); alone, it is `python -m bench scale-out`.

For each replica count, on the same cluster (flushed in between, and fresh senders per run):
- a stack with `replicas=r`, Twilio's per-sender send rate (80/s by default) and our own rate
  limits raised far out of the way, so what is measured is the platform, not a configured cap;
- a warm-up (a few messages per sender, every reply awaited) and every shard lease settled
  (r owners of the agent's and of the notifier's shards, evenly);
- the load: M signed "/agents" messages from many senders, all with distinct MessageSids, posted
  by a fixed number of threads (an httpx.Client each) as fast as the webhook acknowledges them.
  Sustained msg/s = M / (first POST .. the last reply received by the Twilio stand-in).
  Every message must get exactly one reply (the /agents text), else the bench fails.
- CPU time of every process of the stack (/proc/<pid>/stat utime + stime, before and after),
  per message: unlike msg/s it barely moves on a noisy machine; the redis-server nodes apart.

"/agents" goes webhook -> agent -> notifier -> Twilio and is answered by the agent itself (no
AutoCoder call): it measures the message path, not a coding session.

Alone: `.venv/bin/python -m bench scale-out [--messages M] [--senders N] [--concurrency C] [--rounds R]`.
It prints its table and writes `.run/bench/scale_out.json` either way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.procstat import descendants
from tests.harness import ACCOUNT_SID, AUTH_TOKEN, TwilioSim, inbound, sign, stack_env, start_stack
from tests.redis_cluster import RedisClusterServer

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / ".run" / "bench"
RESULT = OUT_DIR / "scale_out.json"

REPLICA_COUNTS = (1, 2)
MESSAGES = 1500
SENDERS = 200
CONCURRENCY = 32
WARMUP_PER_SENDER = 2
IDLE_S = 3.0
SEND_RATE_PER_S = 10_000
REPLY_PREFIX = "*AutoCoder agents*"
LEASED_SERVICES = ("agent", "notifier")
SHARDS = 16  # STREAM_SHARDS: the default, left as is
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RunResult:
    replicas: int
    messages: int
    senders: int
    concurrency: int
    seconds: float
    msg_per_s: float
    ack_p50_ms: float
    ack_p99_ms: float
    ack_non_200: int
    cpu_ms_per_msg_services: float
    cpu_ms_per_msg_redis: float
    cpu_ms_per_msg_twilio_sim: float
    cpu_ms_per_msg_load_generator: float
    processes: int
    idle_cpu_ms_per_s_services: float
    other_load_cores: float
    cpu_ms_per_msg_by_process: dict[str, float]


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (every thread of it), in seconds; 0 for a process that is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces: cut after it
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time every core of the machine spent busy (or stolen by the hypervisor), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def total_cpu(pids: Iterable[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def cpu_used(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    return sum(after.get(pid, before[pid]) - before[pid] for pid in before) + sum(
        spent for pid, spent in after.items() if pid not in before
    )


def quantile_ms(samples_s: list[float], q: int) -> float:
    return statistics.quantiles([s * 1000 for s in samples_s], n=100)[q - 1]


def flush(cluster: RedisClusterServer) -> None:
    """Empties every master (the replicas follow), so each run starts on an empty keyspace."""
    for port in cluster.masters():
        with redis.Redis("127.0.0.1", port) as node:
            node.flushall()


def lease_owners(cluster: RedisClusterServer, service: str) -> Counter[str]:
    """Shards held per replica of `service` (keys.shard_lease: `lease:<service>:{s<n>}`)."""
    owners: Counter[str] = Counter()
    with redis.RedisCluster("127.0.0.1", cluster.ports[0], decode_responses=True) as client:
        for shard in range(SHARDS):
            owner = client.get(f"lease:{service}:{{s{shard}}}")
            owners[owner or "(free)"] += 1
    return owners


def wait_leases_settled(cluster: RedisClusterServer, replicas: int, timeout_s: float = 60.0) -> None:
    """Until each leased service's shards are held by `replicas` owners, ceil(shards / r) at most each."""
    deadline = time.monotonic() + timeout_s
    while True:
        owners = {service: lease_owners(cluster, service) for service in LEASED_SERVICES}
        if all(
            "(free)" not in held
            and len(held) == replicas
            and max(held.values()) <= math.ceil(SHARDS / replicas)
            for held in owners.values()
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"shard leases not balanced over {replicas} replica(s): {owners}")
        time.sleep(0.5)


def wait_replies(sim: TwilioSim, count: int, timeout_s: float, poll_s: float = 0.1) -> None:
    """Until the Twilio stand-in holds `count` messages. Asks for one message of its list at
    index count - 1 (PageSize=1): a tiny answer, where `sim.messages()` would send every one."""
    deadline = time.monotonic() + timeout_s
    url = f"{sim.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    with httpx.Client(auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=10) as client:
        while not client.get(url, params={"PageSize": 1, "Page": count - 1}).json()["messages"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(sim.messages())} of {count} replies within {timeout_s:.0f} s")
            time.sleep(poll_s)


def check_replies(sim: TwilioSim, sent: Counter[str], phase: str) -> list[float]:
    """Every message of `sent` (per sender) answered exactly once with the /agents text; the
    replies' arrival times at the stand-in."""
    time.sleep(2.0)  # a duplicate arriving a little after the last expected reply is caught too
    messages = sim.messages()
    got = Counter(m["to"].removeprefix("whatsapp:") for m in messages)
    wrong = {
        phone: (got[phone], sent[phone]) for phone in sent.keys() | got.keys() if got[phone] != sent[phone]
    }
    if wrong:
        sample = dict(itertools.islice(wrong.items(), 5))
        raise RuntimeError(
            f"{phase}: {len(wrong)} sender(s) did not get exactly one reply per message "
            f"(received, sent): {sample}; {len(messages)} replies for {sum(sent.values())} messages"
        )
    unexpected = [m["body"] for m in messages if not m["body"].startswith(REPLY_PREFIX)]
    if unexpected:
        raise RuntimeError(f"{phase}: {len(unexpected)} replies are not the /agents text: {unexpected[:3]}")
    return [float(m["received_at"]) for m in messages]


class Load:
    """Posts prepared, signed forms from `concurrency` threads, an httpx.Client each."""

    def __init__(self, url: str, forms: list[dict[str, str]], concurrency: int) -> None:
        self.url = url
        # Signing is done before the clock starts: the bench measures the platform, not HMAC.
        self.requests = [(form, {"X-Twilio-Signature": sign(url, form)}) for form in forms]
        self.concurrency = concurrency
        self.acks: list[float] = []
        self.non_200 = 0
        self.errors: list[str] = []
        self._next = itertools.count()
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} message(s) not accepted: {self.errors[:3]}")

    def _worker(self) -> None:
        acks: list[float] = []
        with httpx.Client(timeout=30) as client:
            while (index := next(self._next)) < len(self.requests):
                form, headers = self.requests[index]
                # A 503 (no Redis replica confirmed in time) is retried as Twilio would, with
                # the same MessageSid; counted, and only the accepting attempt is an ack sample.
                for attempt in range(5):
                    began = time.perf_counter()
                    answer = client.post(self.url, data=form, headers=headers)
                    elapsed = time.perf_counter() - began
                    if answer.status_code == 200:
                        acks.append(elapsed)
                        break
                    with self._lock:
                        self.non_200 += 1
                    time.sleep(0.5 * (attempt + 1))
                else:
                    with self._lock:
                        self.errors.append(f"{form['MessageSid']}: {answer.status_code} {answer.text[:200]}")
        with self._lock:
            self.acks.extend(acks)


def forms_for(phones: list[str], count: int, tag: str) -> tuple[list[dict[str, str]], Counter[str]]:
    """`count` "/agents" messages, round robin over `phones`, each with a MessageSid of its own."""
    forms = [
        inbound(phones[n % len(phones)], "/agents", f"SM{tag}{n:0{32 - len(tag)}d}") for n in range(count)
    ]
    return forms, Counter(form["From"].removeprefix("whatsapp:") for form in forms)


def run_once(
    cluster: RedisClusterServer, sim: TwilioSim, replicas: int, messages: int, senders: int, concurrency: int
) -> RunResult:
    flush(cluster)
    sim.clear()
    env = stack_env(
        cluster.url,
        sim.url,
        NOTIFIER_SEND_RATE_PER_S=str(SEND_RATE_PER_S),
        RATE_LIMIT_PER_PHONE="1000000",
        RATE_LIMIT_GLOBAL="100000000",
        LOG_LEVEL="WARNING",
    )
    logs = OUT_DIR / "logs" / f"replicas-{replicas}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    stack = start_stack(env, log_dir=logs, replicas=replicas)
    url = env["PUBLIC_BASE_URL"] + "/webhook/whatsapp"
    # Fresh senders per run: no state of an earlier run (rate counters, windows) can carry over.
    phones = [f"+1555{replicas}{n:06d}" for n in range(senders)]
    try:
        wait_leases_settled(cluster, replicas)
        warm_forms, warm_sent = forms_for(phones, WARMUP_PER_SENDER * senders, f"w{replicas}")
        Load(url, warm_forms, concurrency).run()
        wait_replies(sim, len(warm_forms), timeout_s=180)
        check_replies(sim, warm_sent, f"warm-up, {replicas} replica(s)")
        wait_leases_settled(cluster, replicas)
        sim.clear()

        forms, sent = forms_for(phones, messages, f"m{replicas}")
        load = Load(url, forms, concurrency)
        named = {p.name: p.proc.pid for p in stack.processes.values() if p.proc is not None}
        stack_pids = descendants(named.values())
        redis_pids = {proc.pid for proc in cluster._processes.procs.values() if proc.poll() is None}
        own = {os.getpid()}
        # What the stack burns doing nothing (lease renewals, blocked reads, health): its share of
        # each run's CPU figure grows with the run's length, so it is reported beside it.
        idle_before = total_cpu(stack_pids)
        time.sleep(IDLE_S)
        idle_cpu_ms_per_s = cpu_used(idle_before, total_cpu(stack_pids)) * 1000 / IDLE_S
        before = [total_cpu(stack_pids), total_cpu(redis_pids), total_cpu({sim.proc.pid}), total_cpu(own)]
        busy_before = machine_busy_seconds()
        began_wall, began = time.time(), time.perf_counter()
        load.run()
        wait_replies(sim, messages, timeout_s=600)
        after = [total_cpu(stack_pids), total_cpu(redis_pids), total_cpu({sim.proc.pid}), total_cpu(own)]
        polled_s = time.perf_counter() - began
        busy_s = machine_busy_seconds() - busy_before
        arrivals = check_replies(sim, sent, f"measured run, {replicas} replica(s)")
        # The last reply's own arrival time (the stand-in's clock, this machine's) rather than the
        # moment a poll noticed it.
        seconds = max(arrivals) - began_wall
        if not 0 < seconds <= polled_s + 1:
            raise RuntimeError(f"inconsistent clocks: last reply {seconds:.3f} s, polled {polled_s:.3f} s")
        services_s, redis_s, sim_s, own_s = (cpu_used(b, a) for b, a in zip(before, after, strict=True))
        # Whatever else ran on the machine meanwhile (other jobs, the hypervisor's steal): the noise.
        others_cores = max(busy_s - services_s - redis_s - sim_s - own_s, 0.0) / polled_s
        per_process = {
            name: round((after[0][pid] - before[0][pid]) * 1000 / messages, 3) for name, pid in named.items()
        }
    finally:
        stack.stop()
    return RunResult(
        replicas=replicas,
        messages=messages,
        senders=senders,
        concurrency=concurrency,
        seconds=round(seconds, 3),
        msg_per_s=round(messages / seconds, 1),
        ack_p50_ms=round(quantile_ms(load.acks, 50), 2),
        ack_p99_ms=round(quantile_ms(load.acks, 99), 2),
        ack_non_200=load.non_200,
        cpu_ms_per_msg_services=round(services_s * 1000 / messages, 3),
        cpu_ms_per_msg_redis=round(redis_s * 1000 / messages, 3),
        cpu_ms_per_msg_twilio_sim=round(sim_s * 1000 / messages, 3),
        cpu_ms_per_msg_load_generator=round(own_s * 1000 / messages, 3),
        processes=len(stack_pids),
        idle_cpu_ms_per_s_services=round(idle_cpu_ms_per_s, 1),
        other_load_cores=round(others_cores, 2),
        cpu_ms_per_msg_by_process=per_process,
    )


def medians(results: list[RunResult]) -> dict[int, float]:
    """Median msg/s per replica count (over rounds)."""
    return {
        r: statistics.median(x.msg_per_s for x in results if x.replicas == r)
        for r in sorted({x.replicas for x in results})
    }


def summary(results: list[RunResult]) -> dict[str, Any]:
    """Every run, the median msg/s per replica count and the ratio of the most to the fewest."""
    middle = medians(results)
    return {
        "results": [asdict(r) for r in results],
        "median_msg_per_s": {str(r): m for r, m in middle.items()},
        "ratio_msg_per_s": round(middle[REPLICA_COUNTS[-1]] / middle[REPLICA_COUNTS[0]], 3),
    }


def table(results: list[RunResult]) -> str:
    base = medians(results)[results[0].replicas]
    rows = [
        "replicas |   msg/s | ack p50 ms | ack p99 ms | CPU ms/msg (services) | CPU ms/msg (redis) "
        "| ratio vs 1 | other load"
    ]
    for r in results:
        rows.append(
            f"{r.replicas:>8} | {r.msg_per_s:>7.1f} | {r.ack_p50_ms:>10.2f} | {r.ack_p99_ms:>10.2f} | "
            f"{r.cpu_ms_per_msg_services:>21.2f} | {r.cpu_ms_per_msg_redis:>18.2f} | "
            f"{r.msg_per_s / base:>9.2f}x | {r.other_load_cores:>5.2f} cores"
        )
    return "\n".join(rows)


def run(
    messages: int = MESSAGES, senders: int = SENDERS, concurrency: int = CONCURRENCY, rounds: int = 1
) -> list[RunResult]:
    """Every run on one cluster (rounds alternate the order: 1 2, 2 1, ...); prints the table and
    writes `.run/bench/scale_out.json`."""
    if shutil.which("redis-cli") is None:
        raise RuntimeError("scale-out bench needs redis-cli (to create the Redis Cluster)")
    cores = os.cpu_count() or 1
    print(
        f"scale-out: {messages} '/agents' messages from {senders} senders, {concurrency} concurrent "
        f"posters, on a Redis Cluster (3 masters + 3 replicas, each 200 waits for a replica)"
    )
    print(
        f"  NOTIFIER_SEND_RATE_PER_S={SEND_RATE_PER_S} (Twilio's 80/s per sender would cap msg/s), "
        f"rate limits raised; replicas of agent, mcp-bridge and notifier (one webhook, one AutoCoder)"
    )
    print(
        f"  this machine has {cores} core(s): the replicas, Redis, the Twilio stand-in and the load "
        f"generator all share them, so 2 replicas do not get twice the CPU"
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cluster = RedisClusterServer()
    sim = TwilioSim()
    began = time.perf_counter()
    try:
        cluster.start()
        order = [r for n in range(rounds) for r in (REPLICA_COUNTS if n % 2 == 0 else REPLICA_COUNTS[::-1])]
        results = [run_once(cluster, sim, r, messages, senders, concurrency) for r in order]
    finally:
        sim.stop()
        cluster.stop()
    elapsed = time.perf_counter() - began
    print(table(results))
    middle = medians(results)
    if rounds > 1:
        print(
            f"  median over {rounds} rounds: "
            + ", ".join(f"{r} replica(s) {m:.1f} msg/s" for r, m in middle.items())
            + f", ratio {middle[REPLICA_COUNTS[-1]] / middle[REPLICA_COUNTS[0]]:.2f}x"
        )
    print(
        "  msg/s: first POST to the last reply at the Twilio stand-in; CPU ms/msg: utime+stime of every "
        "stack process (services) and of the 6 redis-server nodes over that span, per message; other "
        "load: CPU the machine spent meanwhile on anything else (other jobs, hypervisor steal), in cores"
    )
    RESULT.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {
                    "cores": cores,
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "settings": {
                    "messages": messages,
                    "senders": senders,
                    "concurrency": concurrency,
                    "rounds": rounds,
                    "warmup_per_sender": WARMUP_PER_SENDER,
                    "notifier_send_rate_per_s": SEND_RATE_PER_S,
                    "redis": "cluster: 3 masters + 3 replicas",
                    "body": "/agents",
                },
                **summary(results),
                "wall_seconds": round(elapsed, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(
        "  same cores, besides: "
        + "; ".join(
            f"{r.replicas} replica(s): load generator {r.cpu_ms_per_msg_load_generator:.1f} ms/msg, "
            f"Twilio stand-in {r.cpu_ms_per_msg_twilio_sim:.1f} ms/msg, "
            f"the stack idle {r.idle_cpu_ms_per_s_services:.0f} ms/s"
            for r in results
        )
    )
    print(f"  figures in {RESULT.relative_to(ROOT)} ({elapsed:.0f} s in all)")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench scale-out",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--senders", type=int, default=SENDERS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat both runs (alternating their order); medians"
    )
    args = parser.parse_args(argv)
    run(args.messages, args.senders, args.concurrency, args.rounds)


if __name__ == "__main__":
    main()
