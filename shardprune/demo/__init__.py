"""The main job: train one small model with each pruning policy through the loader and compare.

``python -m shardprune demo`` converts a built-in dataset (MNIST-1D by default) to zarr
shards, trains the same model with ``full``, ``random``, ``infobatch`` and ``swdpp``, and
prints accuracy, sample visits, bytes read and wall time, each also as a fraction of full.
``benchmarks/train_bench.py`` reuses :func:`train_policy` over a grid of seeds and ratios.
"""

from shardprune.demo.data import DemoData, load_arrays, prepare_data
from shardprune.demo.run import DemoOptions, DemoReport, run_demo
from shardprune.demo.trainer import RunResult, TrainConfig, train_policy

__all__ = [
    "DemoData",
    "DemoOptions",
    "DemoReport",
    "RunResult",
    "TrainConfig",
    "load_arrays",
    "prepare_data",
    "run_demo",
    "train_policy",
]
