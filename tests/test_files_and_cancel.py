"""One link out and /cancel, end to end: WhatsApp -> agent -> bridge -> the reference AutoCoder.

A finished session's summary is one short message with a zip of the session's files and
three file links, all short signed links; /files lists every file. /cancel stops a running
session: it ends "cancelled", its sandboxed test run is gone, and no progress follows."""

from __future__ import annotations

import io
import re
import secrets
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from devtools.stack import Stack

from tests.autocoder.test_cancel import descendants, processes_with
from tests.harness import Conversation, TwilioSim

SESSION_ID = re.compile(r"`(sess_[0-9a-f]+)`")
PROJECT_ID = re.compile(r"`(proj_[0-9a-f]+)`")
SHORT = re.compile(r"^http://127\.0\.0\.1:\d+/f/[A-Za-z0-9_-]{30,40}$")


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {}


def bodies(sim: TwilioSim, user: Conversation) -> list[str]:
    return [m["body"] for m in sim.messages(f"whatsapp:{user.phone}")]


def test_a_finished_session_sends_one_short_message_with_a_zip_and_three_links(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    user = Conversation(env, twilio_sim, "+15558980001")
    user.ask("/new shop")
    started = user.ask("/run build a REST API with user authentication")
    session_id = SESSION_ID.search(started).group(1)
    summary = user.wait_progress(rf"^🏁 Session `{session_id}`", timeout_s=120)

    # One WhatsApp message, not split in parts, well under the 1,600 characters.
    [sent] = [b for b in bodies(twilio_sim, user) if f"🏁 Session `{session_id}`" in b]
    assert sent == summary and not re.match(r"\(\d+/\d+\) ", sent)
    assert len(sent) < 1000, len(sent)
    zip_url = re.search(r"^📦 All as zip: (\S+)$", summary, re.M).group(1)
    links = re.findall(r"^- (\S+): (\S+)$", summary, re.M)
    assert len(links) == 3, summary
    chosen = [path for path, _ in links]
    assert chosen[0] == "README.md"
    assert any(p.endswith("main.py") for p in chosen) and any("test" in p for p in chosen), chosen
    for url in [zip_url, *(u for _, u in links)]:
        assert SHORT.match(url), url
        assert "sig=" not in url and session_id not in url
    assert "/files lists all. Links expire in 1 h." in summary

    # /files lists every file, each with its own link, and the zip.
    listing = user.ask("/files")
    files = re.findall(r"^- (\S+) \((\d+) B\): (\S+)$", listing, re.M)
    assert len(files) > 3 and set(chosen) <= {p for p, _, _ in files}
    assert re.search(r"^📦 All as zip: (\S+)$", listing, re.M)

    # The zip holds exactly the session's files: the same names, the same bytes.
    answer = httpx.get(zip_url, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [p for p, _, _ in files]
        for path, size, url in files:
            content = archive.read(path)
            assert len(content) == int(size), path
            assert content == httpx.get(url).content, path
        assert archive.read("README.md") == httpx.get(dict(links)["README.md"]).content

    # A changed character: refused with a short text, never a 5xx.
    token_at = zip_url.rindex("/") + 5
    tampered = zip_url[:token_at] + ("A" if zip_url[token_at] != "A" else "B") + zip_url[token_at + 1 :]
    refused = httpx.get(tampered)
    assert refused.status_code == 403 and refused.text == "This link is not valid."


MARKER = f"wacoder-e2e-cancel-{secrets.token_hex(6)}"
SLOW_TESTS = f"""import subprocess
import sys
import time


def test_waits_for_ever() -> None:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", {MARKER!r}])
    time.sleep(600)
"""


def wait_for(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_cancel_stops_a_running_session_and_its_test_run(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    autocoder = stack["autocoder"].proc
    assert autocoder is not None
    user = Conversation(env, twilio_sim, "+15558980002")
    project_id = PROJECT_ID.search(user.ask("/new slow")).group(1)
    # The project's tests never end (as a user's task might have asked for).
    tests = Path(env["AUTOCODER_DATA_DIR"]) / "projects" / project_id / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (tests / "test_slow.py").write_text(SLOW_TESTS)

    started = user.ask("/run write tests for it")
    session_id = SESSION_ID.search(started).group(1)
    wait_for(lambda: processes_with(MARKER), 90, "the tests to start")
    assert descendants(autocoder.pid)
    user.wait_progress(r"^✅ \*planner\* done", timeout_s=30)  # nothing is waiting to be relayed

    before = len(bodies(twilio_sim, user))
    reply = user.ask("/cancel")
    assert reply == f"🛑 Cancelled session `{session_id}`; its agents and test run were stopped."
    # Nothing of the test run is left: not the tests' own process, not the jail, not pytest.
    assert processes_with(MARKER) == []
    assert descendants(autocoder.pid) == set()

    final = user.wait_progress(rf"^🛑 Session `{session_id}` in \*slow\*: \*cancelled\*", timeout_s=30)
    assert "tester ⏭️" in final
    time.sleep(7)  # longer than a batch interval: anything still queued would have come
    after = bodies(twilio_sim, user)[before:]
    assert after == [reply, final] or after == [final, reply], after  # the notice, once; no progress

    status = user.ask("/status")
    assert f"🛑 Session `{session_id}`: *cancelled*" in status
    assert user.ask("/cancel") == f"Session `{session_id}` was already cancelled."
    assert user.ask(f"/cancel {session_id} extra") == "Usage: /cancel [session id]"
    assert user.ask("/cancel sess_0000000000000000").startswith("🔎 Session not found")

    # Another user cannot cancel it (nor learn that it exists).
    other = Conversation(env, twilio_sim, "+15558980003")
    assert other.ask(f"/cancel {session_id}").startswith("🔎 Session not found")

    metrics = httpx.get(f"http://127.0.0.1:{env['AGENT_METRICS_PORT']}/metrics").text
    assert re.search(r'^wacoder_agent_sessions_completed_total\{outcome="cancelled"\} [1-9]', metrics, re.M)


def test_an_ended_session_says_so(stack: Stack, env: dict[str, str], twilio_sim: TwilioSim) -> None:
    user = Conversation(env, twilio_sim, "+15558980004")
    user.ask("/new quick")
    session_id = SESSION_ID.search(user.ask("/run write a plan for a blog")).group(1)
    user.wait_progress(rf"^(🏁|❌) Session `{session_id}`", timeout_s=120)
    reply = user.ask("/cancel")
    assert reply.startswith(f"Session `{session_id}` had already ended (*")
    assert "nothing to cancel" in reply
