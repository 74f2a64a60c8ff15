"""JSON logs, one object per line, in the seed's shape.

Privacy by construction: log calls pass a phone number as `phone=` in `extra`, and the
formatter writes only its hash (`phone_number_hash`). Message text is never a field.

A line written while a span is current carries `trace_id` and `span_id` (hex, as trace
backends show them), so a log line leads to its message's trace and back (ADR 0010).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

from wacoder.phones import phone_hash
from wacoder.settings import Settings

# Attributes every LogRecord has; anything else came in through `extra=` and is ours to emit.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, salt: str) -> None:
        super().__init__()
        self.service = service
        self.salt = salt

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "component": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if key == "phone":
                entry["phone_number_hash"] = phone_hash(str(value), self.salt)
            else:
                entry[key] = value
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = f"{span_context.trace_id:032x}"
            entry["span_id"] = f"{span_context.span_id:016x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(settings: Settings, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, settings.secret("phone_hash_salt")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Libraries that log request lines or bodies (URLs carry phone numbers) stay quiet.
    for noisy in ("httpx", "httpcore", "twilio.http_client", "uvicorn.access", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
