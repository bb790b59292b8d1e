"""Device references the percentages are taken against: copy bandwidth (``op-bw``) and a dense-matmul peak
(``model``), each measured in the benchmark's own process, device and dtype."""

from __future__ import annotations

import torch

from .config import DTYPES, BenchConfig
from .measure import measure, measure_do_bench, timer_name, triton_do_bench
from .report import format_bytes


def bandwidth_timer(config: BenchConfig) -> str:
    """How the ``op-bw`` contenders are timed: ``triton.testing.do_bench`` on CUDA when triton is installed."""
    return "triton.testing.do_bench" if config.device == "cuda" and triton_do_bench() is not None \
        else timer_name(config.device)


def measure_copy_bandwidth(config: BenchConfig) -> dict:
    """The device's copy bandwidth: ``dst.copy_(src)`` of 1 GiB on CUDA (256 MiB on CPU, 16 MiB with
    ``tiny``), read + write bytes over the median time; do_bench on CUDA when triton is installed."""
    size = 16 * 2**20 if config.tiny else (2**30 if config.device == "cuda" else 256 * 2**20)
    src = torch.ones(size, dtype=torch.uint8, device=config.device)
    dst = torch.zeros_like(src)  # both written once: the pages are resident before timing

    def copy():
        dst.copy_(src)

    if config.device == "cuda" and triton_do_bench() is not None:
        timing, timer = measure_do_bench(copy, None), "triton.testing.do_bench"
    else:
        timing, timer = measure(copy, config.device, 2, 5), timer_name(config.device)
    del src, dst
    return {"copy_gbps": 2 * size / timing.median_s / 1e9, "copy_bytes": size,
            "copy_method": f"{'device-to-device' if config.device == 'cuda' else 'host'} copy_ of "
                           f"{format_bytes(size)}, read + write counted, median of {timer}"}


def measure_matmul_peak(config: BenchConfig) -> dict:
    """A dense-matmul ceiling: ``torch.mm`` of n×n by n×n in the benchmark dtype (n = 8192 on CUDA, 2048 on
    CPU, 256 with ``tiny``), 2·n³ FLOPs over the median time."""
    n = 256 if config.tiny else (8192 if config.device == "cuda" else 2048)
    dtype = DTYPES[config.dtype]
    generator = torch.Generator(device=config.device).manual_seed(config.seed)
    a, b = (torch.randn(n, n, generator=generator, device=config.device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)

    def matmul():
        torch.mm(a, b, out=out)

    if config.device == "cuda" and triton_do_bench() is not None:
        timing, timer = measure_do_bench(matmul, None), "triton.testing.do_bench"
    else:
        timing, timer = measure(matmul, config.device, 2, 5), timer_name(config.device)
    del a, b, out
    return {"matmul_tflops": 2 * n ** 3 / timing.median_s / 1e12, "matmul_size": n,
            "matmul_method": f"torch.mm {n}×{n}×{n} {config.dtype}, median of {timer}"}


__all__ = ["measure_copy_bandwidth", "measure_matmul_peak", "bandwidth_timer"]
