"""share_project / unshare_project over real MCP: owners share, members list, run and see
sessions, strangers see nothing, unsharing takes everything back at once, and it all
survives a restart."""

from __future__ import annotations

from tests.autocoder.conftest import AutoCoderServer, call, call_error, mcp_client, wait_finished

OWNER, MEMBER, STRANGER = "share-owner", "share-member", "share-stranger"


async def test_a_member_lists_runs_and_sees_sessions_until_unshared(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", caller=OWNER, name="team-app")
        pid = project["project_id"]
        shared = await call(s, "share_project", caller=OWNER, project_id=pid, member=MEMBER)
        assert shared["members"] == [MEMBER] and shared["changed"] is True
        again = await call(s, "share_project", caller=OWNER, project_id=pid, member=MEMBER)
        assert again["members"] == [MEMBER] and again["changed"] is False  # idempotent

        listed = (await call(s, "list_projects", caller=MEMBER))["projects"]
        assert [(p["project_id"], p["role"]) for p in listed] == [(pid, "member")]
        owners = (await call(s, "list_projects", caller=OWNER))["projects"]
        assert {p["project_id"]: p["role"] for p in owners}[pid] == "owner"

        # The member runs a session; the owner sees it too, and a stranger sees nothing.
        run = await call(
            s, "execute_coding_task", caller=MEMBER, project_id=pid, task="write a plan", agents=["planner"]
        )
        sid = run["session_id"]
        details = await wait_finished(s, sid, caller=MEMBER)
        assert details["status"] == "succeeded"
        assert (await call(s, "get_session_details", caller=OWNER, session_id=sid))["project_id"] == pid
        assert (await call(s, "get_session_files", caller=MEMBER, session_id=sid))["files"]
        assert (await call(s, "list_projects", caller=STRANGER))["projects"] == []
        assert "session not found" in await call_error(
            s, "get_session_details", caller=STRANGER, session_id=sid
        )
        assert "project not found" in await call_error(
            s, "execute_coding_task", caller=STRANGER, project_id=pid, task="build an API"
        )

        # Only the owner shares or unshares: a member is told so, a stranger learns nothing.
        assert "only the project's owner" in await call_error(
            s, "share_project", caller=MEMBER, project_id=pid, member=STRANGER
        )
        assert "only the project's owner" in await call_error(
            s, "unshare_project", caller=MEMBER, project_id=pid, member=MEMBER
        )
        assert "project not found" in await call_error(
            s, "share_project", caller=STRANGER, project_id=pid, member=STRANGER
        )
        assert "already has access" in await call_error(
            s, "share_project", caller=OWNER, project_id=pid, member=OWNER
        )
        assert "member" in await call_error(
            s, "share_project", caller=OWNER, project_id=pid, member="+15558990001"
        )

        gone = await call(s, "unshare_project", caller=OWNER, project_id=pid, member=MEMBER)
        assert gone["members"] == [] and gone["changed"] is True and gone["sessions"] == [sid]
        again = await call(s, "unshare_project", caller=OWNER, project_id=pid, member=MEMBER)
        assert again["changed"] is False
        assert (await call(s, "list_projects", caller=MEMBER))["projects"] == []
        assert "session not found" in await call_error(
            s, "get_session_details", caller=MEMBER, session_id=sid
        )
        assert "session not found" in await call_error(s, "get_session_files", caller=MEMBER, session_id=sid)
        assert "project not found" in await call_error(
            s, "execute_coding_task", caller=MEMBER, project_id=pid, task="write a plan"
        )
        # The owner keeps everything, the member's session included.
        assert (await call(s, "get_session_details", caller=OWNER, session_id=sid))["status"] == "succeeded"


async def test_members_and_their_idempotency_keys_survive_a_restart() -> None:
    server = AutoCoderServer().start()
    try:
        async with mcp_client(server.mcp_url) as s:
            pid = (await call(s, "create_project", caller=OWNER, name="kept"))["project_id"]
            await call(s, "share_project", caller=OWNER, project_id=pid, member=MEMBER)
            first = await call(
                s,
                "execute_coding_task",
                caller=MEMBER,
                project_id=pid,
                task="write a plan",
                agents=["planner"],
                idempotency_key="SM1:execute_coding_task:1",
            )
            await wait_finished(s, first["session_id"], caller=MEMBER)
        assert server.stop() == 0
        server.start()
        async with mcp_client(server.mcp_url) as s:
            listed = (await call(s, "list_projects", caller=MEMBER))["projects"]
            assert [(p["project_id"], p["role"]) for p in listed] == [(pid, "member")]
            repeat = await call(
                s,
                "execute_coding_task",
                caller=MEMBER,
                project_id=pid,
                task="write a plan",
                idempotency_key="SM1:execute_coding_task:1",
            )
            assert repeat["session_id"] == first["session_id"]
            await call(s, "unshare_project", caller=OWNER, project_id=pid, member=MEMBER)
        assert server.stop() == 0
        server.start()
        async with mcp_client(server.mcp_url) as s:
            assert (await call(s, "list_projects", caller=MEMBER))["projects"] == []
    finally:
        server.stop()
        server.cleanup()
