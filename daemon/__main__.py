"""`python -m daemon` is the same as the `sessiond` console script."""

from __future__ import annotations

from daemon.cli import main

# Guarded: anyio's worker processes (daemon/backup.py) load the parent's main module under
# another name, and must not start a second daemon doing so.
if __name__ == "__main__":
    raise SystemExit(main())
