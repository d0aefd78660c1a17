"""The spool folder: files dropped into new/ reach transcripts exactly once; bad ones land in
rejected/ with a reason; nothing is ever deleted; a crash between claim and move duplicates
nothing."""

from __future__ import annotations

import os
import shutil
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from e2e.harness import Daemon, ingest_params, message_ids
from ops_harness import Launch, daemons, wait_for, wait_log

from daemon.core.protocol import IngestParams
from daemon.errors import SenderNotAllowed, StorageUnavailable
from daemon.spool import Spool, derived_message_id, spool_dir

SPOOL_ON = {"daemon": {"spool": {"enabled": True}}}


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    with daemons(tmp_path) as launch:
        yield launch


def drop(root: Path, name: str, content: bytes | dict[str, Any]) -> None:
    """What an adapter does: write into tmp/, then rename into new/."""
    data = content if isinstance(content, bytes) else orjson.dumps(content)
    (root / "tmp" / name).write_bytes(data)
    os.rename(root / "tmp" / name, root / "new" / name)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def texts(d: Daemon) -> Counter[str]:
    out: Counter[str] = Counter()
    for lines in d.transcripts().values():
        for e in lines[1:]:
            content = e.get("message", {}).get("content")
            if isinstance(content, list):
                out.update(b["text"] for b in content if b.get("type") == "text")
            elif isinstance(content, str):
                out[content] += 1
    return out


def settled(root: Path, done: int = 0, rejected: int = 0) -> Callable[[], bool]:
    """True once new/ and cur/ are empty and done/ and rejected/ hold that many files (each
    with its companion)."""

    def check() -> bool:
        return (
            not files(root / "new")
            and not files(root / "cur")
            and len(files(root / "done")) == 2 * done
            and len(files(root / "rejected")) == 2 * rejected
        )

    return check


def test_files_arrive_in_transcripts_exactly_once(launch: Launch) -> None:
    d = launch(SPOOL_ON)
    root = d.state_dir / "spool"
    for sub in ("tmp", "new", "cur", "done", "rejected"):
        assert stat.S_IMODE(os.lstat(root / sub).st_mode) == 0o700
    for i in range(40):
        extra = {"messageId": f"spool-{i}"} if i % 2 else {}
        drop(root, f"{1000 + i}.adapter.host", ingest_params(f"{i % 5}", f"spooled {i}", **extra))
    wait_for("40 files in done/", settled(root, done=40))

    for i in range(40):
        name = f"{1000 + i}.adapter.host"
        result = orjson.loads((root / "done" / f"{name}.result.json").read_bytes())
        assert result["sessionKey"] == "agent:main:main" and result["duplicate"] is False
        assert len(result["entryId"]) == 8
    assert len(wait_log(d, "spool.ingested", count=40)) == 40
    assert d.stop() == 0
    got = texts(d)
    assert all(got[f"spooled {i}"] == 1 for i in range(40)), got
    ids = Counter(mid for lines in d.transcripts().values() for mid in message_ids(lines))
    assert {f"spool-{i}" for i in range(1, 40, 2)} <= set(ids)
    assert set(ids.values()) == {1}
    assert files(root / "tmp") == []


