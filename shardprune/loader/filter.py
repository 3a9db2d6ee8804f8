"""Filters without reads: choose samples by manifest columns, composed with the pruning policy.

A filter selects the samples a run trains on from what the manifest already holds (the
fixed columns ``label``, ``shard``, ``length`` and the user's metadata columns, see
:mod:`shardprune.format.metadata`), so a filtered-out sample is never planned, never
read and never decoded: its bytes cost nothing, as a pruned sample's do not.

Rules:

1. A filter is a boolean mask of length N, or an expression over column names, e.g.
   ``"width >= 256 and label < 10"``. The expression is parsed with :mod:`ast` and
   evaluated with ``pyarrow.compute`` over whole columns; only these constructs are
   accepted: column names, literals (numbers, strings, True/False/None, tuples or lists
   of literals), ``and``/``or``/``not``, comparisons (``== != < <= > >=``, chained),
   ``in``/``not in`` a literal list, ``is None``/``is not None``, ``+ - * / // %`` and
   unary minus. Anything else (calls, attributes, subscripts) is refused: nothing the
   user writes is executed. A comparison with a missing (null) value is False.
2. The filter is evaluated once, when the loader is built, into the sorted ids it keeps
   (:func:`filter_ids`); it is part of the loader's configuration, so a checkpoint
   resumes only under the same filter.
3. Composition (:func:`decide_filtered`): the policy decides over the *filtered
   population* only. It receives the score snapshot restricted to the kept ids, so every
   statistic it computes is a statistic of that population: InfoBatch's mean score is
   the mean over the filtered samples, a budget ``round((1 - r) * N)`` counts filtered
   samples, and the Philox draws are indexed by position in the filtered population.
   Its decision is then scattered back to dataset ids (:func:`expand_decision`), with
   every filtered-out sample not kept (weight 1, keep probability 0). Deciding over all
   N and masking afterwards would be wrong for budgeted policies: filtered-out samples
   are never read, so never scored, and unseen samples are always kept by the policy
   and charged to its budget, which they would eat.
4. The weights are the policy's for its population, so ``weighted_loss`` is an
   unbiased estimate of the mean loss over the filtered samples.
5. Counters: the loader's ``epoch_stats.samples_skipped`` and ``bytes_not_read`` count
   filtered-out and pruned samples together (neither is read); the decision's
   ``info["filtered_out"]`` says how many the filter removed.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardprune.errors import ConfigError
from shardprune.format.manifest import Manifest
from shardprune.policies.decision import EpochDecision, Policy
from shardprune.scores.snapshot import COLUMNS, ScoreSnapshot

#: What ``StreamingLoader(filter=...)`` takes: None, an expression, or a mask over sample ids.
FilterSpec = Union[None, str, np.ndarray, Sequence[bool]]
#: Manifest columns an expression may name besides the metadata columns.
FIXED_COLUMNS = ("label", "shard", "length")

_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: pc.equal,
    ast.NotEq: pc.not_equal,
    ast.Lt: pc.less,
    ast.LtE: pc.less_equal,
    ast.Gt: pc.greater,
    ast.GtE: pc.greater_equal,
}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: pc.add,
    ast.Sub: pc.subtract,
    ast.Mult: pc.multiply,
    ast.Div: lambda a, b: pc.divide(pc.cast(a, pa.float64()), pc.cast(b, pa.float64())),
    ast.FloorDiv: lambda a, b: pc.floor(pc.divide(pc.cast(a, pa.float64()), pc.cast(b, pa.float64()))),
    ast.Mod: lambda a, b: pc.subtract(a, pc.multiply(pc.floor(pc.divide(pc.cast(a, pa.float64()), b)), b)),
}


def manifest_columns(manifest: Manifest) -> dict[str, pa.Array]:
    """The columns an expression may name: the fixed ones and the metadata columns."""
    cols: dict[str, pa.Array] = {name: pa.array(getattr(manifest, name)) for name in FIXED_COLUMNS}
    cols.update(manifest.metadata)
    return cols


class _Evaluator:
    def __init__(self, text: str, columns: dict[str, pa.Array]) -> None:
        self.text = text
        self.columns = columns

    def refuse(self, node: ast.AST, what: str) -> ConfigError:
        part = ast.get_source_segment(self.text, node) or type(node).__name__
        return ConfigError(
            f"filter={self.text!r}: {what} ({part!r}); a filter uses column names, literals, and/or/not, "
            "comparisons, in [...], is None and + - * / // %; nothing else is evaluated"
        )

    def literal(self, node: ast.expr) -> Any:
        try:
            value = ast.literal_eval(node)
        except ValueError:
            raise self.refuse(node, "the list after 'in' must hold literals") from None
        if not isinstance(value, (list, tuple, set)):
            raise self.refuse(node, "'in' needs a list of literals")
        return pa.array(list(value))

    def __call__(self, node: ast.expr) -> Any:
        if isinstance(node, ast.BoolOp):
            fn = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
            out = self.boolean(node.values[0])
            for value in node.values[1:]:
                out = fn(out, self.boolean(value))
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return pc.invert(self.boolean(node.operand))
            if isinstance(node.op, ast.USub):
                return pc.negate(self(node.operand))
            raise self.refuse(node, "unsupported unary operator")
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.BinOp):
            fn = _ARITH.get(type(node.op))
            if fn is None:
                raise self.refuse(node, "unsupported arithmetic operator")
            return fn(self(node.left), self(node.right))
        if isinstance(node, ast.Name):
            if node.id not in self.columns:
                raise ConfigError(
                    f"filter={self.text!r} names column {node.id!r}, which the manifest does not have; "
                    f"columns: {sorted(self.columns)} (add metadata columns at conversion)"
                )
            return self.columns[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str)):
            return pa.scalar(node.value)
        raise self.refuse(node, "unsupported expression")

    def boolean(self, node: ast.expr) -> Any:
        value = self(node)
        if not pa.types.is_boolean(value.type):
            raise self.refuse(node, f"this is {value.type}, not a condition")
        return value

    def compare(self, node: ast.Compare) -> Any:
        out = None
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.Is, ast.IsNot)):
                if not (isinstance(right, ast.Constant) and right.value is None):
                    raise self.refuse(node, "'is' compares with None only")
                term = pc.is_null(self(left))
                term = pc.invert(term) if isinstance(op, ast.IsNot) else term
            elif isinstance(op, (ast.In, ast.NotIn)):
                term = pc.is_in(self(left), value_set=self.literal(right))
                term = pc.invert(term) if isinstance(op, ast.NotIn) else term
            else:
                fn = _COMPARE[type(op)]
                try:
                    term = fn(self(left), self(right))
                except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise self.refuse(node, f"the two sides cannot be compared: {exc}") from None
            out = term if out is None else pc.and_kleene(out, term)
            left = right
        return out


def evaluate(expression: str, columns: dict[str, pa.Array]) -> np.ndarray:
    """bool[N]: the samples for which ``expression`` is true (null counts as false).

    Raises:
        ConfigError: the expression does not parse, uses a refused construct, names an
            unknown column, or is not a condition.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"filter={expression!r} is not an expression ({exc.msg}); e.g. \"width >= 256\"") from None
    evaluator = _Evaluator(expression.strip(), columns)
    result = evaluator.boolean(tree.body)
    n = len(next(iter(columns.values())))
    if isinstance(result, pa.Scalar):
        return np.full(n, bool(result.as_py()), dtype=bool)
    return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def filter_ids(spec: FilterSpec, manifest: Manifest) -> np.ndarray | None:
    """The sorted int64 ids a filter keeps, or None for no filter.

    Raises:
        ConfigError: a mask of another length or type, a bad expression, or a filter
            that keeps no sample.
    """
    n = len(manifest)
    if spec is None:
        return None
    if isinstance(spec, str):
        mask = evaluate(spec, manifest_columns(manifest))
    else:
        arr = np.asarray(spec)
        if arr.dtype != np.bool_ or arr.shape != (n,):
            raise ConfigError(
                f"filter mask has dtype {arr.dtype} and shape {arr.shape}; pass a bool array of shape ({n},), "
                "one entry per sample id, or an expression string"
            )
        mask = arr
    ids = np.flatnonzero(mask).astype(np.int64)
    if ids.size == 0:
        raise ConfigError(f"filter={_describe(spec)} keeps 0 of {n} samples; loosen it")
    return ids


