"""Custom ComfyUI socket types of this pack."""

from comfy_api.latest import io

EDiTAdapterType = io.Custom("EDIT_ADAPTER")
"""An ``edit_core.adapter.Adapter``: metadata + canonical tensors, not yet bound to a model."""
