"""Attention ops: ``linear_attention`` and ``hybrid_joint_attention``, each with a float64 reference
(``naive_*``) and a backend registry (``backends``: "auto" | "torch" | "triton")."""

from . import backends
from .hybrid_attention import (ETA_MODES, hybrid_joint_attention, hybrid_joint_attention_streams,
                               naive_hybrid_joint_attention)
from .linear_attention import linear_attention, naive_linear_attention

__all__ = ["backends", "linear_attention", "naive_linear_attention", "hybrid_joint_attention",
           "hybrid_joint_attention_streams",
           "naive_hybrid_joint_attention", "ETA_MODES"]
