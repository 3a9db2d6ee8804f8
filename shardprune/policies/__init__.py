"""Pruning policies: pure functions of (score snapshot, epoch, seed) -> keep decisions and weights.

Every policy is registered by name and built with :func:`make_policy`, which validates
the name and the parameters. See docs/ALGORITHMS.md for the rules each one follows.
"""

from __future__ import annotations

import inspect
from typing import Any

from shardprune.errors import ConfigError
from shardprune.policies.bandit import UCB, EpsilonGreedy
from shardprune.policies.baselines import Full, RandomPruning
from shardprune.policies.decision import EpochDecision, Policy, PolicyBase
from shardprune.policies.infobatch import InfoBatch
from shardprune.policies.swdpp import SwDPP

_REGISTRY: dict[str, type[PolicyBase]] = {
    cls.name: cls for cls in (EpsilonGreedy, Full, InfoBatch, RandomPruning, SwDPP, UCB)
}
POLICIES: tuple[str, ...] = tuple(sorted(_REGISTRY))


def make_policy(name: str, **params: Any) -> Policy:
    """Build the policy registered as ``name`` with ``params``.

    Args:
        name: One of :data:`POLICIES`.
        **params: The policy's parameters (``prune_ratio``, ``delta``, ...).

    Raises:
        ConfigError: for an unknown name or parameter (listing the allowed ones), or a
            parameter outside its range.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown pruning policy {name!r}; choose one of {', '.join(POLICIES)}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"policy {name!r} has no parameter(s) {unknown}; allowed: {', '.join(allowed)}")
    policy: Policy = cls(**params)
    return policy


__all__ = [
    "POLICIES",
    "EpochDecision",
    "Policy",
    "make_policy",
]
