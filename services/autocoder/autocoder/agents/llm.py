"""The LLM path: each agent asks the model for its files as JSON.

Kept deliberately small. The model gets the role, the task, the plan so far and the paths
already in the project, and must answer {"files": [{"path", "content"}]}. Anything else
(an HTTP error, invalid JSON, a path outside the project) raises, and the pipeline falls
back to the built-in generator for that agent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from openai import AsyncOpenAI

from autocoder.agents.base import AgentContext, AgentOutput, GeneratedFile
from autocoder.agents.builtin import ROLE_DELIVERABLES
from autocoder.storage import HIDDEN_PARTS

MAX_FILES = 20
MAX_FILE_CHARS = 100_000

_SYSTEM = (
    "You are the {role} agent of AutoCoder, a multi-agent coding platform. Your deliverable: {deliverable}. "
    "Write complete, working files only for your role. Python projects use only the standard library, "
    "fastapi, pydantic and httpx; tests use pytest and fastapi.testclient, need no network, and live under "
    'tests/. Answer with one JSON object: {{"files": [{{"path": "relative/path", "content": "..."}}], '
    '"message": "one line on what you did"}}.'
)


class LLMGenerator:
    def __init__(self, api_key: str, base_url: str | None, model: str, timeout_s: float) -> None:
        self.client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=1)
        self.model = model

    async def generate(self, role: str, ctx: AgentContext, plan: str | None) -> AgentOutput:
        user = {
            "task": ctx.task,
            "project": {"name": ctx.project_name, "description": ctx.project_description},
            "pipeline": ctx.agents,
            "existing_files": ctx.existing_files[:200],
            "plan": (plan or "")[:8000],
        }
        content: Any = json.dumps(user)
        if role == "uiux" and ctx.design_reference:
            # The design the user sent, as image input: the UI should look like it.
            content = [
                {"type": "text", "text": content + "\nFollow the design of the attached image(s)."},
                *({"type": "image_url", "image_url": {"url": i.data_url()}} for i in ctx.design_reference),
            ]
        response = await self.client.chat.completions.create(
            model=self.model,
            response_format={"type": "json_object"},
            messages=[
                {"role": "system", "content": _SYSTEM.format(role=role, deliverable=ROLE_DELIVERABLES[role])},
                {"role": "user", "content": content},
            ],
        )
        return parse_reply(response.choices[0].message.content or "", ctx.existing_files)


def _project_path(path: str) -> str:
    """The path normalized, or ValueError for anything the store would refuse to write: the
    pipeline writes the files after this returns, where a refusal would fail the whole session
    instead of falling back to the built-in generator."""
    parts = PurePosixPath(path).parts
    if (
        not parts
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or ".." in parts
        or HIDDEN_PARTS.intersection(parts)
    ):
        raise ValueError(f"the model proposed a path outside the project: {path!r}")
    return "/".join(parts)


def parse_reply(text: str, existing_files: Iterable[str] = ()) -> AgentOutput:
    data: Any = json.loads(text)
    raw_files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(raw_files, list) or not raw_files or len(raw_files) > MAX_FILES:
        raise ValueError("the model's reply has no usable 'files' list")
    files = []
    for entry in raw_files:
        path, content = entry.get("path"), entry.get("content")
        if not isinstance(path, str) or not isinstance(content, str) or len(content) > MAX_FILE_CHARS:
            raise ValueError("a file in the model's reply is malformed or too large")
        files.append(GeneratedFile(_project_path(path), content))
    # A file where a directory is (or the other way round) would fail the write, not this agent.
    paths = {f.path for f in files} | set(existing_files)
    for f in files:
        clash = paths.intersection(p.as_posix() for p in PurePosixPath(f.path).parents)
        if clash or any(p.startswith(f.path + "/") for p in paths):
            raise ValueError(f"the model proposed a file where a directory is: {f.path!r}")
    message = data.get("message") if isinstance(data.get("message"), str) else f"{len(files)} file(s) written"
    return AgentOutput(files, message[:300])
