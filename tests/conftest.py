import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REFERENCE_DIR = ROOT / "tests" / "reference"
GOLDEN_DIR = REFERENCE_DIR / "golden"

# A test that raises the process's peak memory by more than this builds a full-size network
# (or something as large) and belongs in the slow lane: ``pytest -m "not slow"`` skips it.
SLOW_PEAK_MB = 1000
_unmarked_heavy: list[tuple[str, float]] = []


# One intra-op thread: most tests run tiny networks, where threading costs more than it gives,
# and several tests spawn worker processes that would otherwise oversubscribe the cores.
torch.set_num_threads(1)


def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: write 5 to clear_refs); False elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Notes every test not marked ``slow`` whose setup, call and teardown raised the process's
    resident memory more than SLOW_PEAK_MB above where it started (listed at the end of the
    run: mark them ``@pytest.mark.slow``). Linux only (peak mark reset per test)."""
    start = _rss_mb("VmRSS") if _reset_peak() else None
    yield
    peak = _rss_mb("VmHWM")
    if start is not None and peak is not None and peak - start > SLOW_PEAK_MB \
            and item.get_closest_marker("slow") is None:
        _unmarked_heavy.append((item.nodeid, peak - start))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def pytest_terminal_summary(terminalreporter):
    if _unmarked_heavy:
        terminalreporter.section("tests that should be marked slow")
        for nodeid, grown in _unmarked_heavy:
            terminalreporter.write_line(f"{nodeid}: peak memory +{grown:.0f} MB")


@pytest.fixture
def golden_dir() -> pathlib.Path:
    return GOLDEN_DIR


@pytest.fixture
def reference_dir() -> pathlib.Path:
    return REFERENCE_DIR
