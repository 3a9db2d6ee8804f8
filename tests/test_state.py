"""The one state contract: strict keys, versions and configuration diffs, messages showing both sides."""

from __future__ import annotations

import pytest

from shardprune.errors import CheckpointMismatchError
from shardprune.state import StateSchema, check_config, config_diff, digest, jsonable

SCHEMA = StateSchema("thing", 3, frozenset({"version", "a", "b"}))


def test_make_and_check_round_trip() -> None:
    doc = SCHEMA.make(a=1, b=[2])
    assert doc == {"version": 3, "a": 1, "b": [2]}
    assert SCHEMA.check(doc) is doc
    with pytest.raises(RuntimeError, match=r"thing state has keys \['a', 'version'\]"):
        SCHEMA.make(a=1)
    with pytest.raises(ValueError, match="must have a 'version' key"):
        StateSchema("bad", 1, frozenset({"a"}))


def test_check_refuses_other_keys_and_versions_showing_both() -> None:
    with pytest.raises(CheckpointMismatchError, match=r"ckpt\.json: thing state keys \['a', 'version'\] \(in checkpoint\), "
                       r"expected \['a', 'b', 'version'\] \(now\)"):
        SCHEMA.check({"version": 3, "a": 1}, "ckpt.json")
    with pytest.raises(CheckpointMismatchError, match=r"thing state keys list \(in checkpoint\)"):
        SCHEMA.check([1, 2])
    with pytest.raises(CheckpointMismatchError, match=r"thing state version 2 \(in checkpoint\) vs 3 \(now\)"):
        SCHEMA.check({"version": 2, "a": 1, "b": 2})


def test_config_diff_lists_every_difference_sorted() -> None:
    saved = {"seed": 1, "batch_size": 8, "rank": 0, "gone": True}
    now = {"seed": 2, "batch_size": 8, "rank": 1, "new": "x"}
    assert config_diff(saved, now) == [
        "gone: True (in checkpoint) vs None (now)",
        "new: None (in checkpoint) vs 'x' (now)",
        "rank: 0 (in checkpoint) vs 1 (now)",
        "seed: 1 (in checkpoint) vs 2 (now)",
    ]
    assert config_diff(saved, now, ignore=("gone", "new", "rank", "seed")) == []
    check_config("the loader checkpoint", saved, dict(saved))
    with pytest.raises(CheckpointMismatchError, match=r"^the loader checkpoint was made under another configuration: "
                       r"rank: 0 \(in checkpoint\) vs 1 \(now\); seed: 1 \(in checkpoint\) vs 2 \(now\)$"):
        check_config("the loader checkpoint", saved, now, ignore=("gone", "new"))


def test_digest_is_stable_and_key_order_free() -> None:
    assert digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
    assert digest({"a": 1}) == "6903fb303cd60ccb0a2b9c2592fa773b"  # blake2b-128 of b'{"a": 1}'
    assert digest({"a": 1}) != digest({"a": 2})
    assert jsonable({"t": (1, 2), "o": object}) == {"t": [1, 2], "o": repr(object)}
