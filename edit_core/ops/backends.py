"""Backend registry for attention ops.

An op (``"linear_attention"``, ``"hybrid_joint_attention"``) has one implementation per backend name
(``"torch"``, later ``"triton"``). ``backend="auto"`` picks the first registered backend, in priority
order, whose cheap ``auto_ok(*tensors)`` check passes (``supports`` unless given: a backend that can be
forced where it should not be the default, like Triton's CPU interpreter, sets both); the torch path
supports everything and is the fallback. Forcing a backend that is not registered, or that cannot run
these inputs, raises an error saying why and what to install.

A backend with a heavy optional dependency (Triton's import takes about a second) is registered lazily:
its loader runs the first time it is forced, or when ``"auto"`` sees inputs its cheap ``may_apply``
check accepts, so importing ``edit_core`` (and ComfyUI's start-up) never pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

BACKEND_NAMES = ("auto", "torch", "triton")


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    priority: int
    supports: Callable[..., str | None]
    """Returns None when the backend can run these inputs, else a reason."""
    auto_ok: Callable[..., str | None] | None = None
    """Returns None when ``"auto"`` may pick the backend for these inputs; defaults to ``supports``."""


_REGISTRY: dict[str, dict[str, Backend]] = {}
_UNAVAILABLE: dict[str, str] = {}
_AUTO_DISABLED: dict[tuple[str, str], str] = {}
_LAZY: dict[tuple[str, str], tuple[Callable[[], None], Callable[..., bool]]] = {}


def _always(*args, **kwargs) -> str | None:
    return None


def register_backend(op: str, name: str, fn: Callable, *, priority: int = 0,
                     supports: Callable[..., str | None] = _always,
                     auto_ok: Callable[..., str | None] | None = None) -> None:
    """Register ``fn`` as the ``name`` implementation of ``op`` (higher priority wins for "auto")."""
    _REGISTRY.setdefault(op, {})[name] = Backend(name, fn, priority, supports, auto_ok)


def register_lazy_backend(op: str, name: str, loader: Callable[[], None], *,
                          may_apply: Callable[..., bool]) -> None:
    """``loader()`` imports the implementation and calls ``register_backend`` (or ``mark_unavailable``);
    it runs once, when ``name`` is forced or ``"auto"`` sees inputs ``may_apply(*tensors)`` accepts."""
    _LAZY[(op, name)] = (loader, may_apply)


def load_backend(op: str, name: str) -> None:
    """Run ``name``'s lazy loader for ``op`` now, if it has one that has not run yet."""
    entry = _LAZY.pop((op, name), None)
    if entry is not None:
        entry[0]()


def mark_unavailable(name: str, reason: str) -> None:
    """Record why a backend could not be registered (shown when someone forces it)."""
    _UNAVAILABLE[name] = reason


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` could not be registered, or None when nothing was recorded."""
    return _UNAVAILABLE.get(name)


def disable_for_auto(op: str, name: str, reason: str) -> None:
    """Stop ``"auto"`` from picking ``name`` for ``op`` in this process (it failed at run time)."""
    _AUTO_DISABLED[(op, name)] = reason


def available_backends(op: str) -> list[str]:
    return sorted(_REGISTRY.get(op, {}), key=lambda n: -_REGISTRY[op][n].priority)


def resolve(op: str, backend: str, *tensors: torch.Tensor, **kwargs) -> Callable:
    """Return the implementation of ``op`` for ``backend`` given the actual inputs."""
    if backend == "auto":
        for lazy_op, name in [key for key in _LAZY if key[0] == op]:
            if _LAZY[(lazy_op, name)][1](*tensors, **kwargs):
                load_backend(op, name)
    else:
        load_backend(op, backend)
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"no implementation registered for op {op!r}")
    if backend == "auto":
        for name in available_backends(op):
            if (op, name) in _AUTO_DISABLED:
                continue
            check = impls[name].auto_ok or impls[name].supports
            if check(*tensors, **kwargs) is None:
                return impls[name].fn
        raise RuntimeError(f"no backend of {op!r} supports these inputs")  # torch supports all
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if backend not in impls:
        why = _UNAVAILABLE.get(backend, f"backend {backend!r} is not implemented for {op!r}")
        raise RuntimeError(f"attention backend {backend!r} is unavailable: {why}")
    reason = impls[backend].supports(*tensors, **kwargs)
    if reason is not None:
        raise RuntimeError(f"attention backend {backend!r} cannot run {op!r} here: {reason}")
    return impls[backend].fn
