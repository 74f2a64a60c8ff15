"""Media in, through the running services: images and voice notes a WhatsApp user sends, hosted
by the local Twilio stand-in at Twilio-shaped URLs, fetched by the agent with the account's
credentials (from Twilio's host only), given to the fake OpenAI server (image input, the
transcription endpoint) and to AutoCoder's UI/UX agent as a design reference. What cannot be
used gets a clear reply, and the message's text is still answered."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from agent.catalog import HELP
from agent.media import IMAGE_ALONE_OFFLINE, IMAGE_PASSED_ON, VOICE_NEEDS_LLM
from devtools.stack import Stack

from tests.autocoder.conftest import AutoCoderServer, call, call_error, mcp_client
from tests.autocoder.conftest import wait_finished as session_finished
from tests.harness import (
    ACCOUNT_SID,
    Conversation,
    RedisServer,
    TwilioSim,
    inbound,
    post_signed,
    stack_env,
    start_stack,
)
from tests.test_llm_agent import FakeLlm as _FakeLlm

# Numbers of this module only.
_phones = itertools.count(1)
SESSION_ID = re.compile(r"sess_[0-9a-f]+")
PROJECT_ID = re.compile(r"proj_[0-9a-f]+")


def found(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    assert match, text
    return match.group(0)


def png(width: int, height: int) -> bytes:
    """A valid PNG of a grey rectangle, built by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


VOICE = b"OggS\x00\x02" + bytes(range(256)) * 8  # an Ogg page header, then "audio"


class FakeLlm(_FakeLlm):
    """The fake OpenAI server, its transcription endpoint scripted too."""

    def script(
        self,
        answers: list[dict[str, Any]],
        fail_with: int | None = None,
        delay_s: float = 0,
        transcript: str = "",
    ) -> None:
        payload = {"answers": answers, "fail_with": fail_with, "delay_s": delay_s, "transcript": transcript}
        httpx.post(f"{self.url}/_fake/script", json=payload)


