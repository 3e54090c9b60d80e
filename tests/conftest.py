import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REFERENCE_DIR = ROOT / "tests" / "reference"
GOLDEN_DIR = REFERENCE_DIR / "golden"


# One intra-op thread: most tests run tiny networks, where threading costs more than it gives,
# and several tests spawn worker processes that would otherwise oversubscribe the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def golden_dir() -> pathlib.Path:
    return GOLDEN_DIR


@pytest.fixture
def reference_dir() -> pathlib.Path:
    return REFERENCE_DIR
