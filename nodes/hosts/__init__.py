"""ComfyUI host patchers, registered per model family (the families themselves live in ``edit_core.families``).

``describe_model`` finds the host whose diffusion-model class a MODEL has, detects the family from the
weights, and checks that the family is registered to that host. Adding a family: one line below.
"""

from __future__ import annotations

from ...edit_core.families import FamilyError, TeacherSpec, detect_teacher, family_title, get_family
from .base import AttentionSlots, ComfyHost
from .mmdit import MMDIT_HOST
from .pixart import PIXART_HOST

_HOSTS: dict[str, ComfyHost] = {}


class EDiTModelError(ValueError):
    """This MODEL cannot take EDiT attention (not a supported family, already converted, …)."""


def register_host(family: str, host: ComfyHost) -> None:
    _HOSTS[get_family(family).name] = host


register_host("pixart_sigma", PIXART_HOST)
register_host("pixart_alpha", PIXART_HOST)
register_host("sd35_medium", MMDIT_HOST)
register_host("sd35_large", MMDIT_HOST)
register_host("sd3_medium", MMDIT_HOST)


def supported_titles() -> str:
    return ", ".join(family_title(name) for name in _HOSTS)


def host_for(family: str) -> ComfyHost:
    name = get_family(family).name
    if name not in _HOSTS:
        raise EDiTModelError(f"{family_title(name)} has no ComfyUI host in this version (supported: "
                             f"{supported_titles()})")
    return _HOSTS[name]


def describe_model(model) -> tuple[TeacherSpec, ComfyHost]:
    """Family, attention geometry and host of a MODEL, from its diffusion model's class, keys and shapes."""
    diffusion_model = model.get_model_object("diffusion_model")
    name = f"{type(model.model).__name__} ({type(diffusion_model).__name__})"
    hosts = [h for h in dict.fromkeys(_HOSTS.values()) if h.accepts(diffusion_model)]
    if not hosts:
        raise EDiTModelError(f"EDiT converts {supported_titles()} models; this MODEL is {name}")
    host = hosts[0]
    state = diffusion_model.state_dict(keep_vars=True)  # references, no copies
    try:
        spec = detect_teacher(state, num_heads=host.num_heads(diffusion_model))
    except FamilyError as e:
        raise EDiTModelError(f"this MODEL ({name}) cannot be converted: {e}") from None
    if _HOSTS.get(spec.family) is not host:
        raise EDiTModelError(f"this MODEL ({name}) looks like {spec.title}, which ComfyUI-EDiT does not patch in a "
                             f"{host.name}")
    return spec, host


__all__ = ["ComfyHost", "AttentionSlots", "EDiTModelError", "register_host", "host_for", "describe_model",
           "supported_titles"]
