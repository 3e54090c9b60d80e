"""The order in which training examples are seen, and the per-example random seeds.

Examples form one endless *stream*: stream position ``k`` is example ``perm_e[k % n]`` of
epoch ``e = k // n``, where ``perm_e`` is a fresh seeded permutation each epoch (every clip
once per epoch, no clip twice in a row within an epoch). An optimiser step consumes the next
``batch_size x grad_accum x world_size`` positions; process ``r`` of ``W`` takes, for
micro-batch ``m``, the ``batch_size`` positions starting at
``pos + (m * W + r) * batch_size``. One process with batch ``W * b`` therefore sees exactly the
same global batch as ``W`` processes with batch ``b`` (a DistributedSampler-like sharding).

All randomness of one example at one stream position (its latent sample, noise, t and
condition dropout) comes from a generator seeded by :func:`example_seed` ``(seed, k)``; nothing
depends on how many processes share the work or where a run was resumed, so the data position
alone restores it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One SplitMix64 step: decorrelates nearby integers (seeds of adjacent positions)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (order matters), for ``torch.Generator.manual_seed``."""
    h = 0x5E1FA
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def example_seed(seed: int, stream_pos: int) -> int:
    """Seed of every random draw for the example at ``stream_pos`` of a run seeded ``seed``."""
    return mix_seed(seed, 1, stream_pos)


@dataclass
class DataOrder:
    """Seeded epoch permutations over ``num_examples`` examples and the stream sharding."""

    num_examples: int
    seed: int
    _cache: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.num_examples < 1:
            raise ValueError("the training set is empty: nothing to train on")

    def permutation(self, epoch: int) -> list[int]:
        """The example order of ``epoch`` (cached; only the newest epochs are kept)."""
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(mix_seed(self.seed, 0, epoch))
            self._cache[epoch] = torch.randperm(self.num_examples, generator=g).tolist()
            for old in [e for e in self._cache if e < epoch - 1]:
                del self._cache[old]
        return self._cache[epoch]

    def epoch_of(self, stream_pos: int) -> int:
        return stream_pos // self.num_examples

    def example_at(self, stream_pos: int) -> int:
        return self.permutation(self.epoch_of(stream_pos))[stream_pos % self.num_examples]

    def micro_batch(self, stream_pos: int, micro: int, batch_size: int, world_size: int = 1,
                    rank: int = 0) -> list[tuple[int, int]]:
        """(stream position, example index) pairs of one process's micro-batch."""
        start = stream_pos + (micro * world_size + rank) * batch_size
        return [(k, self.example_at(k)) for k in range(start, start + batch_size)]

    @staticmethod
    def step_size(batch_size: int, grad_accum: int, world_size: int) -> int:
        """Stream positions consumed by one optimiser step."""
        return batch_size * grad_accum * world_size
