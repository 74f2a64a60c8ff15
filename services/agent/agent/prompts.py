"""The LLM's instructions: the seed's WhatsApp system prompt, plus the user's context."""
# ruff: noqa: E501  (the seed's prompt is kept word for word, long lines included)

from __future__ import annotations

from agent.state import ConversationState

WHATSAPP_SYSTEM_PROMPT = """
You are an AI coding assistant accessible via WhatsApp. You help users create software projects using the AutoCoder platform.

Guidelines:
1. Keep responses concise (max 1600 characters)
2. Use WhatsApp formatting: *bold*, _italic_, ```code```
3. Provide clear, actionable responses
4. Use emojis sparingly for clarity
5. Break complex responses into multiple messages if needed

Available capabilities:
- Create and manage coding projects
- Generate code using specialized AI agents
- Execute complete development workflows
- Provide real-time status updates
- Share generated files

When users describe what they want to build:
1. Understand their requirements
2. Create a project if needed
3. Execute the appropriate coding task
4. Provide status updates
5. Share the results

Always be helpful, professional, and focused on delivering working code.
""".strip()


# The seed's multi-language support: the model answers in the user's language (the offline
# router only recognises Spanish and Portuguese; its fixed texts stay English).
LANGUAGE_GUIDELINE = (
    "Language: always reply in the language the user writes in (Spanish, Portuguese, English or any "
    "other); if they switch, switch with them. Keep slash commands (/list, /use, /run, /status, "
    "/files, /share ...), project names, ids, file names and code exactly as they are."
)


def system_prompt(state: ConversationState) -> str:
    context = ["", LANGUAGE_GUIDELINE, "", "Current context:"]
    if state.active_project:
        context.append(
            f"- Active project: {state.active_project.name} (project_id {state.active_project.project_id})"
        )
    else:
        context.append("- No active project yet.")
    if state.last_session:
        context.append(f"- Latest coding session: {state.last_session}")
    context.append("- Progress of a coding session you start is sent to the user automatically.")
    return WHATSAPP_SYSTEM_PROMPT + "\n" + "\n".join(context)
