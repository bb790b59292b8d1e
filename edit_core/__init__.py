"""edit_core: EDiT / MM-EDiT attention in pure PyTorch (no host imports).

EDiT (Becker et al., arXiv 2503.16726, ICCV 2025) replaces a DiT's quadratic self-attention with
linear compressed attention: ConvFusion queries, spatially compressed (stride-2 depthwise conv) keys
and values, ReLU linear attention. MM-EDiT applies it to the image↔image part of MMDiT joint attention
and keeps every interaction with text in softmax. Subpackages: ``ops`` (attention ops + backends),
``modules``, ``variants``, ``families``, ``adapter`` (the file format), ``integrations`` (diffusers).
"""

__version__ = "0.1.0"
