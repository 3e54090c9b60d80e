"""The errors of the weights package: one base class every front end can catch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..variants import WeightFile


class WeightsError(ValueError):
    """A weight file is missing, broken, unsafe or does not fit the network it is loaded into."""


@dataclass(frozen=True)
class MissingFile:
    """One file a variant needs that is not in the models folder."""

    key: str  # role in the variant, e.g. "generator" or "t5.weights"
    file: WeightFile
    url: str
    destination: Path


class MissingWeightsError(WeightsError):
    """Files a variant needs are missing and cannot be fetched now; ``missing`` lists them all."""

    def __init__(self, message: str, missing: Sequence[MissingFile] = ()):
        super().__init__(message)
        self.missing = tuple(missing)
