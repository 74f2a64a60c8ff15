"""Traces (issue 13): one trace per WhatsApp message across every service, as an SRE reads it
in a trace backend. A local OTLP/HTTP receiver (the wire protocol a collector speaks) takes the
spans of a stack started with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from devtools.stack import Stack, free_port
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from wacoder import keys

from tests.harness import (
    BOT_NUMBER,
    Conversation,
    RedisServer,
    TwilioSim,
    inbound,
    post_signed,
    stack_env,
    start_stack,
    user_of,
)
from tests.test_llm_agent import FakeLlm

SERVICES = {"webhook", "agent", "mcp-bridge", "notifier", "autocoder"}
# Numbers no other module uses.
PHONES = iter(f"+1555891{n:04d}" for n in range(1, 10_000))
CODING_REQUEST = "build a REST API with auth for orchids"
TWILIO_ROUTE = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status: int
    event_attributes: list[dict[str, Any]] = field(default_factory=list)


def _value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


class OtlpReceiver:
    """OTLP/HTTP traces (POST /v1/traces, protobuf, gzip or not) on a port of its own."""

    def __init__(self, port: int | None = None) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver._take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _take(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            status=span.status.code,
                            event_attributes=[_attributes(e.attributes) for e in span.events],
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(received)

    def all(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.all() if s.trace_id == trace_id]

    def wait(self, found: Callable[[], Any], timeout_s: float = 30.0) -> Any:
        """`found()` once it is truthy, and the spans have stopped arriving for a moment (the
        last of a trace end a little after the one that was awaited)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = found()
            if result:
                count = len(self.all())
                time.sleep(1.0)
                if len(self.all()) == count:
                    return found()
                continue
            time.sleep(0.1)
        raise AssertionError(
            f"not received in {timeout_s} s; spans: {[(s.service, s.name) for s in self.all()]}"
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def twilio_sim() -> Iterator[TwilioSim]:
    """A Twilio of this module's own: one test scripts it to refuse a request."""
    sim = TwilioSim()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLlm]:
    fake = FakeLlm()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack_overrides(receiver: OtlpReceiver, llm: FakeLlm) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "NOTIFIER_BACKOFF_BASE_S": "0.05",
        # Free text goes through the LLM agent (a local stand-in); commands do not.
        **llm.stack_env(),
    }


def root_of(receiver: OtlpReceiver, message_sid: str) -> ReceivedSpan:
    """The webhook's span of the POST that brought `message_sid`: where its trace starts."""

    def find() -> ReceivedSpan | None:
        for span in receiver.all():
            if (
                span.name == "POST /webhook/whatsapp"
                and span.attributes.get("twilio.message_sid") == message_sid
            ):
                return span
        return None

    return receiver.wait(find)


def message_trace(
    receiver: OtlpReceiver, message_sid: str, services: set[str] = SERVICES
) -> list[ReceivedSpan]:
    """Every span of the message's trace, once its reply went to Twilio and every service in
    `services` has reported."""
    root = root_of(receiver, message_sid)

    def complete() -> list[ReceivedSpan] | None:
        spans = receiver.trace(root.trace_id)
        sent = any(
            s.name == TWILIO_ROUTE and s.attributes.get("http.response.status_code") == 201 for s in spans
        )
        return spans if sent and services <= {s.service for s in spans} else None

    return receiver.wait(complete)


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def only(spans: list[ReceivedSpan], **where: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.service, s.name) for s in spans])
    return found[0]


def assert_one_tree(spans: list[ReceivedSpan], message_sid: str) -> ReceivedSpan:
    """One root, the webhook's server span of the message; every other span's parent is in
    the trace."""
    ids = by_id(spans)
    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.name, r.attributes.get("twilio.message_sid")) for r in roots] == [
        ("webhook", "POST /webhook/whatsapp", message_sid)
    ]
    orphans = [(s.service, s.name) for s in spans if s.parent_id and s.parent_id not in ids]
    assert not orphans, orphans
    return roots[0]


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    ids, chain = by_id(spans), []
    while span.parent_id:
        span = ids[span.parent_id]
        chain.append(span)
    return chain


SERVER, CLIENT, CONSUMER = (
    SpanProto.SPAN_KIND_SERVER,
    SpanProto.SPAN_KIND_CLIENT,
    SpanProto.SPAN_KIND_CONSUMER,
)


