"""One writer per score store, enforced by create-only commits (O_EXCL-style link locally,
``If-None-Match: *`` on a real S3 server), never by reading the pointer and then writing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shardprune.errors import OwnershipLostError, ScoreStoreError
from shardprune.scores import ScoreStore
from shardprune.scores.generations import KEEP_COMMITS, POINTER_NAME, commit_name, read_commit
from shardprune.scores.ownership import put_if_absent
from shardprune.storage import Storage

FP = "ownership-test"


def _open(url: str, opts: dict[str, Any], **kw: Any) -> ScoreStore:
    return ScoreStore(url, 300, FP, flush_interval_s=None, chunk_size=100, storage_options=opts, **kw)


@pytest.fixture(params=["local", "s3"])
def where(request: Any, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if request.param == "local":
        return str(tmp_path / "scores"), {}
    server = request.getfixturevalue("s3_server")
    return server.url(), dict(server.storage_options)


def test_put_if_absent_creates_once(where: tuple[str, dict[str, Any]]) -> None:
    url, opts = where
    storage = Storage(url, opts)
    assert put_if_absent(storage, "claims/a", b"first")
    assert not put_if_absent(storage, "claims/a", b"second")
    assert put_if_absent(storage, "claims/a", b"first")  # a retried request finding its own bytes
    assert storage.read_bytes("claims/a") == b"first"


def test_a_commit_taken_behind_the_pointer_stops_the_old_writer(where: tuple[str, dict[str, Any]]) -> None:
    """A rival that created the next commit but never replaced the pointer (killed in between):
    the pointer still names the old writer, and the old writer must stop anyway."""
    url, opts = where
    storage = Storage(url, opts)
    first = _open(url, opts)
    first.update([1], [1.0], epoch=0)
    first.flush()
    head = read_commit(storage)
    assert head is not None and head.writer == first._writer_id
    rival = head.successor("f" * 32)
    assert put_if_absent(storage, commit_name(rival.generation), rival.to_json())
    pointer = storage.read_bytes(POINTER_NAME)
    first.update([2], [9.0], epoch=0)
    with pytest.raises(OwnershipLostError, match="now owned by writer ffffffff"):
        first.flush()
    assert storage.read_bytes(POINTER_NAME) == pointer  # nothing was overwritten
    with pytest.raises(ScoreStoreError, match="now owned by writer ffffffff"):
        first.flush()  # and it stays stopped
    first.close()  # no flush after losing the store
    # Readers see the rival's commit (the newest), and a new writer claims the one after it.
    with _open(url, opts) as second:
        assert second.stats["generation"] == rival.generation + 1
        assert second.snapshot(pin=False).visits[[1, 2]].tolist() == [1, 0]


def test_concurrent_openers_each_get_their_own_generation(where: tuple[str, dict[str, Any]]) -> None:
    url, opts = where
    stores = [_open(url, opts) for _ in range(3)]
    generations = [s.stats["generation"] for s in stores]
    assert generations == [1, 2, 3]
    for s in stores[:2]:
        s.update([0], [1.0], epoch=0)
        with pytest.raises(OwnershipLostError):
            s.flush()
    stores[2].update([0], [2.0], epoch=0)
    stores[2].flush()
    for s in stores:
        s.close()
    with _open(url, opts, writer=False) as reader:
        assert reader.snapshot().loss[0] == 2.0


def test_old_commit_objects_are_deleted(tmp_path: Path) -> None:
    root = tmp_path / "scores"
    with ScoreStore(root, 300, FP, flush_interval_s=None, chunk_size=100) as st:
        for step in range(KEEP_COMMITS + 10):
            st.update([step % 300], [1.0], epoch=0)
            st.flush()
        newest = st.stats["generation"]
    kept = sorted(int(p.stem) for p in (root / "commits").iterdir())
    assert kept == list(range(newest - KEEP_COMMITS, newest + 1))


def test_a_commit_whose_reply_was_lost_is_built_on_not_mistaken_for_a_rival(
    where: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create lands but the caller sees an error (a lost reply, which no real server makes on
    demand, hence the patch): the flush fails, and the next one builds on the writer's own commit."""
    from shardprune.scores import ownership

    url, opts = where
    real = ownership.put_if_absent
    lost_once = {"left": 1}

    def reply_lost(storage: Storage, rel: str, data: bytes) -> bool:
        created = real(storage, rel, data)
        if lost_once["left"]:
            lost_once["left"] -= 1
            raise OSError("connection reset while reading the response")
        return created

    with _open(url, opts) as st:
        st.update([1], [1.0], epoch=0)
        st.flush()
        generation = st.stats["generation"]
        monkeypatch.setattr(ownership, "put_if_absent", reply_lost)
        st.update([101], [2.0], epoch=0)
        with pytest.raises(OSError, match="connection reset"):
            st.flush()
        assert st.stats["flush_errors"] == 1
        st.update([201], [3.0], epoch=0)
        st.flush()  # finds its own commit at generation + 1 and commits generation + 2 on top
        assert st.stats["generation"] == generation + 2
        head = read_commit(Storage(url, opts))
        assert head is not None and head.generation == generation + 2 and head.writer == st._writer_id
    with _open(url, opts, writer=False) as reader:
        assert reader.snapshot().loss[[1, 101, 201]].tolist() == [1.0, 2.0, 3.0]
