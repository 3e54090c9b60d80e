"""The split of a dataset's examples into training and validation clips.

Examples are grouped by *clip* (the name before ``#``: all windows of a clip stay on
one side, so no validation audio leaks into training). Clips are ordered by a hash of their
name and the first ``n_val`` are held out: the split depends only on the clip names (not on
``--seed``, the file order or the window policy), and is not simply the alphabetically first
clips (which are often one class). Default ``n_val``: ``round(fraction * clips)``, at least one once
there are 4 or more clips, none below that (too little data to spare).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_WINDOW_SUFFIX = re.compile(r"#w\d+$")


def clip_of(name: str) -> str:
    """The clip an example belongs to (``dog#w1`` -> ``dog``; a ``#`` in the clip's own file
    name is kept: ``take#2#w0`` -> ``take#2``, so ``take#1`` and ``take#2`` stay two clips)."""
    return _WINDOW_SUFFIX.sub("", name)


def default_val_count(num_clips: int, fraction: float) -> int:
    """Clips held out by default: round(fraction * clips), >= 1 from 4 clips, 0 below 4."""
    if num_clips < 4 or fraction <= 0:
        return 0
    return min(max(1, round(fraction * num_clips)), num_clips - 1)


def split_examples(examples: Sequence, val_fraction: float = 0.1,
                   val_clips: int | None = None) -> tuple[list, list]:
    """(train, validation) examples, split by clip; both keep the input order."""
    clips = sorted({clip_of(e.name) for e in examples})
    if val_clips is None:
        n_val = default_val_count(len(clips), val_fraction)
    else:
        n_val = int(val_clips)
        if n_val < 0 or (n_val and n_val >= len(clips)):
            raise ValueError(f"--val_clips {n_val} leaves no training clip: the dataset has "
                             f"{len(clips)} clip(s); use at most {len(clips) - 1}")
    order = sorted(clips, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    held_out = set(order[:n_val])
    train = [e for e in examples if clip_of(e.name) not in held_out]
    val = [e for e in examples if clip_of(e.name) in held_out]
    return train, val