def filter_config(spec: FilterSpec, ids: np.ndarray | None) -> dict[str, Any] | None:
    """The filter's entry in the loader configuration: its text and a digest of the ids it keeps."""
    if ids is None:
        return None
    digest = hashlib.blake2b(np.ascontiguousarray(ids, dtype="<i8").tobytes(), digest_size=16).hexdigest()
    return {"expression": spec if isinstance(spec, str) else None, "kept": int(ids.size), "ids": digest}


def _describe(spec: FilterSpec) -> str:
    return repr(spec) if isinstance(spec, str) else "<mask>"


def restrict(snapshot: ScoreSnapshot, ids: np.ndarray) -> ScoreSnapshot:
    """The snapshot of samples ``ids`` only (position ``j`` holds sample ``ids[j]``)."""
    return ScoreSnapshot.from_columns({name: getattr(snapshot, name)[ids] for name, _ in COLUMNS}, copy=False)


def expand_decision(decision: EpochDecision, ids: np.ndarray, n: int) -> EpochDecision:
    """Scatter a decision over the filtered population ``ids`` back to all ``n`` samples.

    Filtered-out samples are not kept (weight 1, keep probability 0); the rest keep the
    policy's keep, weight and probability. Mixup settings and ``info`` carry over, with
    ``filtered_out`` (samples the filter removed) added to ``info``.
    """
    if decision.keep.shape != ids.shape:
        raise ConfigError(
            f"the policy returned {decision.keep.shape[0]} decisions for a filtered population of {ids.size}"
        )
    keep = np.zeros(n, dtype=bool)
    keep[ids] = decision.keep
    weights = np.ones(n, dtype=np.float32)
    weights[ids] = decision.weights
    keep_prob = None
    if decision.keep_prob is not None:
        keep_prob = np.zeros(n, dtype=np.float32)
        keep_prob[ids] = decision.keep_prob
    info = {**decision.info, "filtered_out": int(n - ids.size)}
    return EpochDecision(keep, weights, keep_prob, decision.mixup_prob, decision.mixup_alpha, info)


def decide_filtered(
    policy: Policy, snapshot: ScoreSnapshot, ids: np.ndarray | None, epoch: int, seed: int, num_epochs: int
) -> EpochDecision:
    """The policy's decision over the filtered population ``ids`` (None: every sample)."""
    if ids is None:
        return policy.decide(snapshot, epoch, seed, num_epochs)
    return expand_decision(policy.decide(restrict(snapshot, ids), epoch, seed, num_epochs), ids, len(snapshot))


__all__ = [
    "FIXED_COLUMNS",
    "FilterSpec",
    "decide_filtered",
    "evaluate",
    "expand_decision",
    "filter_config",
    "filter_ids",
    "manifest_columns",
    "restrict",
]