@pytest.fixture(scope="module")
def coding_request(stack: Stack, env: dict[str, str], twilio_sim: TwilioSim) -> tuple[str, str]:
    """A coding request (`/run`, which starts a session at AutoCoder): its phone and MessageSid."""
    user = Conversation(env, twilio_sim, next(PHONES))
    assert "shop" in user.ask("/new shop")
    sid = user.send(f"/run {CODING_REQUEST}")
    [reply] = user.next(1, timeout_s=30)
    assert "Started session" in reply, reply
    return user.phone, sid


def test_one_coding_request_is_one_trace_through_every_service(
    receiver: OtlpReceiver, coding_request: tuple[str, str]
) -> None:
    _, sid = coding_request
    spans = message_trace(receiver, sid)
    root = assert_one_tree(spans, sid)
    assert root.kind == SERVER and root.attributes["http.response.status_code"] == 200
    assert {s.service for s in spans} == SERVICES

    # The agent handled it (continuing the context its inbox entry carried), called the bridge
    # for every tool, and AutoCoder served each call as a child of the bridge's MCP call.
    handled = only(spans, service="agent", name="agent: handle message")
    assert handled.kind == CONSUMER and handled.attributes["twilio.message_sid"] == sid
    assert root in ancestors(handled, spans)
    mcp_calls = [s for s in spans if s.service == "mcp-bridge" and s.name.startswith("tools/call ")]
    assert "tools/call execute_coding_task" in {s.name for s in mcp_calls}
    for mcp_call in mcp_calls:
        assert mcp_call.kind == CLIENT and mcp_call.status != Status.STATUS_CODE_ERROR
        chain = ancestors(mcp_call, spans)
        assert [s.name for s in chain[:3]] == [
            "wacoder.v1.McpBridgeService/CallTool",  # the bridge's server span
            "wacoder.v1.McpBridgeService/CallTool",  # the agent's client span
            "agent: handle message",
        ]
        assert [s.kind for s in chain[:2]] == [SERVER, CLIENT]
        served = [s for s in spans if s.service == "autocoder" and s.parent_id == mcp_call.span_id]
        assert [(s.name, s.kind, s.attributes["http.response.status_code"]) for s in served] == [
            ("POST /mcp", SERVER, 200)
        ]

    # The reply: the agent's Send, the notifier's send of the outbox entry, and Twilio's call
    # under it with its HTTP status.
    twilio = only(spans, service="notifier", name=TWILIO_ROUTE)
    assert twilio.kind == CLIENT and twilio.attributes["http.response.status_code"] == 201
    assert "twilio.error_code" not in twilio.attributes
    send, *rest = ancestors(twilio, spans)
    assert (send.service, send.name, send.kind) == ("notifier", "notifier: send", CONSUMER)
    assert [(s.service, s.name) for s in rest[:3]] == [
        ("notifier", "wacoder.v1.NotifierService/Send"),
        ("agent", "wacoder.v1.NotifierService/Send"),
        ("agent", "agent: handle message"),
    ]


