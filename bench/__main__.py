"""`make bench`: latency of the webhook's hot path and of a full round trip, on this machine.

Starts its own redis-server, the local Twilio stand-in and every service, then measures:
- accept: a signed POST /webhook/whatsapp until Twilio would get its 200 (sequential, and with
  concurrent senders);
- round trip: a signed "/help" until the reply reaches the Twilio Messages API;
then the scale-out line (bench.scale_out): sustained throughput with 1 and 2 replicas on a Redis
Cluster, side by side.
"""

from __future__ import annotations

import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench import scale_out
from tests.harness import RedisServer, TwilioSim, inbound, sign, stack_env, start_stack


def percentiles(samples_s: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples_s)
    q = statistics.quantiles(ms, n=100)
    return f"p50 {q[49]:7.2f} ms   p95 {q[94]:7.2f} ms   p99 {q[98]:7.2f} ms   (n={len(ms)})"


def main() -> None:
    redis = RedisServer()
    redis.start()
    sim = TwilioSim()
    env = stack_env(redis.url, sim.url)
    stack = start_stack(env)
    url = env["PUBLIC_BASE_URL"] + "/webhook/whatsapp"
    try:
        client = httpx.Client()

        def accept(n: int, body: str = "/agents") -> float:
            form = inbound(f"+1555{n % 500:07d}", body, f"SMbench{n:026d}")
            headers = {"X-Twilio-Signature": sign(url, form)}
            began = time.perf_counter()
            answer = client.post(url, data=form, headers=headers)
            elapsed = time.perf_counter() - began
            assert answer.status_code == 200, answer.text
            return elapsed

        for n in range(50):  # warm-up
            accept(10_000_000 + n)
        print(f"webhook accept, sequential:     {percentiles([accept(n) for n in range(1000)])}")
        with ThreadPoolExecutor(16) as pool:
            began = time.perf_counter()
            samples = list(pool.map(accept, range(20_000, 22_000)))
            wall = time.perf_counter() - began
        print(f"webhook accept, 16 concurrent:  {percentiles(samples)}   {len(samples) / wall:,.0f} req/s")

        # Every accepted message is answered: drain the backlog before timing round trips.
        expected, began = 3050, time.perf_counter()
        while len(sim.messages()) < expected and time.perf_counter() - began < 180:
            time.sleep(0.5)
        drained = len(sim.messages())
        print(
            f"replies delivered after the burst: {drained}/{expected} in {time.perf_counter() - began:.1f} s "
            f"(sender rate limit NOTIFIER_SEND_RATE_PER_S={env.get('NOTIFIER_SEND_RATE_PER_S', '80')})"
        )

        round_trips = []
        for n in range(100):
            sim.clear()
            phone = f"+1555900{n:04d}"
            form = inbound(phone, "/help", f"SMtrip{n:027d}")
            sent_at = time.time()
            client.post(url, data=form, headers={"X-Twilio-Signature": sign(url, form)})
            [reply] = sim.wait_for(f"whatsapp:{phone}")
            round_trips.append(reply["received_at"] - sent_at)
        print(f"/help round trip to Twilio API: {percentiles(round_trips)}")
    finally:
        stack.stop()
        sim.stop()
        redis.stop()

    print()
    if shutil.which("redis-cli") is None:
        print("scale-out: skipped, redis-cli is not installed (it creates the Redis Cluster)")
    else:
        scale_out.run()


if __name__ == "__main__":
    main()
