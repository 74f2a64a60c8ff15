"""Sharing a project with other callers: `share_project` and `unshare_project` (ADR 0002).

Only the owner shares or unshares; a member may list the project, run coding sessions in it
and see every session's details and files, nothing more. Members are callers as the bridge
names them (keyed phone hashes), never phone numbers. Both tools are idempotent: sharing
twice or unsharing someone who has no access changes nothing and answers the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from autocoder.storage import NotFoundError, NotOwnerError, Project, Store

log = logging.getLogger(__name__)

# Bounds what one project's membership costs every list_projects (a scan of members).
MAX_MEMBERS = 50

Member = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the caller to give or take access, as callers are named in _meta.caller "
        "(the bridge's keyed phone hash), never a phone number",
    ),
]


class ProjectSharing(BaseModel):
    project_id: str
    name: str
    members: list[str] = Field(description="callers the project is shared with, in the order they were added")
    sessions: list[str] = Field(description="the project's session ids (what a member could see)")
    changed: bool = Field(description="false when the call found things already as asked (a repeat)")


def _sharing(project: Project, changed: bool) -> ProjectSharing:
    return ProjectSharing(
        project_id=project.project_id,
        name=project.name,
        members=list(project.members),
        sessions=list(project.sessions),
        changed=changed,
    )


def register_sharing_tools(
    mcp: FastMCP, store: Store, caller_of: Callable[[Context[Any, Any, Any]], str]
) -> None:
    def owned(ctx: Context[Any, Any, Any], project_id: str) -> tuple[str, Project]:
        caller = caller_of(ctx)
        try:
            return caller, store.owned_project(caller, project_id)
        except (NotFoundError, NotOwnerError) as exc:
            raise ToolError(str(exc)) from None

    @mcp.tool(annotations=ToolAnnotations(idempotentHint=True, destructiveHint=False))
    async def share_project(project_id: str, member: Member, ctx: Context[Any, Any, Any]) -> ProjectSharing:
        """Give another caller access to one of the caller's projects: they see it in
        list_projects, can run coding tasks in it and see its sessions. Owner only; idempotent."""
        caller, project = owned(ctx, project_id)
        if member == caller:
            raise ToolError("the owner already has access to the project")
        changed = member not in project.members
        if changed:
            if len(project.members) >= MAX_MEMBERS:
                raise ToolError(f"a project can be shared with at most {MAX_MEMBERS} callers")
            store.set_members(project, [*project.members, member])
            log.info("project shared", extra={"project_id": project.project_id, "caller": caller})
        await store.sync()
        return _sharing(project, changed)

    @mcp.tool(annotations=ToolAnnotations(idempotentHint=True, destructiveHint=True))
    async def unshare_project(project_id: str, member: Member, ctx: Context[Any, Any, Any]) -> ProjectSharing:
        """Take a caller's access to one of the caller's projects away, at once (its sessions
        too, running ones included). Owner only; idempotent."""
        caller, project = owned(ctx, project_id)
        changed = member in project.members
        if changed:
            store.set_members(project, [m for m in project.members if m != member])
            log.info("project unshared", extra={"project_id": project.project_id, "caller": caller})
        await store.sync()
        return _sharing(project, changed)
