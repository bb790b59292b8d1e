"""Host integrations that need no ComfyUI: ``diffusers`` (attention processors for diffusers transformers).

Each integration is imported on its own (``from edit_core.integrations.diffusers import apply_edit``), so
``edit_core`` itself never needs the host package installed."""