def test_bad_files_land_in_rejected_with_a_reason(launch: Launch) -> None:
    config = {
        "daemon": {"spool": {"enabled": True}, "maxLineBytes": 2048},
        "access": {"channels": {"signal": {"dm": "allowlist", "allowFrom": ["+1555"]}}},
    }
    d = launch(config)
    root = d.state_dir / "spool"
    drop(root, "a-not-json", b"{channel: telegram")
    drop(root, "b-a-list", b"[1, 2]")
    drop(root, "c-no-chat-type", {"channel": "telegram", "peer": "1", "text": "x"})
    drop(root, "d-sender", ingest_params("+1999", "not allowed", channel="signal"))
    drop(root, "e-too-large", ingest_params("1", "x" * 3000))
    os.symlink(d.config_path, root / "new" / "f-symlink")
    drop(root, "g-good", ingest_params("1", "fine"))
    wait_for("six files in rejected/", settled(root, done=1, rejected=6))

    def error(name: str) -> dict[str, Any]:
        err = orjson.loads((root / "rejected" / f"{name}.error.json").read_bytes())
        assert isinstance(err["message"], str) and err["message"]
        return err  # type: ignore[no-any-return]

    assert error("a-not-json")["code"] == -32700
    assert error("b-a-list")["code"] == -32602
    assert error("c-no-chat-type")["code"] == -32602
    assert error("c-no-chat-type")["field"] == "chatType"
    assert error("d-sender")["code"] == 1005
    assert error("e-too-large")["code"] == 1006
    assert error("f-symlink")["code"] == -32600
    assert (root / "rejected" / "f-symlink").is_symlink()  # moved, not followed
    assert len(wait_log(d, "spool.rejected", count=6)) == 6
    assert d.stop() == 0
    assert texts(d) == Counter({"fine": 1})


def test_a_file_claimed_before_a_crash_is_ingested_once_at_start_up(launch: Launch) -> None:
    d = launch(SPOOL_ON)
    root = d.state_dir / "spool"
    d.call("message.ingest", ingest_params("1", "stored before", messageId="m-1"))
    assert d.stop() == 0

    # Claimed, then the daemon died: one already stored, one not yet.
    (root / "cur" / "m-1.file").write_bytes(
        orjson.dumps(ingest_params("1", "stored before", messageId="m-1"))
    )
    (root / "cur" / "no-id.file").write_bytes(orjson.dumps(ingest_params("1", "not yet")))
    d.start()
    wait_for("both files in done/", settled(root, done=2))
    first = orjson.loads((root / "done" / "m-1.file.result.json").read_bytes())
    assert first["duplicate"] is True
    assert orjson.loads((root / "done" / "no-id.file.result.json").read_bytes())["duplicate"] is (
        False
    )

    # Stored and then killed before the move: the file is back in cur/ on the next start. It has
    # no messageId; the one derived from its name and content recognises it.
    assert d.kill() != 0
    shutil.copy(root / "done" / "no-id.file", root / "cur" / "no-id.file")
    d.start()
    wait_for("the copy in done/", settled(root, done=3))
    again = orjson.loads((root / "done" / "no-id.file.1.result.json").read_bytes())
    assert again["duplicate"] is True
    assert d.stop() == 0
    assert texts(d) == Counter({"stored before": 1, "not yet": 1})


def test_a_file_dropped_under_an_existing_name_replaces_nothing(launch: Launch) -> None:
    d = launch(SPOOL_ON)
    root = d.state_dir / "spool"
    drop(root, "same-name", ingest_params("1", "first"))
    wait_for("first in done/", settled(root, done=1))
    drop(root, "same-name", ingest_params("1", "second"))
    wait_for("second in done/", settled(root, done=2))
    assert files(root / "done") == [
        "same-name",
        "same-name.1",
        "same-name.1.result.json",
        "same-name.result.json",
    ]
    assert d.stop() == 0
    assert texts(d) == Counter({"first": 1, "second": 1})


def test_the_spool_folder_defaults_under_the_state_folder(tmp_path: Path) -> None:
    assert spool_dir(None, tmp_path) == tmp_path / "spool"
    assert spool_dir("in", tmp_path) == tmp_path / "in"
    assert spool_dir("/var/spool/sessiond", tmp_path) == Path("/var/spool/sessiond")


def test_a_derived_message_id_depends_on_name_and_content() -> None:
    a = derived_message_id("n", b"x")
    assert a == derived_message_id("n", b"x")
    assert a != derived_message_id("n", b"y") and a != derived_message_id("m", b"x")
    assert len(derived_message_id("n" * 1000, b"x")) <= 256


# ---------------------------------------------------------------------------------------------
# Storage errors, against a stand-in for the pipeline


