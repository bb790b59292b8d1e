"""Where a benchmark ran: device, torch, date, load, and how memory was measured there."""

from __future__ import annotations

import datetime
import os
import platform

import torch

from .config import BenchConfig

CPU_MEMORY_METHOD = ("peak RSS growth during the first call of a case (sampled every 2 ms, buffers ≥ 256 KiB "
                     "memory-mapped meanwhile; approximate to a few MiB)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated above the memory held before the timed calls"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(config: BenchConfig) -> dict:
    if config.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = {"type": "cuda", "name": torch.cuda.get_device_name(0),
                  "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    else:
        device = {"type": "cpu", "name": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "device": device,
           "torch": torch.__version__,
           "memory_method": CUDA_MEMORY_METHOD if config.device == "cuda" else CPU_MEMORY_METHOD}
    if hasattr(os, "getloadavg"):
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env


def describe_device(env: dict) -> str:
    d = env["device"]
    if d["type"] == "cuda":
        return f"cuda — {d['name']} ({d['memory_gib']} GiB, CUDA {d['cuda']})"
    return f"cpu — {d['name']}, {d['cores']} cores, {d['torch_threads']} torch threads"


__all__ = ["environment", "describe_device", "cpu_name", "CPU_MEMORY_METHOD", "CUDA_MEMORY_METHOD"]
