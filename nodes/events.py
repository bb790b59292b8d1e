"""Messages from a running node to the graph editor (``web/edit.js`` listens), through ComfyUI's websocket.

Without a ComfyUI server (tests, scripts) ``send_event`` does nothing and returns False; a failing send is
logged, never raised: a UI message must not stop a run.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

log = logging.getLogger("ComfyUI-EDiT")

DISTILL_EVENT = "edit.distill"
APPLY_EVENT = "edit.apply"


def executing_node_id() -> Optional[str]:
    """The id of the node being executed (as the UI knows it), or None outside a run."""
    utils = sys.modules.get("comfy_execution.utils")
    context = utils.get_executing_context() if utils is not None else None
    return None if context is None else str(context.node_id)


def send_event(event: str, data: dict) -> bool:
    """Send ``{"node": <executing node id>, **data}`` as websocket event ``event``; False when no server runs."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "send_sync"):
        return False
    try:
        instance.send_sync(event, {"node": executing_node_id(), **data})
    except Exception:  # noqa: BLE001 (a UI message never stops a run)
        log.debug("ComfyUI-EDiT: could not send %s", event, exc_info=True)
        return False
    return True


def distill_progress(step: int, total: int, values: dict) -> dict:
    """The ``edit.distill`` payload of one training step (``values``: the trainer's step record)."""
    rate = _number(values.get("steps_per_s"))
    eta = (total - step) / rate if rate else None
    return {"step": int(step), "total": int(total), "loss": _number(values.get("loss")),
            "loss_feature": _number(values.get("loss_feature")), "loss_kd": _number(values.get("loss_kd")),
            "steps_per_s": _number(rate), "eta_s": _number(eta)}


def _number(value) -> Optional[float]:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


__all__ = ["send_event", "executing_node_id", "distill_progress", "DISTILL_EVENT", "APPLY_EVENT"]
