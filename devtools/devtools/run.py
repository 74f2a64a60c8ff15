"""`make run`: every service as its own process, in the foreground, on embedded defaults.

Ctrl-C or SIGTERM stops them all cleanly. A service that dies is restarted (with backoff),
as Kubernetes would restart its container.
"""

from __future__ import annotations

import signal
import threading
import time

from devtools.devenv import RUN_DIR, chat_phone, configured, dev_defaults
from devtools.embedded_redis import EmbeddedRedis
from devtools.stack import Stack

RESTART_BACKOFF_MAX_S = 30.0


def say(text: str) -> None:
    print(f"[make run] {text}", flush=True)


def main() -> None:
    env = configured()
    overrides = dev_defaults(env)
    redis: EmbeddedRedis | None = None
    if "REDIS_URL" not in env:
        redis = EmbeddedRedis(RUN_DIR / "redis")
        redis.start()
        overrides["REDIS_URL"] = redis.url
        say(f"embedded Redis: {redis.binary} on {redis.url}")
    env |= overrides

    log_dir = RUN_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(env, log_dir=log_dir)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        stack.start()
        for name, process in stack.processes.items():
            say(
                f"{name:<11} pid {process.proc.pid if process.proc else '?'} on {process.host}:{process.port}"
            )
        say(
            f"logs in {log_dir}/ ; webhook at {env.get('PUBLIC_BASE_URL', 'http://127.0.0.1:8000')}/webhook/whatsapp"
        )
        say(
            f"next: in another terminal run `make chat` to talk to the bot as {chat_phone(env)} "
            f"(replies arrive through the local Twilio stand-in at {env.get('TWILIO_API_BASE_URL')})."
        )
        say("Ctrl-C stops everything.")
        supervise(stack, stopping)
    finally:
        say("stopping...")
        stack.stop()
        if redis is not None:
            redis.stop()
        say("stopped.")


def supervise(stack: Stack, stopping: threading.Event) -> None:
    backoff = {name: 1.0 for name in stack.processes}
    started_at = {name: time.monotonic() for name in stack.processes}
    while not stopping.wait(0.5):
        for name, process in stack.processes.items():
            if process.alive:
                # A process that stayed up a minute has recovered: forget its backoff.
                if time.monotonic() - started_at[name] > 60:
                    backoff[name] = 1.0
                continue
            code = process.proc.returncode if process.proc else None
            say(f"{name} exited (code {code}); restarting in {backoff[name]:.0f} s (log: {process.log_path})")
            if stopping.wait(backoff[name]):
                return
            process.stop()
            process.start()
            started_at[name] = time.monotonic()
            backoff[name] = min(backoff[name] * 2, RESTART_BACKOFF_MAX_S)


if __name__ == "__main__":
    main()
