"""Counter-based randomness: one independent Philox stream per (seed, purpose, epoch, ...).

numpy's Philox-4x64 has a 128-bit key and a 256-bit counter. The user's seed is the
key; the caller's counter words go into the three high counter words and the lowest
word is left at 0 for the stream position, so streams with different counters never
overlap (each can produce 2**64 blocks). Neighbouring seeds are different keys, not
shifted positions of one stream, so they do not collide the way ``seed + index`` does.
"""

from __future__ import annotations

import numpy as np

from shardprune.errors import ConfigError

_MAX_SEED = 1 << 128
_MAX_WORD = 1 << 64

#: Purpose words: the first counter component, one per kind of random decision.
PURPOSE_RANDOM = 1
PURPOSE_INFOBATCH = 2
PURPOSE_SWDPP_KEEP = 3
PURPOSE_GREEDY = 4
PURPOSE_MIXUP = 5


def philox(seed: int, *counter: int) -> np.random.Generator:
    """A numpy Generator on Philox keyed by ``seed``, positioned by ``counter``.

    Args:
        seed: The user's seed, ``0 <= seed < 2**128``.
        *counter: Up to three words ``0 <= c < 2**64``, e.g. ``(PURPOSE_INFOBATCH, epoch)``.

    Returns:
        A fresh generator; the same arguments always give the same stream.

    Raises:
        ConfigError: if the seed or a counter word is out of range or not an int.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < _MAX_SEED:
        raise ConfigError(f"seed={seed!r} must be an int in 0..2**128-1; pass e.g. seed=0")
    if len(counter) > 3:
        raise ConfigError(f"philox takes at most 3 counter words, got {len(counter)}: {counter}")
    words = [0, 0, 0, 0]
    for i, c in enumerate(counter):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < _MAX_WORD:
            raise ConfigError(f"counter word {i}={c!r} must be an int in 0..2**64-1 (epochs are >= 0)")
        words[i + 1] = int(c)
    return np.random.Generator(np.random.Philox(key=int(seed), counter=np.array(words, dtype=np.uint64)))