class ForeignHost:
    """A server standing for a host that is not Twilio's: it records every request's
    Authorization header, and serves a PNG to anyone."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                body = png(2, 2)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MediaUser(Conversation):
    """A WhatsApp user who also sends attachments, hosted at the Twilio stand-in as Twilio hosts them."""

    def send_media(self, body: str, media: list[tuple[str, bytes | str]]) -> str:
        """`media`: (content type, the bytes to host at Twilio, or a URL to send as it is)."""
        form = inbound(self.phone, body, "MM" + f"{next(_phones):08d}".rjust(32, "0"))
        form["NumMedia"] = str(len(media))
        for i, (content_type, data) in enumerate(media):
            if isinstance(data, bytes):
                hosted = httpx.post(
                    f"{self.sim.url}/_sim/media", content=data, headers={"Content-Type": content_type}
                )
                url = hosted.json()["url"]
            else:
                url = data
            form[f"MediaUrl{i}"] = url
            form[f"MediaContentType{i}"] = content_type
        answer = post_signed(self.env, "/webhook/whatsapp", form)
        assert answer.status_code == 200, answer.text
        return form["MessageSid"]

    def ask_media(self, body: str, media: list[tuple[str, bytes | str]], timeout_s: float = 40.0) -> str:
        self.send_media(body, media)
        [reply] = self.next(1, timeout_s)
        return reply


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLlm]:
    fake = FakeLlm()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack_overrides(llm: FakeLlm) -> dict[str, str]:
    return llm.stack_env()


@pytest.fixture(scope="module")
def offline_env(twilio_sim: TwilioSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # A Redis of its own: on the other stack's, that stack's agent would take these messages too.
    server = RedisServer()
    server.start()
    data_dir = str(tmp_path_factory.mktemp("autocoder-offline"))
    yield stack_env(server.url, twilio_sim.url, AUTOCODER_DATA_DIR=data_dir)
    server.stop()


@pytest.fixture(scope="module")
def offline_stack(offline_env: dict[str, str]) -> Iterator[Stack]:
    stack = start_stack(offline_env)
    yield stack
    stack.stop()


@pytest.fixture
def user(stack: Stack, env: dict[str, str], twilio_sim: TwilioSim) -> Callable[[], MediaUser]:
    return lambda: MediaUser(env, twilio_sim, f"+1555897{next(_phones):04d}")


@pytest.fixture
def offline_user(
    offline_stack: Stack, offline_env: dict[str, str], twilio_sim: TwilioSim
) -> Callable[[], MediaUser]:
    return lambda: MediaUser(offline_env, twilio_sim, f"+1555897{next(_phones):04d}")


@pytest.fixture(scope="module")
def foreign() -> Iterator[ForeignHost]:
    host = ForeignHost()
    yield host
    host.stop()


def design_notes(conversation: Conversation, session_id: str) -> str:
    """The UI/UX agent's notes on the design reference, downloaded from the session's files."""
    listing = conversation.ask(f"/files {session_id}")
    link = re.search(r"ui/DESIGN_REFERENCE\.md \(\d+ B\): (\S+)", listing)
    assert link, listing
    return httpx.get(link.group(1)).text


def wait_finished(conversation: Conversation, session_id: str) -> str:
    return conversation.wait_progress(rf"(🏁|❌) Session `?{session_id}", timeout_s=120)


def test_an_image_reaches_the_llm_as_image_input_and_the_uiux_agent_as_design_reference(
    user: Callable[[], MediaUser], llm: FakeLlm, twilio_sim: TwilioSim
) -> None:
    alice = user()
    llm.script([{"text": "ok"}])
    project_id = found(PROJECT_ID, alice.ask("/new landing"))
    image = png(64, 48)
    llm.script(
        [
            {
                "tool_call": {
                    "name": "execute_coding_task",
                    "arguments": {"project_id": project_id, "task": "make a landing page like this"},
                }
            },
            {"text": "On it: {tool_result}"},
        ]
    )
    reply = alice.ask_media("make a landing page like this", [("image/png", image)])

    assert reply.startswith("On it:") and IMAGE_PASSED_ON in reply, reply
    session_id = found(SESSION_ID, reply)
    first = llm.requests()[0]
    # The model got the image itself, as image input, with the caption.
    content = first["messages"][-1]["content"]
    assert {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(image).decode()},
    } in [{k: v for k, v in part.items() if k in ("type", "image_url")} for part in content]
    assert any(part["type"] == "text" and "make a landing page like this" in part["text"] for part in content)
    # ...but never the design_reference argument to fill in: the agent attaches the image itself.
    [execute] = [t for t in first["tools"] if t["function"]["name"] == "execute_coding_task"]
    assert "design_reference" not in execute["function"]["parameters"]["properties"]
    # Twilio's host got the account's credentials for it.
    fetches = httpx.get(f"{twilio_sim.url}/_sim/messages").json()["media_fetches"]
    assert fetches and fetches[-1]["authorized"] is True

    # AutoCoder's UI/UX agent ran with the image as its design reference.
    assert "uiux" in reply
    wait_finished(alice, session_id)
    notes = design_notes(alice, session_id)
    assert hashlib.sha256(image).hexdigest() in notes and "64×48 px" in notes and "image/png" in notes


def test_a_voice_note_is_transcribed_and_answered_as_the_text_it_says(
    user: Callable[[], MediaUser], llm: FakeLlm
) -> None:
    bob = user()
    llm.script([{"text": "A todo app it is."}], transcript="build a todo app")
    reply = bob.ask_media("", [("audio/ogg; codecs=opus", VOICE)])

    assert reply == "🎤 “build a todo app”\n\nA todo app it is."
    seen = httpx.get(f"{llm.url}/_fake/requests").json()
    [transcription] = seen["transcriptions"]
    assert transcription["model"] == "whisper-1" and transcription["filename"] == "voice.ogg"
    assert transcription["sha256"] == hashlib.sha256(VOICE).hexdigest()
    [chat] = seen["requests"]
    assert chat["messages"][-1] == {"role": "user", "content": "build a todo app"}


def test_a_20_mb_file_and_unknown_types_get_clear_replies_and_the_text_is_still_answered(
    user: Callable[[], MediaUser], llm: FakeLlm
) -> None:
    carol = user()
    llm.script([{"text": "Hello Carol!"}])
    big = b"\xff\xd8\xff\xe0" + bytes(20 * 1024 * 1024)
    reply = carol.ask_media("hello", [("image/jpeg", big)])
    assert reply.startswith("Hello Carol!") and "too large (21.0 MB)" in reply, reply
    assert "images up to 5.0 MB" in reply

    llm.script([])
    for content_type, what in [
        ("application/x-frobnicate", "this kind of file"),
        ("video/mp4", "videos"),
        ("application/pdf", "documents"),
    ]:
        reply = carol.ask_media("", [(content_type, b"\x00" * 1000)])
        assert reply.startswith(f"📎 I can't use {what}.") and "voice notes" in reply, reply
    assert llm.requests() == []  # nothing to answer but the attachment: the LLM was not asked

    # A file that says it is an image but is not one.
    llm.script([{"text": "Noted."}])
    reply = carol.ask_media("look", [("image/png", b"<html>not a picture</html>")])
    assert reply.startswith("Noted.") and "isn't a valid PNG image" in reply, reply


def test_a_media_url_on_a_foreign_host_never_receives_the_twilio_credentials(
    user: Callable[[], MediaUser], llm: FakeLlm, foreign: ForeignHost
) -> None:
    dave = user()
    llm.script([{"text": "Hi Dave."}])
    # Shaped like Twilio's media URLs, on another host.
    url = f"{foreign.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM1/Media/ME1"
    reply = dave.ask_media("hi", [("image/png", url)])

    assert reply.startswith("Hi Dave.") and "isn't hosted by Twilio" in reply, reply
    # Refused, not fetched: the foreign host never even saw a request, let alone the credentials.
    assert all(header is None for header in foreign.seen) and foreign.seen == []


def test_without_an_llm_voice_needs_one_and_an_image_needs_a_caption(
    offline_user: Callable[[], MediaUser], twilio_sim: TwilioSim
) -> None:
    erin = offline_user()
    assert erin.ask_media("", [("audio/ogg", VOICE)]) == VOICE_NEEDS_LLM
    assert erin.ask_media("", [("image/png", png(8, 8))]) == IMAGE_ALONE_OFFLINE
    # Text beside an unusable voice note is still handled.
    assert erin.ask_media("/help", [("audio/ogg", VOICE)]) == f"{HELP}\n\n{VOICE_NEEDS_LLM}"


def test_without_an_llm_an_image_with_a_task_caption_is_the_sessions_design_reference(
    offline_user: Callable[[], MediaUser],
) -> None:
    frank = offline_user()
    image = png(320, 200)
    reply = frank.ask_media("build a landing page like this", [("image/png", image)])

    assert "🚀 Started session" in reply and reply.endswith(IMAGE_PASSED_ON), reply
    assert "uiux" in reply  # the design is the UI/UX agent's to follow, so it joined the team
    session_id = found(SESSION_ID, reply)
    wait_finished(frank, session_id)
    notes = design_notes(frank, session_id)
    assert hashlib.sha256(image).hexdigest() in notes and "320×200 px" in notes


def test_media_leave_nothing_private_in_logs_or_redis(
    user: Callable[[], MediaUser], llm: FakeLlm, stack: Stack, env: dict[str, str]
) -> None:
    grace = user()
    secret_words = "please build the zebra accounting portal"
    llm.script([{"text": "Sure."}], transcript=secret_words)
    grace.ask_media("", [("audio/ogg", VOICE)])
    llm.script([{"text": "Nice picture."}])
    image = png(5, 5)
    grace.ask_media("", [("image/png", image)])

    r = redis.Redis.from_url(env["REDIS_URL"])
    dump = b"".join(
        key + b"=" + (str(r.dump(key)).encode())
        for key in r.scan_iter(count=1000)
        if r.type(key) in (b"string", b"stream", b"hash", b"set")
    )
    for secret in (
        secret_words.encode(),
        ACCOUNT_SID.encode(),
        base64.b64encode(image),
        grace.phone.encode(),
    ):
        assert secret not in dump
    for name in ("agent", "webhook", "mcp-bridge"):
        log_path: Path | None = stack[name].log_path
        text = log_path.read_text() if log_path else ""
        for private in (secret_words, "/Media/", ACCOUNT_SID, grace.phone):
            assert private not in text, f"{private!r} in the {name} log"


# AutoCoder's UI/UX agent with its own LLM: the design reference reaches the model as image input.


@pytest.fixture(scope="module")
def uiux_llm() -> Iterator[FakeLlm]:
    fake = FakeLlm()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def llm_autocoder(uiux_llm: FakeLlm) -> Iterator[AutoCoderServer]:
    server = AutoCoderServer(
        OPENAI_API_KEY="sk-fake-key",
        OPENAI_BASE_URL=f"{uiux_llm.url}/v1",
        LLM_MODEL="fake-uiux",
        LLM_TIMEOUT_S="10",
        AUTOCODER_LLM="auto",
    ).start()
    yield server
    assert server.stop() == 0
    server.cleanup()


async def test_autocoders_uiux_agent_gives_the_design_reference_to_its_llm_as_image_input(
    uiux_llm: FakeLlm, llm_autocoder: AutoCoderServer
) -> None:
    image = png(30, 20)
    page = json.dumps({"files": [{"path": "ui/index.html", "content": "<h1>like it</h1>"}], "message": "ok"})
    uiux_llm.script([{"text": page}])
    reference = [{"content_type": "image/png", "data": base64.b64encode(image).decode()}]
    async with mcp_client(llm_autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="looks")
        queued = await call(
            s,
            "execute_coding_task",
            project_id=project["project_id"],
            task="a page like this",
            agents=["uiux"],
            design_reference=reference,
        )
        details = await session_finished(s, queued["session_id"])
        # Checked before anything runs: a reference that is not what it says is a tool error.
        error = await call_error(
            s,
            "execute_coding_task",
            project_id=project["project_id"],
            task="again",
            design_reference=[{"content_type": "image/jpeg", "data": reference[0]["data"]}],
        )
    assert details["status"] == "succeeded" and details["agents"] == {"uiux": "done"}, details
    [request] = uiux_llm.requests()
    assert "You are the uiux agent" in request["messages"][0]["content"]
    parts = request["messages"][-1]["content"]
    assert {"type": "image_url", "image_url": {"url": "data:image/png;base64," + reference[0]["data"]}} in [
        {k: v for k, v in part.items() if k in ("type", "image_url")} for part in parts
    ]
    assert "not a image/jpeg image" in error
