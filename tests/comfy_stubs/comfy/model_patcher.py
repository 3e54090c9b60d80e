"""Stand-in for ``comfy.model_patcher.ModelPatcher`` (tests only): device bookkeeping only."""

from __future__ import annotations


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size or model_management_module_size(model)
        if getattr(model, "device", None) is None:
            model.device = offload_device

    def model_size(self):
        return self.size

    def current_loaded_device(self):
        return self.model.device

    def detach(self, unpatch_all=True):
        self.model.to(self.offload_device)
        self.model.device = self.offload_device
        return self.model


def model_management_module_size(module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())

