"""Reading safetensors headers ourselves: never unpickles, and every kind of bad file gets one precise
problem (a pickle / PyTorch checkpoint, garbage, a truncated file). Used for adapters, teachers and
checkpoints alike; callers wrap ``SafetensorsFileError.problem`` in their own error type."""

from __future__ import annotations

import json
import os
import struct

import torch

PICKLE_PROBLEM = ("this is a pickle / PyTorch checkpoint (.pt/.ckpt/.bin); only safetensors files are loaded, "
                  "never unpickled (convert it to safetensors first)")
_MAX_HEADER = 100_000_000  # the safetensors format's own limit
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class SafetensorsFileError(ValueError):
    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"'{path}': {problem}")


def read_header(path: str) -> tuple[dict, dict[str, str]]:
    """(tensor entries {name: {dtype, shape, data_offsets}}, string metadata) of a safetensors file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)  # the little-endian header length may start with 0x80; its JSON starts at byte 8
        if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
            raise SafetensorsFileError(path, PICKLE_PROBLEM)
        if len(head) < 8:
            raise SafetensorsFileError(path, f"not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > _MAX_HEADER:
            raise SafetensorsFileError(path, "not a safetensors file (no valid header)")
        if header_len > size - 8:
            raise SafetensorsFileError(path, f"the file is truncated: its header says {header_len} bytes, the file "
                                             f"has {size - 8}")
        f.seek(8)
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SafetensorsFileError(path, "not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise SafetensorsFileError(path, "not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - header_len
    end = max((int(v["data_offsets"][1]) for v in header.values() if isinstance(v, dict) and "data_offsets" in v),
              default=0)
    if end > data_len:
        raise SafetensorsFileError(path, f"the file is truncated: its tensors need {end} bytes of data, it has "
                                         f"{data_len}")
    return header, metadata


def read_shapes(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor as a meta tensor (shape and dtype, no data) and the metadata; reads only the header."""
    header, metadata = read_header(path)
    try:
        shapes = {name: torch.empty(entry["shape"], dtype=_DTYPES.get(entry["dtype"], torch.float32), device="meta")
                  for name, entry in header.items()}
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise SafetensorsFileError(path, "not a safetensors file (malformed tensor entries)") from None
    return shapes, metadata
