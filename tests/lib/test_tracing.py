"""wacoder.tracing and the log formatter, in process: what a carried `traceparent` and a log
line say about the current span, and what tracing costs while it is off (nothing installed)."""

from __future__ import annotations

import json
import logging
import os

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import INVALID_SPAN
from wacoder import tracing
from wacoder.logs import JsonFormatter

# A provider of the test's own, never installed globally: spans are made current by hand.
tracer = TracerProvider().get_tracer("test")


def log_line(message: str = "message processed") -> dict[str, object]:
    record = logging.LogRecord("agent.processor", logging.INFO, __file__, 1, message, None, None)
    record.phone = "+15558919999"
    return json.loads(JsonFormatter("agent", "salt").format(record))


def test_a_log_line_written_in_a_span_carries_its_trace_and_span_ids() -> None:
    with tracer.start_as_current_span("agent: handle message") as span:
        line = log_line()
    context = span.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"
    assert "+15558919999" not in json.dumps(line)  # the phone is still only its hash


def test_a_log_line_outside_any_span_has_no_trace_fields() -> None:
    line = log_line()
    assert "trace_id" not in line and "span_id" not in line


def test_the_carried_traceparent_continues_the_span_that_wrote_it() -> None:
    with tracer.start_as_current_span("wacoder.v1.AgentService/SubmitMessage") as writer:
        carried = tracing.traceparent()
    context = writer.get_span_context()
    assert carried.split("-")[:3] == ["00", f"{context.trace_id:032x}", f"{context.span_id:016x}"]
    extracted = tracing.extract(carried)
    assert extracted is not None
    with tracer.start_as_current_span("agent: handle message", context=extracted) as reader:
        pass
    assert reader.parent is not None
    assert (reader.parent.trace_id, reader.parent.span_id) == (context.trace_id, context.span_id)
    link = tracing.link_to(carried)
    assert link is not None and link.context.span_id == context.span_id


@pytest.mark.parametrize(
    "carried",
    [
        "",
        "garbage",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        "00-abc-def-01",
        "00-" + "A" * 32 + "-" + "1" * 16 + "-01",
    ],
)
def test_a_missing_or_malformed_traceparent_continues_nothing(carried: str) -> None:
    assert tracing.extract(carried) is None
    assert tracing.link_to(carried) is None


def test_without_a_current_span_nothing_is_carried() -> None:
    assert trace.get_current_span() is INVALID_SPAN
    assert tracing.traceparent() == ""


def test_while_off_nothing_is_installed_and_spans_are_a_shared_no_op() -> None:
    assert not any(
        os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    assert not tracing.enabled() and not tracing.configured()
    assert tracing.client_interceptors() == [] and tracing.server_interceptors() == []
    with tracing.span("agent: handle message", parent="00-" + "a" * 32 + "-" + "b" * 16 + "-01") as span:
        assert span is INVALID_SPAN
        assert tracing.traceparent() == ""  # so no stream entry gets a traceparent field


def test_otel_sdk_disabled_wins_over_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing.configured()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.configured()
