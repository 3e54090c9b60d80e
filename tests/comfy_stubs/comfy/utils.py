"""Stand-in for ``comfy.utils``: ProgressBar with ComfyUI's global hook (tests only).

As in ComfyUI, every update goes through the global hook; the server's hook first checks for
an interruption (``model_management.throw_exception_if_processing_interrupted``), so each
update is an interrupt point. ``PROGRESS_CALLS`` records (node_id, value, total) for tests.
"""

from __future__ import annotations

PROGRESS_CALLS: list[tuple] = []


def _default_hook(value, total, preview, node_id=None):
    from . import model_management

    model_management.throw_exception_if_processing_interrupted()
    PROGRESS_CALLS.append((node_id, value, total))


PROGRESS_BAR_HOOK = _default_hook


def set_progress_bar_global_hook(function):
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)
