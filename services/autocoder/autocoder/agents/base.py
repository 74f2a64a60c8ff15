"""What every agent gets and gives back."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from autocoder.design import ReferenceImage


@dataclass(frozen=True)
class GeneratedFile:
    path: str
    content: str


@dataclass
class AgentOutput:
    files: list[GeneratedFile]
    message: str


# Common things people build CRUD APIs for, plural -> singular. A modest vocabulary beats a
# clever parser: a wrong guess would name the code after a random word of the request.
_ENTITIES: dict[str, str] = {
    "todos": "todo",
    "tasks": "task",
    "books": "book",
    "notes": "note",
    "products": "product",
    "orders": "order",
    "posts": "post",
    "articles": "article",
    "items": "item",
    "customers": "customer",
    "events": "event",
    "contacts": "contact",
    "movies": "movie",
    "recipes": "recipe",
    "invoices": "invoice",
    "tickets": "ticket",
    "messages": "message",
    "comments": "comment",
    "students": "student",
    "courses": "course",
    "employees": "employee",
    "expenses": "expense",
    "bookmarks": "bookmark",
    "photos": "photo",
    "songs": "song",
    "issues": "issue",
    "bugs": "bug",
    "appointments": "appointment",
    "reservations": "reservation",
    "payments": "payment",
}
_AUTH = re.compile(
    r"\b(auth|authentication|login|log in|sign ?up|register|registration|users?|jwt|token|accounts?)\b"
)


@dataclass
class ProjectSpec:
    """What the built-in generators make, derived from the request; shared by all agents."""

    title: str
    entity: str = "item"
    entities: str = "items"
    auth: bool = False

    @property
    def entity_class(self) -> str:
        return self.entity.capitalize()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ProjectSpec:
        return cls(**{k: raw[k] for k in ("title", "entity", "entities", "auth") if k in raw})

    @classmethod
    def from_task(cls, title: str, text: str) -> ProjectSpec:
        lowered = text.lower()
        entity, entities = "item", "items"
        for plural, singular in _ENTITIES.items():
            if re.search(rf"\b({plural}|{singular})\b", lowered):
                entity, entities = singular, plural
                break
        # "todo" is the name people give the app, "task" the thing: both are fine entity names.
        return cls(title=title, entity=entity, entities=entities, auth=bool(_AUTH.search(lowered)))


@dataclass
class AgentContext:
    project_id: str
    project_name: str
    project_description: str
    task: str
    agents: list[str]
    spec: ProjectSpec
    # Paths already in the project (earlier sessions and earlier agents of this one).
    existing_files: list[str] = field(default_factory=list)
    # True when the developer's generated app (of this or an earlier session) is in the project.
    has_generated_app: bool = False
    # Images the UI/UX agent should follow (execute_coding_task's design_reference), in memory only.
    design_reference: list[ReferenceImage] = field(default_factory=list)
