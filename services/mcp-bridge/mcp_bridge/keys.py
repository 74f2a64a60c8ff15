"""The Redis keys the bridge owns (to move into wacoder.keys later), with their TTLs."""

from __future__ import annotations

PROJECTS_TTL_S = 5 * 60
FILES_TTL_S = 10 * 60
HEALTH_TTL_S = 60
# How long the bridge remembers that a session has ended (so its files may be cached).
SESSION_ENDED_TTL_S = 24 * 60 * 60


def projects_cache(caller: str) -> str:
    """list_projects of one caller."""
    return f"bridge:cache:projects:{caller}"


def files_cache(caller: str, session_id: str) -> str:
    """get_session_files of one caller's ended session."""
    return f"bridge:cache:files:{caller}:{session_id}"


def health_cache() -> str:
    """check_system_health: the same for everybody."""
    return "bridge:cache:health"


def session_ended(caller: str, session_id: str) -> str:
    """Set once the bridge has seen the session succeed or fail: its files stop changing."""
    return f"bridge:cache:ended:{caller}:{session_id}"
