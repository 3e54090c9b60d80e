"""Stand-in for ``comfy_api.latest._io`` (the V3 node schema), tests only.

Constructor signatures follow ComfyUI's (0.3.64 / 0.8.0) for the arguments the pack uses, so
an argument ComfyUI does not accept fails here too. ``ComfyNode.PREPARE_CLASS_CLONE`` gives the
clone with ``cls.hidden`` as ComfyUI's executor does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class _ComfyType:
    io_type: str = ""


class Input:
    Parent: type[_ComfyType] = _ComfyType

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, extra_dict=None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict or {}

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, default: Any = None, socketless: bool = None,
                 widget_type: str = None, force_input: bool = None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input


class Output:
    Parent: type[_ComfyType] = _ComfyType

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None,
                 is_output_list=False):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


def _bind(cls, io_type: str):
    """Give a type class its io_type and its own Input/Output subclasses bound to it."""
    cls.io_type = io_type
    for name, base in (("Input", Input), ("Output", Output)):
        inner = getattr(cls, name, base)
        bound = type(name, (inner,), {"Parent": cls})
        setattr(cls, name, bound)
    return cls


def comfytype(io_type: str):
    return lambda cls: _bind(cls, io_type)


class ComfyTypeIO(_ComfyType):
    Input = Input
    Output = Output


def Custom(io_type: str) -> type[ComfyTypeIO]:
    return _bind(type(f"Custom_{io_type}", (ComfyTypeIO,), {}), io_type)


@comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default: bool = None, label_on: str = None,
                     label_off: str = None, socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless,
                             None, force_input)
            self.label_on = label_on
            self.label_off = label_off


@comfytype("INT")
class Int(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default: int = None, min: int = None, max: int = None,
                     step: int = None, control_after_generate: bool = None,
                     display_mode: NumberDisplay = None, socketless: bool = None,
                     force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless,
                             None, force_input)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode


@comfytype("FLOAT")
class Float(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default: float = None, min: float = None,
                     max: float = None, step: float = None, round: float = None,
                     display_mode: NumberDisplay = None, socketless: bool = None,
                     force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless,
                             None, force_input)
            self.min, self.max, self.step, self.round = min, max, step, round
            self.display_mode = display_mode


@comfytype("STRING")
class String(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, multiline=False, placeholder: str = None,
                     default: str = None, dynamic_prompts: bool = None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless,
                             None, force_input)
            self.multiline = multiline
            self.placeholder = placeholder
            self.dynamic_prompts = dynamic_prompts


@comfytype("COMBO")
class Combo(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, options: list = None, display_name: str = None,
                     optional=False, tooltip: str = None, lazy: bool = None, default=None,
                     control_after_generate: bool = None, upload=None, image_folder=None,
                     remote=None, socketless: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.options = list(options or [])
            self.control_after_generate = control_after_generate


@comfytype("IMAGE")
class Image(ComfyTypeIO):
    pass


@comfytype("MASK")
class Mask(ComfyTypeIO):
    pass


@comfytype("AUDIO")
class Audio(ComfyTypeIO):
    pass


@comfytype("VIDEO")
class Video(ComfyTypeIO):
    pass


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


class HiddenHolder:
    def __init__(self, values: dict | None):
        values = values or {}
        self.unique_id = values.get(Hidden.unique_id)
        self.prompt = values.get(Hidden.prompt)

    def __getattr__(self, key):
        return None


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        ids = [i.id for i in self.inputs or []] + [o.id for o in self.outputs or [] if o.id]
        if len(ids) != len(set(ids)):
            raise ValueError(f"input/output ids must be unique: {ids}")


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode:
    hidden: HiddenHolder = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool | str:
        return True

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> Any:
        return None

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict | None) -> type[ComfyNode]:
        clone = type(cls.__name__, (cls,), {})
        clone.hidden = HiddenHolder(hidden_inputs)
        return clone
