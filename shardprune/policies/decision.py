"""What a policy returns, the protocol it fills, and the rules all policies share.

Shared rules: a sample that was never seen is always kept with weight 1 (it cannot be
"well learned" whatever the loss scale); annealing epochs (``epoch >= delta *
num_epochs``, compared exactly as rationals, so ``num_epochs * delta`` need not be an
integer) keep everything with weight 1; the per-epoch budget of the budgeted policies
is ``K = round((1 - r) * N)`` samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from shardprune.errors import CheckpointMismatchError, ConfigError
from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.validate import check_float, check_int

#: The prune ratio r every budgeted policy uses when none is given: InfoBatch's official
#: default, the same for random, epsilon-greedy, UCB and SwDPP so that swapping the policy
#: name changes the rule, not the budget. Give another with ``make_policy("swdpp:0.3")``.
DEFAULT_PRUNE_RATIO = 0.5
#: Annealing start (fraction of the epochs) when none is given: InfoBatch's official delta.
DEFAULT_DELTA = 0.875


@dataclass(frozen=True)
class EpochDecision:
    """One epoch's keep decisions.

    Attributes:
        keep: bool[N], True for samples the epoch reads.
        weights: float32[N], the loss weight of each kept sample (1.0 where dropped).
        keep_prob: float32[N] inclusion probability per sample, or None.
        mixup_prob: Probability q that a kept sample is Mixup-blended in flight.
        mixup_alpha: Beta(a, a) parameter of the Mixup lambda.
        info: Summary numbers (threshold, set sizes, pruned fraction, annealing flag).
    """

    keep: np.ndarray
    weights: np.ndarray
    keep_prob: np.ndarray | None
    mixup_prob: float = 0.0
    mixup_alpha: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_kept(self) -> int:
        return int(np.count_nonzero(self.keep))


@runtime_checkable
class Policy(Protocol):
    """A pure function of (snapshot, epoch, seed, num_epochs) -> :class:`EpochDecision`."""

    name: str

    def decide(self, snapshot: ScoreSnapshot, epoch: int, seed: int, num_epochs: int) -> EpochDecision: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_call(snapshot: ScoreSnapshot, epoch: int, seed: int, num_epochs: int) -> None:
    """Validate the arguments of ``decide()`` (the same for every policy)."""
    if not isinstance(snapshot, ScoreSnapshot):
        raise ConfigError(f"decide() needs a ScoreSnapshot, got {type(snapshot).__name__}; use store.snapshot()")
    for name, value, low in (("epoch", epoch, 0), ("num_epochs", num_epochs, 1), ("seed", seed, 0)):
        check_int(f"decide(): {name}", value, low, fix=f"pass a whole number from {low} up")


def check_prune_ratio(value: object, policy: str, high: float = 1.0, *, high_open: bool = True, why: str = "") -> float:
    """Validate a policy's prune ratio r, with the fix every policy suggests."""
    fix = f"{why}; " if why else ""
    fix += f"pass e.g. prune_ratio=0.5, or policy='{policy}:0.5'"
    return check_float("prune_ratio", value, 0.0, high, high_open=high_open, fix=fix)


def check_delta(value: object) -> float:
    """Validate the annealing start ``delta`` (a fraction of the epochs)."""
    return check_float("delta", value, 0.0, 1.0, low_open=True, fix="pass e.g. delta=0.875 (InfoBatch's default)")


def check_ratio_delta(
    prune_ratio: object, delta: object, policy: str, high: float = 1.0, *, high_open: bool = True, why: str = ""
) -> tuple[float, float]:
    """Validate a budgeted policy's prune ratio r (as :func:`check_prune_ratio`), then its ``delta``."""
    return check_prune_ratio(prune_ratio, policy, high, high_open=high_open, why=why), check_delta(delta)


