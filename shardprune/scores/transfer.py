"""Getting (ids, losses) reports off the training device without stalling the step.

CPU tensors and numpy arrays are copied into fresh numpy arrays at once (a few
microseconds for a batch). CUDA tensors are cast on the device and copied into pinned
host memory with ``non_blocking=True``; a CUDA event recorded on the current stream
marks when the copy is done, and the score store's background thread waits on that
event, never the training thread. Ids are always converted as int64, never through
the loss dtype (InfoBatch's DDP path turns ids above 2**24 into wrong ids that way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shardprune.errors import InvalidLossError


@dataclass
class DeviceCopy:
    """A device-to-host copy in flight; :meth:`result` blocks until it lands."""

    host: Any
    source: Any
    event: Any

    def result(self) -> np.ndarray:
        self.event.synchronize()
        self.source = None
        return np.asarray(self.host.numpy())


HostArray = np.ndarray | DeviceCopy


def _is_tensor(x: object) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_host(x: object, *, what: str, as_ids: bool) -> HostArray:
    """Copy ``x`` (torch tensor, numpy array or sequence) to an owned host array.

    Args:
        x: The values.
        what: ``"ids"`` or ``"losses"``, for messages.
        as_ids: Convert to int64 (refusing non-integer input) instead of float32.

    Raises:
        InvalidLossError: if ids are not integers.
    """
    if _is_tensor(x):
        import torch

        t: torch.Tensor = x.detach()  # type: ignore[attr-defined]
        if as_ids and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
            raise InvalidLossError(
                f"{what} have dtype {t.dtype}; sample ids must be an integer tensor (int64). "
                "Take them from the batch's 'ids' field, never through the loss dtype"
            )
        dtype = torch.int64 if as_ids else torch.float32
        if t.device.type == "cpu":
            return np.array(t.to(dtype).numpy(), copy=True)
        src = t.to(dtype)
        host = torch.empty(src.shape, dtype=dtype, pin_memory=True)
        host.copy_(src, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return DeviceCopy(host=host, source=src, event=event)
    arr = np.asarray(x)
    if as_ids:
        if arr.dtype.kind not in "iu":
            raise InvalidLossError(
                f"{what} have dtype {arr.dtype}; sample ids must be integers (int64), never floats"
            )
        return np.array(arr, dtype=np.int64, copy=True)
    if arr.dtype.kind not in "fiu":
        raise InvalidLossError(f"{what} have dtype {arr.dtype}; losses must be real numbers")
    return np.array(arr, dtype=np.float32, copy=True)


def resolve(x: HostArray) -> np.ndarray:
    """The numpy array, waiting for a device copy if needed."""
    return x.result() if isinstance(x, DeviceCopy) else x


def shape_of(x: HostArray) -> tuple[int, ...]:
    return tuple(x.host.shape) if isinstance(x, DeviceCopy) else tuple(x.shape)
