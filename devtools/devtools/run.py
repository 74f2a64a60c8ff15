"""`make run`: every service as its own process, in the foreground, on embedded defaults.

Ctrl-C or SIGTERM stops them all cleanly. A service that dies, or whose /livez stops
answering, is restarted (with backoff), as Kubernetes would restart its container; changes of
a service's /readyz are reported.

REPLICAS=N runs N processes each of the agent, mcp-bridge and notifier (the others dial them
all, round robin); each replica is supervised and restarted on its own.

Without a Twilio account it also runs the WhatsApp simulator (devtools.simulator): the page at
http://127.0.0.1:8080 (SIMULATOR_PORT) and the Twilio Messages API the notifier sends to.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from devtools.devenv import GENERATED_SECRETS, RUN_DIR, chat_phone, configured, dev_defaults
from devtools.embedded_redis import EmbeddedRedis
from devtools.simulator import SIMULATOR_PORT, api_port, page_url
from devtools.stack import REPLICATED, ServiceProcess, ServiceSpec, Stack, port_open

RESTART_BACKOFF_MAX_S = 30.0
# A live process answers /livez at once; one that has not for this long is hung (a blocked
# event loop, a deadlock) and is restarted. A (re)started one gets longer for its first answer.
LIVEZ_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 60.0
READYZ_EVERY_S = 2.0


def say(text: str) -> None:
    print(f"[make run] {text}", flush=True)


def replicas(env: dict[str, str]) -> int:
    """REPLICAS: processes per gRPC service (agent, mcp-bridge, notifier); 1 unless set."""
    value = env.get("REPLICAS", "").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"[make run] REPLICAS must be a whole number of at least 1, not {value!r}")
    return int(value)


def main() -> None:
    env = configured()
    count = replicas(env)
    overrides = dev_defaults(env)
    redis: EmbeddedRedis | None = None
    if "REDIS_URL" not in env:
        redis = EmbeddedRedis(RUN_DIR / "redis")
        redis.start()
        overrides["REDIS_URL"] = redis.url
        say(f"embedded Redis: {redis.binary} on {redis.url}")
    env |= overrides
    generated = sorted(set(overrides) & set(GENERATED_SECRETS))
    if generated:
        say(f"development secrets generated into {RUN_DIR}/ (kept across runs): {', '.join(generated)}")
    if env.get("WACODER_ENV") == "development":
        say("WACODER_ENV=development: set WACODER_ENV=production and real secrets to deploy")

    log_dir = RUN_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(env, log_dir=log_dir, replicas=count)
    simulator: ServiceProcess | None = None
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        simulator = simulator_process(env, log_dir)
        processes = {**({"simulator": simulator} if simulator else {}), **stack.processes}
        if count > 1:
            say(f"REPLICAS={count}: {count} processes each of {', '.join(REPLICATED)}, called round robin")
        if simulator is not None:
            # First: the notifier's first replies go to its Messages API.
            simulator.start()
            simulator.wait_ready()
        stack.start()
        width = max(11, *(len(name) for name in processes))
        for name, process in processes.items():
            pid = process.proc.pid if process.proc else "?"
            say(
                f"{name:<{width}} pid {pid} on {process.host}:{process.port}"
                f", health http://{process.health_host}:{process.health_port}/readyz"
            )
        say("all services ready (/readyz 200); a hung or dead one is restarted")
        say(
            f"logs in {log_dir}/ ; webhook at {env.get('PUBLIC_BASE_URL', 'http://127.0.0.1:8000')}/webhook/whatsapp"
        )
        if simulator is not None:
            say(f"WhatsApp simulator: open {page_url(env)} to chat with the bot as a WhatsApp user")
            say(
                f"next: open the page, or run `make chat` in another terminal to talk to the bot as "
                f"{chat_phone(env)} (replies arrive through the simulator's Twilio Messages API at "
                f"{env.get('TWILIO_API_BASE_URL')})."
            )
        else:
            say(
                f"replies go to Twilio at {env.get('TWILIO_API_BASE_URL', 'https://api.twilio.com')}: "
                "no simulator page (`make chat` needs the local Twilio stand-in)"
            )
        say("Ctrl-C stops everything.")
        supervise(processes, stopping)
    finally:
        say("stopping...")
        stack.stop()
        if simulator is not None:
            simulator.stop()
        if redis is not None:
            redis.stop()
        say("stopped.")


def simulator_process(env: Mapping[str, str], log_dir: Path) -> ServiceProcess | None:
    """The WhatsApp simulator, when replies go to a Twilio on this machine (no account given)."""
    if api_port(env) is None:
        return None
    port = int(env.get("SIMULATOR_PORT", SIMULATOR_PORT))
    busy = [p for p in {port, api_port(env)} if p is not None and port_open("127.0.0.1", p)]
    if busy:
        raise SystemExit(
            f"[make run] port(s) {', '.join(map(str, sorted(busy)))} already in use (the simulator's): "
            "is another `make run` or `make chat` running? (SIMULATOR_PORT moves the page)"
        )
    spec = ServiceSpec("simulator", "devtools.simulator")
    return ServiceProcess(spec, env, log_dir, address=("127.0.0.1", port))


def supervise(processes: Mapping[str, ServiceProcess], stopping: threading.Event) -> None:
    backoff = {name: 1.0 for name in processes}
    started_at = {name: time.monotonic() for name in processes}
    # By when /livez must answer next; pushed on by every answer.
    live_until = {name: time.monotonic() + LIVEZ_TIMEOUT_S for name in processes}
    # Start-up waited for every /readyz; None: not known since a restart.
    ready: dict[str, bool | None] = {name: True for name in processes}
    next_readyz = time.monotonic() + READYZ_EVERY_S
    while not stopping.wait(0.5):
        now = time.monotonic()
        check_readiness = now >= next_readyz
        if check_readiness:
            next_readyz = now + READYZ_EVERY_S
        for name, process in processes.items():
            if not process.alive:
                code = process.proc.returncode if process.proc else None
                problem = f"{name} exited (code {code})"
            elif process.probe("/livez") == 200:
                live_until[name] = time.monotonic() + LIVEZ_TIMEOUT_S
                # A process that stayed up a minute has recovered: forget its backoff.
                if now - started_at[name] > 60:
                    backoff[name] = 1.0
                if check_readiness:
                    ready[name] = report_readiness(name, process.probe("/readyz", timeout_s=3.0), ready[name])
                continue
            elif time.monotonic() > live_until[name]:
                problem = f"{name} did not answer /livez (pid {process.proc.pid if process.proc else '?'})"
            else:
                continue
            say(f"{problem}; restarting in {backoff[name]:.0f} s (log: {process.log_path})")
            if stopping.wait(backoff[name]):
                return
            process.stop(timeout_s=5.0)  # SIGTERM, then SIGKILL: a hung process ignores SIGTERM
            process.start()
            say(f"{name} restarted: pid {process.proc.pid if process.proc else '?'}")
            started_at[name] = time.monotonic()
            live_until[name] = started_at[name] + STARTUP_TIMEOUT_S
            ready[name] = None
            backoff[name] = min(backoff[name] * 2, RESTART_BACKOFF_MAX_S)


def report_readiness(name: str, status: int | None, was_ready: bool | None) -> bool:
    """Says when a service became ready or stopped being ready; returns whether it is."""
    is_ready = status == 200
    if is_ready and was_ready is not True:
        say(f"{name} ready")
    elif not is_ready and was_ready is not False:
        say(f"{name} not ready (/readyz: {status or 'no answer'})")
    return is_ready


if __name__ == "__main__":
    main()
