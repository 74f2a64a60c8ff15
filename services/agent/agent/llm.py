"""Free text through an LLM agent (LangChain `create_agent` + `ChatOpenAI`) whose tools are
the AutoCoder MCP tools, reached through mcp-bridge on behalf of this user.

The tools that change the user's world (create a project, start a session) go through the
same Turn actions as the slash commands, so the active project, the seed's indexes and the
progress relay behave the same whichever way the user asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import openai
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import StructuredTool, ToolException
from langchain_openai import ChatOpenAI
from wacoder import templates, tracing
from wacoder.botconfig import BotConfig, BotConfigSource
from wacoder.settings import Settings
from wacoder.whatsapp_text import markdown_to_whatsapp

from agent import metrics
from agent.autocoder import AutoCoder, AutoCoderUnavailable, ToolError, ToolSpec
from agent.media import Image
from agent.prompts import system_prompt
from agent.sharing import COMMAND_ONLY_TOOLS
from agent.state import Project
from agent.turn import Turn

log = logging.getLogger("agent.llm")

_LLM_ERRORS = (openai.APIError, httpx.HTTPError, TimeoutError)


class LlmResponder:
    def __init__(self, settings: Settings, config: BotConfigSource, autocoder: AutoCoder) -> None:
        assert settings.openai_api_key is not None
        self.settings = settings
        self.config = config
        self.timeout_s = settings.llm_timeout_s * 2
        self.autocoder = autocoder
        self._specs: list[ToolSpec] | None = None
        self._model: tuple[BotConfig, ChatOpenAI] | None = None

    @property
    def model(self) -> ChatOpenAI:
        """The chat model the bot's config names now (rebuilt when the config changes)."""
        config = self.config.current
        if self._model is None or self._model[0] != config:
            model = ChatOpenAI(
                model=config.model_name,
                base_url=config.model_base_url,
                api_key=self.settings.openai_api_key,
                temperature=config.model_temperature,
                timeout=self.settings.llm_timeout_s,
                max_retries=1,
            )
            self._model = (config, model)
        return self._model[1]

    async def respond(self, turn: Turn, text: str) -> str:
        if self._specs is None:
            self._specs = await self.autocoder.tools()
        unavailable: list[AutoCoderUnavailable] = []
        tools = [
            self._tool(turn, spec, unavailable) for spec in self._specs if spec.name not in COMMAND_ONLY_TOOLS
        ]
        agent = create_agent(model=self.model, tools=tools, system_prompt=system_prompt(turn.state))
        messages = [*memory(turn.state.history), user_message(text, turn.images, self.settings.llm_vision)]
        started = time.perf_counter()
        # The whole agent run (model calls and the tool calls it makes, whose gRPC spans nest
        # here); the model's name and token counts, never the prompt or the answer.
        with tracing.span(
            "agent: llm run",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.request.model": self.model.model_name,
            },
        ) as span:
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await agent.ainvoke({"messages": messages})
            except _LLM_ERRORS as error:
                metrics.LLM_SECONDS.labels("error").observe(time.perf_counter() - started)
                metrics.ERRORS.labels("llm_unavailable").inc()
                log.warning("llm call failed", extra={"error": type(error).__name__})
                tracing.fail(span, type(error).__name__)
                return templates.CONNECTION
            metrics.LLM_SECONDS.labels("ok").observe(time.perf_counter() - started)
            tokens = count_tokens(result["messages"][len(messages) :])
            span.set_attribute("gen_ai.usage.input_tokens", tokens["input"])
            span.set_attribute("gen_ai.usage.output_tokens", tokens["output"])
        if unavailable:
            raise unavailable[0]
        answer = result["messages"][-1]
        text = str(answer.text if isinstance(answer, AIMessage) else answer.content)
        # LLMs write Markdown; WhatsApp has its own, smaller formatting language.
        return markdown_to_whatsapp(text) if text.strip() else templates.CONNECTION

    def _tool(self, turn: Turn, spec: ToolSpec, unavailable: list[AutoCoderUnavailable]) -> StructuredTool:
        async def call(**arguments: Any) -> str:
            try:
                return json.dumps(await self._call(turn, spec.name, arguments))
            except AutoCoderUnavailable as error:
                unavailable.append(error)
                raise ToolException("AutoCoder is temporarily unavailable") from error
            except ToolError as error:
                raise ToolException(str(error)) from error

        return StructuredTool(
            name=spec.name,
            description=spec.description,
            args_schema=without_idempotency_key(spec.input_schema),
            coroutine=call,
            handle_tool_error=True,
        )

    async def _call(self, turn: Turn, name: str, arguments: dict[str, Any]) -> Any:
        if name == "create_project":
            project = await turn.create_project(arguments["name"], arguments.get("description", ""))
            return {"project_id": project.project_id, "name": project.name}
        if name == "execute_coding_task":
            project_id = arguments["project_id"]
            active = turn.state.active_project
            project = (
                active if active and active.project_id == project_id else Project(project_id, project_id)
            )
            return await turn.start_session(project, arguments["task"], arguments.get("agents"))
        return await turn.autocoder.call(turn.caller, name, **arguments)


def count_tokens(produced: list[Any]) -> dict[str, int]:
    """Counts the tokens the model reported for the messages it produced in one run; returns
    the run's totals by kind (input, output)."""
    totals = {"input": 0, "output": 0}
    for message in produced:
        usage = getattr(message, "usage_metadata", None) or {}
        for kind in ("input", "output"):
            tokens = usage.get(f"{kind}_tokens")
            if isinstance(tokens, int) and tokens > 0:
                metrics.LLM_TOKENS.labels(kind).inc(tokens)
                totals[kind] += tokens
    return totals


# Arguments that are ours to set, not the model's to invent: idempotency keys (the Turn derives
# them from the MessageSid) and the design reference (the user's images, attached by the Turn).
_OURS = frozenset({"idempotency_key", "design_reference"})


def without_idempotency_key(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema the model sees, without the arguments the Turn sets itself."""
    properties = {k: v for k, v in schema.get("properties", {}).items() if k not in _OURS}
    required = [name for name in schema.get("required", []) if name not in _OURS]
    return {**schema, "properties": properties, "required": required}


def user_message(text: str, images: list[Image], vision: bool) -> HumanMessage:
    """The user's message; their images as image input (data: URLs) when the model takes them."""
    if not images:
        return HumanMessage(text)
    note = (
        f"({len(images)} image(s) attached. A coding task you start now gets them as a design "
        "reference for AutoCoder's UI/UX agent.)"
    )
    parts: list[str | dict[str, Any]] = [{"type": "text", "text": f"{text}\n{note}".strip()}]
    if vision:
        parts += [{"type": "image_url", "image_url": {"url": image.data_url()}} for image in images]
    return HumanMessage(content=parts)


def memory(history: list[dict[str, Any]]) -> list[BaseMessage]:
    """The stored exchanges (already trimmed to the seed's last 10) as chat messages."""
    return [HumanMessage(h["text"]) if h["role"] == "user" else AIMessage(h["text"]) for h in history]
