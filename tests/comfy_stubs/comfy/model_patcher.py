"""Stand-in for ``comfy.model_patcher.ModelPatcher`` (tests only): device and size bookkeeping.

What it keeps of ComfyUI's behaviour (0.3.64 / 0.8.0):

* ``clone()`` gives a new patcher over the SAME model object, with the same devices and
  ``size`` (a caller may set the clone's ``size`` to report extra memory), ``parent`` set to
  the original; ``is_clone`` is "the same model object".
* The size is counted from the model's state dict once and cached (``size == 0`` means
  "not counted yet"); the loaded bytes live on the model (``model_loaded_weight_memory``),
  shared by all clones.
* Loading moves the model's leaf modules one by one and then the whole model (a full
  load); a model already loaded is not moved again; ``detach(unpatch_all=True)`` moves the
  whole model to the offload device, ``detach(False)`` moves nothing.
"""

from __future__ import annotations


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if getattr(model, "device", None) is None:
            model.device = offload_device
        if not hasattr(model, "model_loaded_weight_memory"):
            model.model_loaded_weight_memory = 0
        self.load_device = load_device
        self.offload_device = offload_device
        self.parent = None
        self.model_size()

    def model_size(self):
        if self.size > 0:
            return self.size
        from . import model_management

        self.size = model_management.module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.parent = self
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def model_patches_models(self):
        return []

    def current_loaded_device(self):
        return self.model.device

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        """Load the model (unless it is already loaded); returns the bytes it newly took."""
        if self.model.model_loaded_weight_memory > 0:
            return 0
        for _, module in self.model.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                module.to(device_to)
        self.model.to(device_to)
        self.model.device = device_to
        self.model.model_loaded_weight_memory = self.model_size()
        return self.model.model_loaded_weight_memory

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.model.to(self.offload_device)
            self.model.device = self.offload_device
            self.model.model_loaded_weight_memory = 0
        return self.model
