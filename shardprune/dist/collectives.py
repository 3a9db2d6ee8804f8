"""The few ``torch.distributed`` collectives shardprune needs, with typed results.

Tensors live on the process group's device: the current CUDA device for nccl, the CPU
for gloo (and any other backend). Variable-length payloads are padded to the longest
rank's length and cut back with the gathered counts. Ids are always gathered as int64:
never through a float dtype (InfoBatch's DDP path does ``cat([ids, losses])`` and so
rounds ids above 2**24 in fp32).

Nothing here pickles: byte payloads (JSON) travel as uint8 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from shardprune.errors import DistributedError

#: A process group, or None for the default (WORLD) group.
Group = Any


def require_initialized() -> None:
    """Raise :class:`DistributedError` unless a default process group exists."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(
            "torch.distributed is not initialised; call torch.distributed.init_process_group(backend) "
            "first (torchrun sets RANK/WORLD_SIZE/MASTER_ADDR for env://), or use a plain ScoreStore "
            "for a single process"
        )


def group_device(group: Group = None) -> torch.device:
    """Where collective tensors must live: the current CUDA device for nccl, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_1d(tensor: torch.Tensor, group: Group = None) -> list[torch.Tensor]:
    """Every rank's equally shaped 1-D ``tensor``, in rank order."""
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, tensor.contiguous(), group=group)
    return out


def all_gather_ints(values: list[int], group: Group = None) -> np.ndarray:
    """int64[world, len(values)]: every rank's ``values`` (the same length on every rank)."""
    t = torch.tensor(values, dtype=torch.int64, device=group_device(group))
    return torch.stack(all_gather_1d(t, group)).cpu().numpy()


def agree(ok: bool, group: Group = None) -> list[int]:
    """A barrier that also tells every rank which ranks failed (empty list: none)."""
    flags = all_gather_ints([1 if ok else 0], group)[:, 0]
    return [int(r) for r in np.flatnonzero(flags == 0)]


def pad_to(t: torch.Tensor, length: int) -> torch.Tensor:
    """``t`` (1-D) extended with zeros to ``length``."""
    if t.shape[0] == length:
        return t
    out = torch.zeros(length, dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    return out


def all_gather_varlen(tensor: torch.Tensor, counts: list[int], group: Group = None) -> list[torch.Tensor]:
    """Every rank's 1-D ``tensor`` (rank r's has ``counts[r]`` entries), in rank order.

    ``counts`` must already be known to every rank (one :func:`all_gather_ints`), so the
    payloads are padded to ``max(counts)`` and gathered in one collective.
    """
    longest = max(counts)
    if longest == 0:
        return [tensor[:0] for _ in counts]
    gathered = all_gather_1d(pad_to(tensor, longest), group)
    return [g[:c] for g, c in zip(gathered, counts)]


@dataclass(frozen=True)
class GatheredReports:
    """Every rank's (id, loss) reports, concatenated in rank order.

    Attributes:
        ids: int64[total] sample ids (gathered as int64, never through a float dtype).
        losses: float32[total] losses.
        counts: Reports per rank.
        bytes_received: Payload bytes this rank received (padding included).
    """

    ids: np.ndarray
    losses: np.ndarray
    counts: list[int]
    bytes_received: int


def exchange_reports(
    ids: torch.Tensor, losses: torch.Tensor, group: Group = None, counts: list[int] | None = None
) -> GatheredReports:
    """All-gather variable-length reports: counts, then padded ids (int64) and losses (float32).

    Args:
        ids: 1-D integer tensor of this rank's sample ids, on the group's device.
        losses: 1-D tensor of the same length.
        group: Process group (default WORLD).
        counts: Reports per rank if the caller already gathered them (saves a collective).

    Raises:
        DistributedError: ids are not an integer tensor, or shapes disagree.
    """
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise DistributedError(
            f"ids have dtype {ids.dtype}; sample ids must be an integer tensor (int64), never a float dtype, "
            "which rounds ids above 2**24 (fp32)"
        )
    if ids.ndim != 1 or losses.shape != ids.shape:
        raise DistributedError(
            f"ids and losses must be 1-D of equal length, got shapes {tuple(ids.shape)} and {tuple(losses.shape)}"
        )
    if counts is None:
        counts = [int(c) for c in all_gather_ints([int(ids.shape[0])], group)[:, 0]]
    g_ids = all_gather_varlen(ids.to(torch.int64), counts, group)
    g_losses = all_gather_varlen(losses.to(torch.float32), counts, group)
    host_ids = torch.cat(g_ids).cpu().numpy() if g_ids else np.empty(0, np.int64)
    host_losses = torch.cat(g_losses).cpu().numpy() if g_losses else np.empty(0, np.float32)
    received = len(counts) * max(counts, default=0) * (8 + 4)
    return GatheredReports(host_ids.astype(np.int64, copy=False), host_losses, list(counts), received)


def all_gather_bytes(data: bytes, group: Group = None) -> list[bytes]:
    """Every rank's byte string (e.g. a JSON document), in rank order, without pickling."""
    device = group_device(group)
    counts = [int(c) for c in all_gather_ints([len(data)], group)[:, 0]]
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    parts = all_gather_varlen(t.to(device), counts, group)
    return [bytes(p.cpu().numpy().tobytes()) for p in parts]


def broadcast_bytes(data: bytes | None, src: int = 0, group: Group = None) -> bytes:
    """``data`` of rank ``src`` on every rank (other ranks pass None), without pickling."""
    device = group_device(group)
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, src=src, group=group)
    n = int(size.item())
    if dist.get_rank(group) == src and data is not None:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if n else torch.empty(0, dtype=torch.uint8)
    else:
        buf = torch.empty(n, dtype=torch.uint8, device=device)
    if n:
        dist.broadcast(buf, src=src, group=group)
    return bytes(buf.cpu().numpy().tobytes())