def is_annealing(epoch: int, num_epochs: int, delta: float) -> bool:
    """True for epochs ``e >= delta * num_epochs``, compared exactly (no float product or ==).

    ``delta`` is taken as the decimal it prints as (``0.7`` is 7/10, not the binary
    double just above it), so ``delta=0.7, num_epochs=10`` anneals from epoch 7 on.
    """
    return Fraction(epoch) >= Fraction(repr(float(delta))) * num_epochs


def budget(n: int, prune_ratio: float) -> int:
    """Samples an epoch may read at prune ratio r: ``round((1 - r) * n)``."""
    return int(round((1.0 - prune_ratio) * n))


def keep_all(n: int, **info: Any) -> EpochDecision:
    """Everything kept, weight 1."""
    return EpochDecision(
        keep=np.ones(n, dtype=bool),
        weights=np.ones(n, dtype=np.float32),
        keep_prob=np.ones(n, dtype=np.float32),
        info={"pruned_fraction": 0.0, **info},
    )


def pruning_decision(keep: np.ndarray, weights: np.ndarray, keep_prob: np.ndarray | None, **info: Any) -> EpochDecision:
    """A pruning (non-annealing) epoch's decision: ``info`` after ``"annealing": False``."""
    return EpochDecision(keep=keep, weights=weights, keep_prob=keep_prob, info={"annealing": False, **info})


class PolicyBase:
    """Parameter bookkeeping and strict state round-trip shared by every policy.

    State format: ``{"name": str, "params": {...}}``. Policies are pure, so their state is
    their configuration; loading checks it matches and refuses otherwise.
    """

    name = ""

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = params

    #: Extra ``info`` entries of an annealing epoch's decision (so its keys match a pruning epoch's).
    annealing_info: ClassVar[dict[str, Any]] = {}

    def decide(self, snapshot: ScoreSnapshot, epoch: int, seed: int, num_epochs: int) -> EpochDecision:
        """Keep decisions and weights for ``epoch``: the preamble every policy shares, then :meth:`plan`.

        The preamble checks the arguments and returns "everything, weight 1" for an
        annealing epoch (``epoch >= delta * num_epochs``), so :meth:`plan` only sees
        pruning epochs.

        Raises:
            ConfigError: for a snapshot that is not a :class:`ScoreSnapshot`, or an epoch,
                seed or epoch count that is not a whole number in range.
        """
        check_call(snapshot, epoch, seed, num_epochs)
        if is_annealing(epoch, num_epochs, self.params["delta"]):
            return keep_all(len(snapshot), annealing=True, **self.annealing_info)
        return self.plan(snapshot, epoch, seed)

    def plan(self, snapshot: ScoreSnapshot, epoch: int, seed: int) -> EpochDecision:
        """The decision of a pruning (non-annealing) epoch; each policy implements it."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"name", "params"}:
            raise CheckpointMismatchError(f"policy state keys {sorted(state)} (in checkpoint), expected ['name', 'params']")
        if state["name"] != self.name or state["params"] != self.params:
            raise CheckpointMismatchError(
                f"policy {state['name']!r} {state['params']} (in checkpoint) vs {self.name!r} {self.params} (now); "
                "resume with the same policy settings"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def choose_mask(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A uniformly random subset of exactly ``k`` of ``n`` positions, as bool[n].

    Each position draws a uint32 key; the ``k`` smallest keys win, and positions tied
    with the k-th key are resolved by a uniform draw among the tied ones, so every
    k-subset is equally likely. O(n) (one partition), unlike a sort or a partial shuffle.
    """
    if k <= 0:
        return np.zeros(n, dtype=bool)
    if k >= n:
        return np.ones(n, dtype=bool)
    keys = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    threshold = np.partition(keys, k - 1)[k - 1]
    mask = keys < threshold
    need = k - int(np.count_nonzero(mask))
    tied = np.flatnonzero(keys == threshold)
    if need == len(tied):
        mask[tied] = True
    else:
        mask[rng.choice(tied, size=need, replace=False)] = True
    return mask
