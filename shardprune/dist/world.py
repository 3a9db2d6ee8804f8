"""The world layout: which rank of how many this process is.

Taken from ``torch.distributed`` when it is initialised, else from the ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK`` environment variables that ``torchrun`` sets, else a
single process. DataLoader/torchdata worker splitting is applied on top by the loader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shardprune.errors import DistributedError


@dataclass(frozen=True)
class World:
    """A validated (rank, world_size) pair.

    Attributes:
        rank: This process's global rank, ``0 <= rank < world_size``.
        world_size: Number of training processes (>= 1).
        local_rank: Rank within this node (for device placement), ``>= 0``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "local_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DistributedError(f"{name}={value!r} must be an int")
        if self.world_size < 1:
            raise DistributedError(f"world_size={self.world_size} must be >= 1")
        if not 0 <= self.rank < self.world_size:
            raise DistributedError(
                f"rank={self.rank} is outside 0..{self.world_size - 1} (world_size={self.world_size}); "
                "check RANK and WORLD_SIZE"
            )
        if self.local_rank < 0:
            raise DistributedError(f"local_rank={self.local_rank} must be >= 0")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def detect(cls) -> "World":
        """The layout of this process: torch.distributed, else environment, else single."""
        local = _env_int("LOCAL_RANK", 0)
        layout = process_group_layout()
        if layout is not None:
            return cls(rank=layout[0], world_size=layout[1], local_rank=local)
        if "WORLD_SIZE" in os.environ or "RANK" in os.environ:
            return cls(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1), local_rank=local)
        return cls()


def process_group_layout() -> tuple[int, int] | None:
    """(rank, world size) of the initialised default process group; None when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from exc
