"""Soak: SIGKILL the real daemon again and again under pipelined load with resends and resets.

    python bench/soak.py [--seconds 180] [--senders 4] [--peers 30] [--reset-share 0.03]
                         [--retention-every 3] [--keep]

Each round starts pipelined senders (some of their messages are `/reset` or `/new`), SIGKILLs
the daemon at a random moment, and every few kills runs `sessiond retention` on the dead
daemon's folder (compressing archives whose newest lines may still be in the journal). After
the restart, adapters resend what got no answer and a sample of what was acknowledged (same
message ids): an acknowledged one must come back `duplicate: true` with its first entry id.
At the end every transcript (active, archived, compressed) is read and each acknowledged message
id counted: `lost` = acknowledged but stored nowhere, `doubled` = stored more than once.
Exit code 1 when anything was lost, doubled or answered wrongly.
"""

from __future__ import annotations

import argparse
import gzip
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from e2e.harness import Daemon, PipelinedSender, RawConnection, daemon_env, ingest_params


class ResettingSender(PipelinedSender):
    """A pipelined sender some of whose messages are reset triggers."""

    def __init__(self, socket_path: Path, name: str, peers: int, share: float, seed: int) -> None:
        super().__init__(socket_path, name, peers=peers, window=16)
        self.rng = random.Random(seed)
        self.share = share

    def next_params(self) -> dict[str, Any]:
        self._n += 1
        mid = f"{self.prefix}-{self._n}"
        roll = self.rng.random()
        text = f"text {mid}"
        if roll < self.share / 2:
            text = "/reset"
        elif roll < self.share:
            text = "/new"
        return ingest_params(f"peer{self.rng.randrange(self.peers)}", text, messageId=mid)


def resend(d: Daemon, params: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Send `params` again on one pipelined connection; return the answers by message id."""
    out: dict[str, dict[str, Any]] = {}
    with RawConnection(d.socket, timeout=60) as conn:
        for p in params:
            conn.send_request("message.ingest", p, rid=p["messageId"])
        for _ in params:
            a = conn.read()
            if "result" not in a:
                raise RuntimeError(f"a resend failed: {a}")
            out[a["id"]] = a["result"]
    return out


def stored_ids(state: Path) -> Counter[str]:
    """How often each message id is stored, over every transcript of every agent."""
    seen: Counter[str] = Counter()
    for path in sorted((state / "agents").rglob("*.jsonl*")):
        name = path.name
        if ".torn-" in name or name == "index.jsonl":
            continue
        if name.endswith(".gz"):
            data = gzip.decompress(path.read_bytes())
        elif name.endswith(".jsonl"):
            data = path.read_bytes()
        else:
            continue
        for line in data.splitlines():
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            origin = obj.get("origin") if isinstance(obj, dict) else None
            if isinstance(origin, dict) and isinstance(origin.get("messageId"), str):
                seen[origin["messageId"]] += 1
    return seen


def retention(d: Daemon) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "daemon", "retention", "--state-dir", str(d.state_dir),
         "--config", str(d.config_path), "--json"],
        capture_output=True, text=True, env=daemon_env(), timeout=600, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"retention failed: {r.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="how long to keep killing")
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--peers", type=int, default=30)
    ap.add_argument("--reset-share", type=float, default=0.03, help="share of /reset and /new")
    ap.add_argument("--resend-share", type=float, default=0.2, help="acked ids resent per round")
    ap.add_argument("--retention-every", type=int, default=3, help="run retention every N kills")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the state folder and say where")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    config = {
        "session": {"dmScope": "per-channel-peer"},
        "daemon": {"checkpointIntervalMs": 150, "dedupMaxPerAgent": 1_000_000},
        "retention": {"compressAfterDays": 0},
    }
    d = Daemon(work, config=config)
    d.start()
    acked: dict[str, dict[str, Any]] = {}
    sent: dict[str, dict[str, Any]] = {}
    kills = resends = wrong = 0
    rounds = 0
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            rounds += 1
            senders = [
                ResettingSender(d.socket, f"r{rounds}s{i}", args.peers, args.reset_share,
                                rng.randrange(1 << 30))
                for i in range(args.senders)
            ]  # fmt: skip
            for s in senders:
                s.start()
            time.sleep(rng.uniform(0.2, 1.5))
            d.kill()
            kills += 1
            for s in senders:
                s.join(60)
                if s.failure is not None:
                    raise RuntimeError(f"sender failed: {s.failure!r}")
                acked.update(s.acked)
                sent.update(s.sent)
            unanswered = [p for s in senders for p in s.pending.values()]
            if args.retention_every and kills % args.retention_every == 0:
                retention(d)
            d.restart()
            sample = [sent[m] for m in acked if rng.random() < args.resend_share]
            answers = resend(d, unanswered + sample)
            resends += len(answers)
            for p in sample:
                a, first = answers[p["messageId"]], acked[p["messageId"]]
                if not a["duplicate"] or a["entryId"] != first["entryId"]:
                    wrong += 1
                    print(f"wrong answer to a resend: {p['messageId']}: {a} (first {first})")
            for p in unanswered:
                acked[p["messageId"]] = answers[p["messageId"]]
            print(f"kill {kills}: {len(acked)} acked, {resends} resent", flush=True)
        d.stop()
        seen = stored_ids(d.state_dir)
        lost = sorted(m for m in acked if seen[m] == 0)
        doubled = sorted(m for m in acked if seen[m] > 1)
        print(orjson.dumps({
            "seed": seed, "seconds": args.seconds, "kills": kills, "acks": len(acked),
            "resends": resends, "lost": len(lost), "doubled": len(doubled),
            "wrongAnswers": wrong, "lostIds": lost[:20], "doubledIds": doubled[:20],
        }).decode())  # fmt: skip
        return 1 if lost or doubled or wrong else 0
    finally:
        d.cleanup()
        if args.keep:
            print(f"state folder kept: {d.state_dir}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