def test_a_status_callback_links_to_the_send_of_its_message(
    receiver: OtlpReceiver, coding_request: tuple[str, str], env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    phone, sid = coding_request
    spans = message_trace(receiver, sid)
    send = only(spans, service="notifier", name="notifier: send")
    # The reply Twilio accepted: the Twilio call's span names it, as the callbacks do.
    message_sid = only(spans, service="notifier", name=TWILIO_ROUTE).attributes["twilio.message_sid"]
    [sent] = [m for m in twilio_sim.messages(f"whatsapp:{phone}") if m["sid"] == message_sid]
    assert "Started session" in sent["body"]
    form = {"MessageSid": sent["sid"], "MessageStatus": "read", "To": f"whatsapp:{phone}", "From": BOT_NUMBER}
    assert post_signed(env, "/webhook/status", form).status_code == 204

    def callback() -> ReceivedSpan | None:
        found = [
            s
            for s in receiver.all()
            if s.name == "POST /webhook/status" and s.attributes.get("twilio.message_sid") == sent["sid"]
        ]
        return found[0] if found else None

    status = receiver.wait(callback)
    assert status.service == "webhook" and status.kind == SERVER
    assert status.attributes["twilio.message_status"] == "read"
    # A trace of its own (Twilio calls whenever it likes), linked to the message's send.
    assert not status.parent_id and status.trace_id != send.trace_id
    assert status.links == [(send.trace_id, send.span_id)]


def test_a_message_accepted_while_the_agent_is_down_joins_its_trace_when_handled(
    receiver: OtlpReceiver, stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    user = Conversation(env, twilio_sim, next(PHONES))
    stack["agent"].stop()
    try:
        sid = user.send("/help")  # stored by the webhook itself
    finally:
        stack["agent"].start()
        stack["agent"].wait_ready()
    assert "/new" in user.next(1, timeout_s=30)[0]
    spans = message_trace(receiver, sid, services={"webhook", "agent", "notifier"})
    root = assert_one_tree(spans, sid)
    # The hand-off failed (the agent was down), then the webhook wrote the inbox entry.
    handoff = only(spans, service="webhook", name="wacoder.v1.AgentService/SubmitMessage")
    assert handoff.status == Status.STATUS_CODE_ERROR
    assert handoff.attributes["rpc.grpc.status_code"] in (4, 14)  # DEADLINE_EXCEEDED, UNAVAILABLE
    # The agent that started later continued the trace the entry carried: the webhook's span.
    handled = only(spans, service="agent", name="agent: handle message")
    assert handled.parent_id == root.span_id
    assert only(spans, service="notifier", name=TWILIO_ROUTE).attributes["http.response.status_code"] == 201


def test_twilio_calls_carry_their_http_status_and_error_code(
    receiver: OtlpReceiver, stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    user = Conversation(env, twilio_sim, next(PHONES))
    twilio_sim.script([{"status": 429, "code": 20429, "headers": {"Retry-After": "0"}}])
    try:
        sid = user.send("/help")
        user.next(1, timeout_s=30)
    finally:
        twilio_sim.clear()
    spans = message_trace(receiver, sid, services={"webhook", "agent", "notifier"})
    send = only(spans, service="notifier", name="notifier: send")
    calls = [s for s in spans if s.parent_id == send.span_id]
    assert [
        (s.name, s.attributes["http.response.status_code"], s.attributes.get("twilio.error_code"))
        for s in calls
    ] == [
        (TWILIO_ROUTE, 429, 20429),
        (TWILIO_ROUTE, 201, None),
    ]
    assert [s.status for s in calls] == [Status.STATUS_CODE_ERROR, Status.STATUS_CODE_UNSET]


def test_an_llm_turn_nests_its_tool_calls_under_the_llm_run(
    receiver: OtlpReceiver, stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, llm: FakeLlm
) -> None:
    llm.script(
        [
            {"tool_call": {"name": "list_projects", "arguments": {}}},
            {"text": "Here they are: {tool_result}"},
        ]
    )
    user = Conversation(env, twilio_sim, next(PHONES))
    sid = user.send("which projects do I have?")
    assert "Here they are" in user.next(1, timeout_s=30)[0]
    spans = message_trace(receiver, sid)
    assert_one_tree(spans, sid)
    run = only(spans, service="agent", name="agent: llm run")
    assert run.attributes["gen_ai.request.model"] == "gpt-test"
    # Two completions of 10 prompt and 5 completion tokens each (the stand-in's usage).
    assert (run.attributes["gen_ai.usage.input_tokens"], run.attributes["gen_ai.usage.output_tokens"]) == (
        20,
        10,
    )
    assert run.parent_id == only(spans, service="agent", name="agent: handle message").span_id
    mcp_call = only(spans, service="mcp-bridge", name="tools/call list_projects")
    assert run in ancestors(mcp_call, spans)
    assert [s.service for s in spans if s.parent_id == mcp_call.span_id] == ["autocoder"]


def json_lines(path: Path | None) -> list[dict[str, Any]]:
    assert path is not None
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


def test_the_logs_of_the_message_carry_its_trace_id(
    receiver: OtlpReceiver, coding_request: tuple[str, str], stack: Stack
) -> None:
    _, sid = coding_request
    spans = message_trace(receiver, sid)
    trace_id = spans[0].trace_id
    for service in ("agent", "mcp-bridge", "notifier"):
        logged = [e for e in json_lines(stack[service].log_path) if e.get("trace_id") == trace_id]
        assert logged, f"no {service} log line carries the trace id"
        # Each names a span of this service in that trace: the log line leads to its span.
        own = {s.span_id for s in spans if s.service == service}
        assert {e["span_id"] for e in logged} <= own, (service, logged)
    events = {
        (service, e["event"])
        for service in ("agent", "mcp-bridge", "notifier")
        for e in json_lines(stack[service].log_path)
        if e.get("trace_id") == trace_id
    }
    assert {("agent", "message processed"), ("mcp-bridge", "tool call"), ("notifier", "sent")} <= events


def test_the_inbox_entry_carries_the_trace_context_beside_its_encrypted_payload(
    receiver: OtlpReceiver, coding_request: tuple[str, str], env: dict[str, str]
) -> None:
    phone, sid = coding_request
    spans = message_trace(receiver, sid)
    r = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    shard = keys.shard_of(user_of(env, phone))
    [fields] = [f for _, f in r.xrange(keys.inbox_stream(shard)) if f.get("sid") == sid]
    # W3C: version, trace id, the span that stored it (the agent's SubmitMessage), flags.
    version, trace_id, span_id, flags = fields["traceparent"].split("-")
    stored_by = only(spans, service="agent", name="wacoder.v1.AgentService/SubmitMessage")
    assert (version, trace_id, span_id) == ("00", stored_by.trace_id, stored_by.span_id)
    assert int(flags, 16) & 1  # sampled
    assert CODING_REQUEST not in fields["payload"] and phone not in str(fields)


PRIVATE_TEXTS = (CODING_REQUEST, "/help", "orchids", "which projects", "shop")


def test_no_span_holds_a_phone_number_or_message_text(receiver: OtlpReceiver, coding_request: Any) -> None:
    """Over every span this module's stack exported: names, attributes, events."""
    spans = receiver.all()
    assert spans
    for span in spans:
        texts = [span.name, *map(str, span.attributes.values())]
        texts += [str(v) for attributes in span.event_attributes for v in attributes.values()]
        for text in texts:
            assert not re.search(r"\+?1555891\d{4}", text), (span.service, span.name, text)
            for private in PRIVATE_TEXTS:
                assert private not in text, (span.service, span.name, text)


def test_without_otel_variables_nothing_is_exported_and_nothing_is_carried(
    twilio_sim: TwilioSim, tmp_path: Path
) -> None:
    """A stack with only a batch delay set: no endpoint, so tracing is off. A receiver on the
    exporter's default port (4318) would get whatever an exporter configured by default sent."""
    try:
        default_receiver = OtlpReceiver(port=4318)
    except OSError:
        pytest.skip("port 4318 (the OTLP/HTTP default) is in use on this machine")
    own_redis = RedisServer()
    own_redis.start()
    env = stack_env(
        own_redis.url,
        twilio_sim.url,
        AUTOCODER_DATA_DIR=str(tmp_path / "autocoder"),
        OTEL_EXPORTER_OTLP_ENDPOINT="",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    (tmp_path / "logs").mkdir()
    quiet = start_stack(env, log_dir=tmp_path / "logs")
    try:
        user = Conversation(env, twilio_sim, next(PHONES))
        sid = user.send("/help")
        user.next(1, timeout_s=30)
        time.sleep(1.5)  # many batch delays
        assert default_receiver.requests == 0 and default_receiver.all() == []
        for name, process in quiet.processes.items():
            assert not [e for e in json_lines(process.log_path) if "trace_id" in e], name
        r = redis.Redis.from_url(own_redis.url, decode_responses=True)
        shard = keys.shard_of(user_of(env, user.phone))
        [fields] = [f for _, f in r.xrange(keys.inbox_stream(shard)) if f.get("sid") == sid]
        assert "traceparent" not in fields
    finally:
        quiet.stop()
        own_redis.stop()
        default_receiver.stop()


def test_an_unsigned_request_is_traced_without_its_form(
    receiver: OtlpReceiver, stack: Stack, env: dict[str, str]
) -> None:
    """A refused request is a trace too (an SRE sees the 403s), and carries nothing it sent."""
    phone = next(PHONES)
    form = inbound(phone, "let me in", "SM" + "9" * 32)
    answer = post_signed(env, "/webhook/whatsapp", form, sign_url="http://elsewhere/webhook/whatsapp")
    assert answer.status_code == 403

    def refused() -> list[ReceivedSpan]:
        return [
            s
            for s in receiver.all()
            if s.name == "POST /webhook/whatsapp" and s.attributes.get("wacoder.outcome") == "bad_signature"
        ]

    [span] = receiver.wait(refused)
    assert span.attributes["http.response.status_code"] == 403
    assert "twilio.message_sid" not in span.attributes


def test_probes_and_scrapes_make_no_traces(receiver: OtlpReceiver, stack: Stack, env: dict[str, str]) -> None:
    """Kubernetes asks every few seconds: a trace each would bury the messages' traces."""
    base = env["PUBLIC_BASE_URL"]
    for path in ("/health", "/livez", "/readyz", "/metrics"):  # /health asks every gRPC service
        assert httpx.get(base + path, timeout=5).status_code in (200, 503)
    # A message after them: once its span is in, theirs would be too (spans go out in order).
    after = "SM" + uuid.uuid4().hex
    post_signed(env, "/webhook/whatsapp", inbound(next(PHONES), "/help", after))
    root_of(receiver, after)
    names = {(s.service, s.name) for s in receiver.all()}
    assert not [n for n in names if "Health" in n[1] or n[1].startswith("GET")], names
