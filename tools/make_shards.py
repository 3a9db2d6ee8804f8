#!/usr/bin/env python
"""Convert data to shardprune datasets, or index existing WebDataset tars in place.

The same code as the ``shardprune convert`` console script (:mod:`shardprune.convert_cli`),
kept for source checkouts; ``python tools/make_shards.py --help`` lists the commands.
"""

from __future__ import annotations

import os
import sys

from shardprune.convert_cli import build_parser, byte_size, main, run

__all__ = ["build_parser", "byte_size", "main", "run"]

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
