"""Rename registry keys written before sessiond kept the case of case-sensitive ids.

sessiond used to lowercase every key segment; OpenClaw keeps Signal group ids and Matrix room ids
verbatim (daemon/core/keys.py). A session stored under `agent:main:signal:group:abc=` would be
orphaned once messages for group `AbC=` resolve to `agent:main:signal:group:AbC=`: a new session
would begin and the old one would never be written again. So at start-up, before the first
message, each such key is renamed to the key messages now resolve to, when its entry proves the
id's exact case (`case_kept_key`). The entry, its transcript and its session id stay as they
are; only the key in `sessions.json` changes, and `/session` routes that named the old key
follow it. Registries are saved at once, so a crash cannot leave journal records that name a key
the registry on disk does not have.

An entry without proof keeps its lowercased key (listed, readable, never lost); messages for
that group then begin a session under the exact key.
"""

from __future__ import annotations

import structlog

from daemon.core.ingest import ROUTE_FIELD
from daemon.core.keys import case_kept_key
from daemon.store.store import Store

log = structlog.get_logger("daemon.keymigrate")


def rename_case_folded_keys(store: Store) -> dict[str, str]:
    """Rename keys in memory (event loop, before the pipeline runs); old key -> new key.
    The caller saves the registries marked dirty."""
    renamed: dict[str, str] = {}
    for reg in store.agents.values():
        for key, st in list(reg.sessions.items()):
            new = case_kept_key(key, st.entry)
            if new is None or new in reg.sessions:
                continue
            reg.rename(key, new)
            renamed[key] = new
        for st in reg.sessions.values():
            target = st.entry.get(ROUTE_FIELD)
            if isinstance(target, str) and target in renamed:
                st.entry.route_to = renamed[target]
    if renamed:
        log.info("keys.case_restored", count=len(renamed), keys=renamed)
    return renamed


def save_dirty(store: Store) -> None:
    """Write the registries the rename changed (worker thread). Raises OSError."""
    for reg in store.agents.values():
        reg.save_if_changed()
