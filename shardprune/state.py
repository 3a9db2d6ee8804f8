"""One state contract for everything that resumes: versioned keys, one config diff, one digest.

Every resumable part of shardprune (the loader, the whole-job checkpoint, and, once their
owners adopt it, the score store and the policies) writes its state as a small JSON-able
dict described by a :class:`StateSchema`: a name, a version and the exact set of keys.
Loading goes through the same three checks everywhere, so every refusal reads the same:

1. :meth:`StateSchema.check`: the document is a dict with exactly the schema's keys and
   the schema's version, else :class:`~shardprune.errors.CheckpointMismatchError`
   naming the keys or versions "(in checkpoint)" and "(now)".
2. :func:`check_config`: the configuration saved with the state equals the current one,
   key by key (keys named in ``ignore`` may differ), else one error listing every
   difference as ``key: saved (in checkpoint) vs current (now)``.
3. :func:`digest`: a stable hex digest of a JSON-able document (sorted keys), used for
   configuration fingerprints.

Reading state never has side effects: producing a state dict must not plan an epoch,
call a collective or flush a store. Parts that need such work before saving (a
distributed store's sync) do it in :func:`shardprune.dist.checkpoint.save_checkpoint`,
where the caller asked for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shardprune.errors import CheckpointMismatchError

__all__ = ["StateSchema", "check_config", "config_diff", "digest", "jsonable"]

#: The key every schema's documents carry their version under.
VERSION_KEY = "version"


@dataclass(frozen=True)
class StateSchema:
    """The shape of one resumable part's state.

    Attributes:
        name: What the state belongs to, used in messages (``"loader"``, ``"checkpoint"``).
        version: Bumped whenever a key's meaning changes; an older document is refused.
        keys: Every key of a document, ``"version"`` included; loading is strict.
    """

    name: str
    version: int
    keys: frozenset[str]

    def __post_init__(self) -> None:
        if VERSION_KEY not in self.keys:
            raise ValueError(f"state schema {self.name!r} must have a {VERSION_KEY!r} key")

    def make(self, **fields: Any) -> dict[str, Any]:
        """A state document: ``fields`` plus the version (the keys must be exactly the schema's)."""
        doc = {VERSION_KEY: self.version, **fields}
        if set(doc) != self.keys:
            # A programming error in the part that saves, not bad user input.
            raise RuntimeError(f"{self.name} state has keys {sorted(doc)}, its schema {sorted(self.keys)}")
        return doc

    def check(self, state: Any, where: str = "") -> dict[str, Any]:
        """``state`` if it has exactly this schema's keys and version.

        Args:
            state: The loaded document.
            where: Where it came from (a path), prepended to messages when given.

        Raises:
            CheckpointMismatchError: not a dict, other keys, or another version.
        """
        src = f"{where}: " if where else ""
        if not isinstance(state, dict) or set(state) != self.keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise CheckpointMismatchError(
                f"{src}{self.name} state keys {got} (in checkpoint), expected {sorted(self.keys)} (now); "
                f"it was not written by this {self.name} or this release"
            )
        if state[VERSION_KEY] != self.version:
            raise CheckpointMismatchError(
                f"{src}{self.name} state version {state[VERSION_KEY]!r} (in checkpoint) vs {self.version} (now); "
                "resume with the release that wrote it, or start the run again"
            )
        return state


def config_diff(saved: Mapping[str, Any], now: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Every key whose value differs, as ``"key: saved (in checkpoint) vs now (now)"``, sorted."""
    skip = set(ignore)
    return [
        f"{k}: {saved.get(k)!r} (in checkpoint) vs {now.get(k)!r} (now)"
        for k in sorted(set(saved) | set(now))
        if k not in skip and saved.get(k) != now.get(k)
    ]


def check_config(what: str, saved: Mapping[str, Any], now: Mapping[str, Any], ignore: Iterable[str] = ()) -> None:
    """Refuse a state saved under another configuration, listing every difference.

    Raises:
        CheckpointMismatchError: "``what`` was made under another configuration: ..." with
            each differing key's checkpoint and current value.
    """
    diffs = config_diff(saved, now, ignore)
    if diffs:
        raise CheckpointMismatchError(f"{what} was made under another configuration: " + "; ".join(diffs))


def jsonable(value: Any) -> Any:
    """``value`` through a JSON round trip (tuples become lists, unknown objects their ``repr``)."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def digest(doc: Any) -> str:
    """A stable 128-bit hex digest of a JSON-able document (keys sorted)."""
    return hashlib.blake2b(json.dumps(doc, sort_keys=True).encode(), digest_size=16).hexdigest()
