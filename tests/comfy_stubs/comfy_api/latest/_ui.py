"""Stand-in for ``comfy_api.latest.ui``: only the text preview (tests only)."""


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": [self.value]}
