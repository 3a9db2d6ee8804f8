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
from shardprune.policies.decision import DEFAULT_PRUNE_RATIO, EpochDecision, Policy, PolicyBase
from shardprune.policies.infobatch import InfoBatch
from shardprune.policies.swdpp import SwDPP

_REGISTRY: dict[str, type[PolicyBase]] = {
    cls.name: cls for cls in (EpsilonGreedy, Full, InfoBatch, RandomPruning, SwDPP, UCB)
}
POLICIES: tuple[str, ...] = tuple(sorted(_REGISTRY))


def parse_policy_name(spec: str) -> tuple[str, float | None]:
    """Split ``"infobatch:0.7"`` into ``("infobatch", 0.7)``; a bare name gives ``(name, None)``.

    Raises:
        ConfigError: for a non-string, an unknown name, or a ratio that is not a number.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"policy={spec!r} must be a name such as 'infobatch' or 'infobatch:0.7'")
    name, sep, ratio_text = spec.partition(":")
    name = name.strip()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown pruning policy {name!r}; choose one of {', '.join(POLICIES)}, optionally with the prune "
            "ratio after a colon (e.g. 'infobatch:0.7')"
        )
    if not sep:
        return name, None
    try:
        ratio = float(ratio_text)
    except ValueError:
        raise ConfigError(
            f"policy {spec!r}: the prune ratio after ':' must be a number in [0, 1), e.g. '{name}:0.5'"
        ) from None
    return name, ratio


def make_policy(name: str, **params: Any) -> Policy:
    """Build the policy registered as ``name`` with ``params``.

    Every budgeted policy prunes :data:`~shardprune.policies.decision.DEFAULT_PRUNE_RATIO`
    (0.5) when no ratio is given; ``"name:r"`` gives one, e.g. ``make_policy("swdpp:0.3")``
    is ``make_policy("swdpp", prune_ratio=0.3)`` (the loader's ``policy=`` takes the same
    strings).

    Args:
        name: One of :data:`POLICIES`, optionally followed by ``:r``.
        **params: The policy's parameters (``prune_ratio``, ``delta``, ...).

    Raises:
        ConfigError: for an unknown name or parameter (listing the allowed ones), a
            parameter outside its range, or a ratio given both in the name and as
            ``prune_ratio``.
    """
    base, ratio = parse_policy_name(name)
    cls = _REGISTRY[base]
    if ratio is not None:
        if "prune_ratio" in params:
            raise ConfigError(
                f"policy {name!r} gives the prune ratio twice (in the name and prune_ratio={params['prune_ratio']!r}); "
                "give it once"
            )
        params = {**params, "prune_ratio": ratio}
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"policy {base!r} has no parameter(s) {unknown}; allowed: {', '.join(allowed)}")
    policy: Policy = cls(**params)
    return policy


__all__ = [
    "DEFAULT_PRUNE_RATIO",
    "POLICIES",
    "EpochDecision",
    "Policy",
    "make_policy",
    "parse_policy_name",
]
