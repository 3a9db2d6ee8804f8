"""A process that exits while a loader's threads are busy exits with its own status.

A daemon thread that is inside a torch operator when the interpreter finalises is killed
as it takes the GIL back, which unwinds through a C++ ``noexcept`` frame: the process
aborts ("terminate called without an active exception", status 134 / -6) instead of
exiting with its status. That happens whenever a script ends (or an exception ends it)
while a loader's iterator is alive mid-epoch: its pipeline's threads are still preparing
batches. shardprune stops and joins its threads before the interpreter finalises.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loader_data import write_dataset

SCRIPT = """
import sys
import time

import torch
from shardprune.loader import StreamingLoader

class Busy:
    # Transform: keeps the pipeline's threads inside torch operators.
    def __call__(self, sample):
        a, end = torch.ones(160, 160), time.monotonic() + 0.02
        while time.monotonic() < end:
            a = a @ a / 160.0
        return sample

def main():
    loader = StreamingLoader(sys.argv[1], batch_size=4, num_epochs=3, shuffle="window", num_workers=0,
                             transform=Busy(), prefetch_batches=4)
    it = iter(loader)
    next(it)
    if sys.argv[2] == "raise":
        raise RuntimeError("the training step failed")  # sys.last_traceback keeps the iterator
    return it  # kept until exit

if __name__ == "__main__":
    kept = main()
"""


@pytest.mark.parametrize("ending", ["return", "raise"])
def test_a_script_ending_mid_epoch_exits_with_its_own_status(tmp_path: Path, ending: str) -> None:
    write_dataset(tmp_path / "ds", n=96, per_shard=16)
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    expected = 0 if ending == "return" else 1
    for _ in range(3):  # without the fix: 3 of 3 runs of each ending aborted
        run = subprocess.run([sys.executable, str(script), str(tmp_path / "ds"), ending],
                             capture_output=True, text=True, timeout=120)
        assert "terminate called" not in run.stderr, run.stderr[-2000:]
        assert run.returncode == expected, (run.returncode, run.stderr[-2000:])
