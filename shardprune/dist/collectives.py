"""The few ``torch.distributed`` collectives shardprune needs, with typed results.

Tensors live on the process group's device: the current CUDA device for nccl, the CPU
for gloo (and any other backend). Variable-length payloads are padded to the longest
rank's length and cut back with the gathered counts. Ids always travel as the bytes of
int64 values: never through a float dtype (InfoBatch's DDP path does
``cat([ids, losses])`` and so rounds ids above 2**24 in fp32).

Nothing here pickles: byte payloads (JSON) travel as uint8 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from shardprune.dist.liveness import guarded
from shardprune.errors import DistributedError

#: A process group, or None for the default (WORLD) group.
Group = Any
#: Bytes per exchanged report: an int64 id and a float32 loss.
REPORT_BYTES = 8 + 4


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
    guarded("all_gather", lambda: dist.all_gather(out, tensor.contiguous(), group=group), group)
    return out


def all_gather_ints(values: list[int], group: Group = None) -> np.ndarray:
    """int64[world, len(values)]: every rank's ``values`` (the same length on every rank)."""
    t = torch.tensor(values, dtype=torch.int64, device=group_device(group))
    return torch.stack(all_gather_1d(t, group)).cpu().numpy()


def agree(ok: bool, group: Group = None) -> list[int]:
    """A barrier that also tells every rank which ranks failed (empty list: none)."""
    flags = all_gather_ints([1 if ok else 0], group)[:, 0]
    return [int(r) for r in np.flatnonzero(flags == 0)]


def raise_together(error: BaseException | None, group: Group, what: str) -> None:
    """Every rank learns whether any rank failed (collective); the failing ranks raise their own
    ``error``, the others :class:`DistributedError` saying ``rank(s) [..] {what}; see their error``."""
    failed = agree(error is None, group)
    if error is not None:
        raise error
    if failed:
        raise DistributedError(f"rank(s) {failed} {what}; see their error")


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
    """All-gather variable-length reports: counts, then one padded all-gather of their bytes.

    Each rank sends its ids' int64 bytes followed by its losses' float32 bytes; the
    receivers reinterpret (never convert) them, so ids of any size arrive exactly.

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
    if counts[dist.get_rank(group)] != ids.shape[0]:
        raise DistributedError(
            f"counts[{dist.get_rank(group)}]={counts[dist.get_rank(group)]} but this rank has {ids.shape[0]} reports"
        )
    parts = all_gather_varlen(pack_reports(ids, losses), [c * REPORT_BYTES for c in counts], group)
    out_ids, out_losses = unpack_reports([p.cpu() for p in parts], counts)
    return GatheredReports(out_ids, out_losses, list(counts), len(counts) * max(counts, default=0) * REPORT_BYTES)


def pack_reports(ids: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """uint8[12 n]: the raw bytes of the int64 ids, then of the float32 losses."""
    return torch.cat(
        [ids.to(torch.int64).contiguous().view(torch.uint8), losses.to(torch.float32).contiguous().view(torch.uint8)]
    )


def unpack_reports(parts: list[torch.Tensor], counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_reports` over every rank's (host) part: ids and losses in rank order.

    Bytes are reinterpreted, never converted, so an id cannot pass through a float dtype.
    """
    if not parts or sum(counts) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    ids = torch.cat([p[: 8 * c].view(torch.int64) for p, c in zip(parts, counts)])
    losses = torch.cat([p[8 * c : REPORT_BYTES * c].view(torch.float32) for p, c in zip(parts, counts)])
    return ids.numpy(), losses.numpy()


@dataclass(frozen=True)
class HeadedExchange:
    """The result of :func:`exchange_with_headers`.

    Attributes:
        headers: int64[world, H], every rank's header (its first word is its report count).
        reports: Every rank's reports in rank order.
        capacity: The report capacity every rank uses for the next exchange.
        collectives: Collectives used (1, or 2 when a rank had more than the capacity).
    """

    headers: np.ndarray
    reports: GatheredReports
    capacity: int
    collectives: int


def exchange_with_headers(
    header: list[int], ids: torch.Tensor, losses: torch.Tensor, capacity: int, group: Group = None
) -> HeadedExchange:
    """Headers and reports of every rank, in one collective while the counts fit ``capacity``.

    Every rank sends ``header`` (int64 words, ``header[0] == len(ids)``) and, if its
    reports fit, their bytes padded to ``capacity`` reports, as one uint8 message of the
    same size on every rank. When a rank has more, the gathered headers tell every rank
    so and a second, padded all-gather carries the reports. The capacity for the next
    call follows the largest count (it grows at once, and shrinks when a non-empty
    exchange finds it over 4x too large: an empty epoch-end sync keeps it), so
    every rank derives the same capacity from the same headers. ``capacity`` must be the
    same on every rank (start from 0).
    """
    n = int(ids.shape[0])
    if header[0] != n:
        raise DistributedError(f"header[0]={header[0]} must be the report count {n}")
    head = torch.tensor(header, dtype=torch.int64, device=ids.device).view(torch.uint8)
    body = pack_reports(ids, losses) if 0 < n <= capacity else torch.empty(0, dtype=torch.uint8, device=ids.device)
    # Rows of the gathered matrix must start at 8-byte boundaries to view their ids as int64.
    message = torch.cat([head, pad_to(body, -(-capacity * REPORT_BYTES // 8) * 8)])
    gathered = torch.stack(all_gather_1d(message, group)).cpu()
    width = head.shape[0]
    headers = gathered[:, :width].contiguous().view(torch.int64).numpy().copy()
    counts = [int(c) for c in headers[:, 0]]
    received = gathered.numel()
    collectives = 1
    if max(counts) <= capacity:
        out_ids, out_losses = unpack_reports([g[width:] for g in gathered], counts)
    else:
        parts = all_gather_varlen(pack_reports(ids, losses), [c * REPORT_BYTES for c in counts], group)
        out_ids, out_losses = unpack_reports([p.cpu() for p in parts], counts)
        received += len(counts) * max(counts) * REPORT_BYTES
        collectives = 2
    longest = max(counts)
    next_capacity = longest if longest > capacity or 0 < 4 * longest < capacity else capacity
    return HeadedExchange(
        headers, GatheredReports(out_ids, out_losses, counts, received), next_capacity, collectives
    )


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
    guarded("broadcast", lambda: dist.broadcast(size, src=src, group=group), group)
    n = int(size.item())
    if dist.get_rank(group) == src and data:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buf = torch.empty(n, dtype=torch.uint8, device=device)
    if n:
        guarded("broadcast", lambda: dist.broadcast(buf, src=src, group=group), group)
    return bytes(buf.cpu().numpy().tobytes())
