"""Idempotency keys: what the first call with a key created, so a repeat returns it.

A key is scoped to its caller and to what it creates ("project" or "session"), so another
caller's key, or the same key on the other tool, is independent. Kept for `ttl_s` and at most
`max_keys` of them (the oldest go first): a repeat comes from a retry or a replayed message,
minutes after the first call, not days.
"""

from __future__ import annotations

import time
from collections import OrderedDict

Scope = tuple[str, str, str]  # (caller, kind, key)


class IdempotencyKeys:
    def __init__(self, ttl_s: float, max_keys: int) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max(1, max_keys)
        # Insertion order is creation order, so the oldest entry is always first.
        self._entries: OrderedDict[Scope, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, owner: str, kind: str, key: str) -> str | None:
        """The id the key created, or None (never used, or forgotten)."""
        self._evict(time.time())
        entry = self._entries.get((owner, kind, key))
        return entry[0] if entry else None

    def put(self, owner: str, kind: str, key: str, target: str, created: float) -> None:
        self._entries.setdefault((owner, kind, key), (target, created))
        self._evict(time.time())

    def _evict(self, now: float) -> None:
        while self._entries:
            _, (_, created) = next(iter(self._entries.items()))
            if len(self._entries) <= self.max_keys and created > now - self.ttl_s:
                break
            self._entries.popitem(last=False)

    def dump(self) -> list[list[str | float]]:
        return [
            [owner, kind, key, target, created]
            for (owner, kind, key), (target, created) in self._entries.items()
        ]
