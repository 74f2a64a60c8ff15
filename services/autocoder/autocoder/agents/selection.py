"""Which agents a task needs, in the order they run.

Order matters: the planner writes the plan everyone follows, the database schema comes before
the code that uses it, the UI and the deployment wrap the code, and the tester goes last so it
tests everything the others wrote.
"""

from __future__ import annotations

import re

PIPELINE_ORDER: tuple[str, ...] = ("planner", "database", "developer", "uiux", "devops", "tester")
VALID_AGENTS = frozenset(PIPELINE_ORDER)

_UI = re.compile(
    r"\b(dashboards?|ui|ux|frontend|front-end|web ?page|landing page|html|css|interface|design system)\b"
)
_DB = re.compile(r"\b(schemas?|databases?|db|sql|sqlite|postgres(ql)?|mysql|models?|tables?|migrations?)\b")
_DEVOPS = re.compile(
    r"\b(docker(file)?|deploy(ment|ing)?|kubernetes|k8s|ci|cd|ci/cd|pipeline|helm|compose|containers?)\b"
)
_TEST = re.compile(r"\b(tests?|testing|pytest|unit ?tests?|coverage)\b")
# Words that mean "there is code to write", whatever else the task asks for.
_CODE = re.compile(
    r"\b(api|apis|rest|restful|crud|app|application|backend|back-end|endpoints?|services?|server|"
    r"functions?|scripts?|programs?|bot|cli|library|module|code|implement|develop|auth|authentication|login)\b"
)


class UnknownAgentError(ValueError):
    pass


def order_agents(agents: list[str]) -> list[str]:
    """Explicit agents, validated and put in pipeline order (duplicates dropped)."""
    unknown = sorted({a for a in agents if a not in VALID_AGENTS})
    if unknown:
        raise UnknownAgentError(
            f"unknown agent(s): {', '.join(unknown)}; valid agents are: {', '.join(PIPELINE_ORDER)}"
        )
    chosen = set(agents)
    return [a for a in PIPELINE_ORDER if a in chosen]


def select_agents(task: str) -> list[str]:
    text = task.lower()
    chosen = {"planner"}
    if _UI.search(text):
        chosen.add("uiux")
    if _DB.search(text):
        chosen.add("database")
    if _DEVOPS.search(text):
        chosen.add("devops")
    wants_tests = bool(_TEST.search(text))
    specialists = chosen - {"planner"}
    # A task naming no specialist ("build a todo tracker") means code; "write tests" alone
    # means only tests (of the code the project already has).
    if _CODE.search(text) or (not specialists and not wants_tests):
        chosen.add("developer")
    if "developer" in chosen or wants_tests:
        chosen.add("tester")
    return [a for a in PIPELINE_ORDER if a in chosen]