class FlakyPipeline:
    """Refuses with 1004 until `healthy`, then answers like the committer would."""

    def __init__(self) -> None:
        self.healthy = False
        self.calls = 0

    def ingest(self, params: IngestParams, reply: Callable[[Any], None]) -> None:
        self.calls += 1
        if params.peer == "blocked":
            reply(SenderNotAllowed("not on the list"))  # refused by a later stage
            return
        if not self.healthy:
            raise StorageUnavailable("storage unavailable: disk full; nothing was stored, retry")
        reply({"sessionKey": "agent:main:main", "entryId": "0000000a", "duplicate": False})


async def until(check: Callable[[], bool]) -> None:
    """Poll a file-system condition (there is no event to wait on) for up to ten seconds."""
    for _ in range(500):
        if check():
            return
        await anyio.sleep(0.02)
    raise AssertionError("timed out")


def test_a_storage_error_leaves_the_file_in_cur_until_a_retry_succeeds(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    pipeline = FlakyPipeline()
    spool = Spool(root, pipeline, max_bytes=1 << 20)  # type: ignore[arg-type]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(spool.run)
            drop(root, "one", ingest_params("1", "hello"))
            drop(root, "two", ingest_params("blocked", "nope"))
            await until(lambda: files(root / "rejected") == ["two", "two.error.json"])
            assert files(root / "cur") == ["one"]  # deferred, not rejected
            pipeline.healthy = True
            await until(lambda: files(root / "done") == ["one", "one.result.json"])
            spool.stop()

    anyio.run(main)
    assert files(root / "cur") == [] and files(root / "new") == []
    assert pipeline.calls >= 3


def _spool_with(tmp_path: Path, names: list[str]) -> Path:
    from daemon.spool import make_dirs

    root = tmp_path / "spool"
    make_dirs(root)
    for name in names:
        (root / "cur" / name).write_bytes(orjson.dumps(ingest_params("1", name)))
    return root


def test_a_settle_cut_between_results_and_moves_reuses_the_results(tmp_path: Path) -> None:
    from daemon.spool import Item, settle

    # What a crash after `spool.after_results` leaves: both results written, no file moved.
    root = _spool_with(tmp_path, ["a", "b"])
    first = {"sessionId": "s", "entryId": "e1", "duplicate": False}
    (root / "done" / "a.result.json").write_bytes(orjson.dumps(first) + b"\n")
    (root / "done" / "b.result.json").write_bytes(b'{"sessionId": "s", "ent')  # torn
    again = {"sessionId": "s", "entryId": "e1", "duplicate": True}
    settle(root, [Item("a", result=again), Item("b", result=again)])
    assert files(root / "done") == ["a", "a.result.json", "b", "b.result.json"]
    assert files(root / "cur") == []
    # The first answer is kept; the torn one is replaced by the new answer.
    assert orjson.loads((root / "done" / "a.result.json").read_bytes()) == first
    assert orjson.loads((root / "done" / "b.result.json").read_bytes()) == again


def test_names_given_in_one_settle_are_not_reused_within_it(tmp_path: Path) -> None:
    from daemon.spool import Item, settle

    # `x` is already settled; this chunk holds another `x` (claimed as `x.1`, since cur/
    # also held one) and a file that was named `x.1` by its adapter.
    root = _spool_with(tmp_path, ["x", "x.1"])
    (root / "done" / "x").write_bytes(b"{}")
    (root / "done" / "x.result.json").write_bytes(b"{}\n")
    settle(root, [Item("x", result={"n": 1}), Item("x.1", result={"n": 2})])
    assert files(root / "done") == [
        "x",
        "x.1",
        "x.1.1",
        "x.1.1.result.json",
        "x.1.result.json",
        "x.result.json",
    ]
    assert orjson.loads((root / "done" / "x.1.result.json").read_bytes()) == {"n": 1}
    assert orjson.loads((root / "done" / "x.1.1.result.json").read_bytes()) == {"n": 2}
