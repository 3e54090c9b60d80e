"""What the training loop shares with the terminal: stop requests and the progress bar.

Ctrl-C or SIGTERM asks the loop to stop after the current optimiser step (it then writes a
resumable checkpoint); a second Ctrl-C stops at once. The progress bar counts optimiser steps
and shows the loss and learning rate.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


class StopSignals:
    """SIGINT/SIGTERM set a flag (the loop saves and stops after the current step); a second
    SIGINT raises KeyboardInterrupt at once. Only installable from the main thread."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: finishing this step, then saving a resumable checkpoint "
                    "(press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


class ProgressBar:
    """A tqdm bar over optimiser steps (rank 0, not --quiet) showing loss and lr."""

    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step",
                            dynamic_ncols=True)

    def update(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
