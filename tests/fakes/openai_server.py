"""A local server speaking OpenAI's Chat Completions wire protocol, for the LLM path tests.

Scripted: each completion request takes the next scripted answer, either a tool call or
text. Text may contain "{tool_result}", replaced by the content of the last tool message,
so a reply can prove the agent really fed the tool's output back. Every request is kept
for the test to inspect (system prompt, memory).

    POST /v1/chat/completions     the API (Bearer auth required, any key)
    POST /v1/audio/transcriptions the speech-to-text API (multipart: file, model); answers the
                                  scripted transcript, {"text": ...}
    POST /_fake/script  {"answers": [{"tool_call": {"name": ..., "arguments": {...}}} | {"text": ...}],
                         "fail_with": 500 | null, "delay_s": 0, "transcript": "..."}
    GET  /_fake/requests          {"requests": [chat bodies], "transcriptions": [{model, filename,
                                  content_type, size, sha256}]}
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import secrets
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

STATE: dict[str, Any] = {
    "answers": [],
    "requests": [],
    "fail_with": None,
    "delay_s": 0.0,
    "transcript": "",
    "transcriptions": [],
}


def _completion(model: str, message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + secrets.token_hex(8),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


async def completions(request: Request) -> JSONResponse:
    if not request.headers.get("authorization", "").startswith("Bearer "):
        return JSONResponse(
            {"error": {"message": "no key", "type": "invalid_request_error"}}, status_code=401
        )
    body = await request.json()
    STATE["requests"].append(body)
    if STATE["delay_s"]:
        await asyncio.sleep(STATE["delay_s"])
    if STATE["fail_with"]:
        return JSONResponse(
            {"error": {"message": "scripted failure", "type": "server_error"}}, status_code=STATE["fail_with"]
        )
    answer = STATE["answers"].pop(0) if STATE["answers"] else {"text": "(no scripted answer)"}
    model = body.get("model", "fake")
    if "tool_call" in answer:
        call = answer["tool_call"]
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_" + secrets.token_hex(6),
                    "type": "function",
                    "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))},
                }
            ],
        }
        return JSONResponse(_completion(model, message, "tool_calls"))
    tool_results = [m.get("content") for m in body.get("messages", []) if m.get("role") == "tool"]
    text = answer["text"].replace("{tool_result}", str(tool_results[-1]) if tool_results else "")
    return JSONResponse(_completion(model, {"role": "assistant", "content": text}, "stop"))


async def transcriptions(request: Request) -> JSONResponse:
    """OpenAI's /audio/transcriptions: a multipart form with the audio `file` and a `model`."""
    if not request.headers.get("authorization", "").startswith("Bearer "):
        return JSONResponse(
            {"error": {"message": "no key", "type": "invalid_request_error"}}, status_code=401
        )
    form = await request.form(max_part_size=30 * 1024 * 1024)
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not form.get("model"):
        return JSONResponse(
            {"error": {"message": "file and model are required", "type": "invalid_request_error"}},
            status_code=400,
        )
    data = await upload.read()
    STATE["transcriptions"].append(
        {
            "model": form.get("model"),
            "filename": upload.filename,
            "content_type": upload.content_type,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    )
    if STATE["fail_with"]:
        return JSONResponse(
            {"error": {"message": "scripted failure", "type": "server_error"}}, status_code=STATE["fail_with"]
        )
    return JSONResponse({"text": STATE["transcript"]})


async def script(request: Request) -> JSONResponse:
    payload = await request.json()
    STATE["answers"] = list(payload.get("answers", []))
    STATE["fail_with"] = payload.get("fail_with")
    STATE["delay_s"] = float(payload.get("delay_s", 0))
    STATE["transcript"] = str(payload.get("transcript", ""))
    STATE["requests"] = []
    STATE["transcriptions"] = []
    return JSONResponse({"ok": True})


async def requests_seen(request: Request) -> JSONResponse:
    return JSONResponse({"requests": STATE["requests"], "transcriptions": STATE["transcriptions"]})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/_fake/script", script, methods=["POST"]),
        Route("/_fake/requests", requests_seen, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
