"""The peak FLOP/s a utilisation figure (MFU, "% of roof") is measured against.

On a GPU: the dense tensor-core (bf16, fp16, tf32) and CUDA-core (fp32) peaks of the vendor's datasheet for the
product, chosen from `torch.cuda.get_device_name()` and the SM count (which tells the H100 SXM from the PCIe card
when the name does not, and scales a partition such as a MIG slice); for a GPU not in the table, the rate of a
large matmul measured on it now. fp32 convs run on TF32 tensor cores when torch.backends.cudnn.allow_tf32 is on
(the default), so an fp32 run is measured against the tf32 peak then. On a CPU: the roof measured now
(`cpu_roof_flops`); training logs report no MFU there.

Imports only torch, so every layer may use it.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import torch

PRECISIONS = ("bf16", "fp16", "tf32", "fp32")


@dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOP/s of one product per precision (`tflops`), at its full `sms` streaming multiprocessors.
    family: the model number as device names spell it (a whole word: 'L4' is not 'L40'); variant: the form factor
    as names spell it ('' for the product a bare name means)."""

    product: str
    family: str
    variant: str
    sms: int
    tflops: dict

    def scaled(self, sms: int) -> DevicePeak:
        """This product's peaks on a part of it with `sms` SMs (a MIG slice): per-SM throughput times SMs."""
        if sms >= self.sms:
            return self
        share = sms / self.sms
        return DevicePeak(
            f"{self.product} ({sms} of {self.sms} SMs)",
            self.family,
            self.variant,
            sms,
            {k: v * share for k, v in self.tflops.items()},
        )


def _peak(product, family, variant, sms, bf16, fp16, tf32, fp32):
    return DevicePeak(product, family, variant, sms, {"bf16": bf16, "fp16": fp16, "tf32": tf32, "fp32": fp32})


# Dense figures: the datasheets print tensor-core rates with 2:4 sparsity, twice the dense rate; these are half of
# them. GeForce cards accumulate fp16/bf16 in fp32 at half their fp16-accumulate rate, as fastpix's kernels and
# cuDNN's autocast convs do: those rows hold the fp32-accumulate figures. The first row of a family is what its
# bare name means (an "NVIDIA H100 80GB HBM3" is the SXM part).
DATASHEET = (
    # NVIDIA H100 Tensor Core GPU datasheet: SXM | PCIe | NVL
    _peak("H100 SXM", "H100", "SXM", 132, 989.5, 989.5, 494.5, 67.0),
    _peak("H100 PCIe", "H100", "PCIE", 114, 756.5, 756.5, 378.0, 51.0),
    _peak("H100 NVL", "H100", "NVL", 132, 835.5, 835.5, 417.5, 60.0),
    # NVIDIA H200 Tensor Core GPU datasheet: SXM | NVL; GH200 Grace Hopper Superchip datasheet
    _peak("H200 SXM", "H200", "SXM", 132, 989.5, 989.5, 494.5, 67.0),
    _peak("H200 NVL", "H200", "NVL", 132, 835.5, 835.5, 417.5, 60.0),
    _peak("GH200", "GH200", "", 132, 989.5, 989.5, 494.5, 67.0),
    # NVIDIA A100 Tensor Core GPU datasheet: the SXM and PCIe parts share the peak figures
    _peak("A100 SXM", "A100", "SXM", 108, 312.0, 312.0, 156.0, 19.5),
    _peak("A100 PCIe", "A100", "PCIE", 108, 312.0, 312.0, 156.0, 19.5),
    # NVIDIA A10, L4, L40, L40S datasheets
    _peak("A10", "A10", "", 72, 125.0, 125.0, 62.5, 31.2),
    _peak("L4", "L4", "", 58, 121.0, 121.0, 60.0, 30.3),
    _peak("L40", "L40", "", 142, 181.0, 181.0, 90.5, 90.5),
    _peak("L40S", "L40S", "", 142, 366.5, 366.5, 183.0, 91.6),
    # NVIDIA Ada and Ampere GA102 architecture whitepapers (GeForce: fp32 accumulate)
    _peak("GeForce RTX 4090", "RTX 4090", "", 128, 165.2, 165.2, 82.6, 82.6),
    _peak("GeForce RTX 3090", "RTX 3090", "", 82, 71.0, 71.0, 35.6, 35.6),
)


def lookup(name: str, sms: int) -> DevicePeak | None:
    """The datasheet entry for a GPU named `name` with `sms` SMs, scaled down to a partition's SMs; None when the
    table does not know the product."""
    upper = name.upper()
    family = [p for p in DATASHEET if re.search(rf"(?<![A-Z0-9]){re.escape(p.family)}(?![A-Z0-9])", upper)]
    if not family:
        return None
    named = [p for p in family if p.variant and p.variant in upper]
    same_sms = [p for p in family if p.sms == sms]
    entry = (named or same_sms or family)[0]
    return entry.scaled(sms)


def device_peak(device=None) -> DevicePeak | None:
    """The datasheet entry of a CUDA device (None: the current one), or None when it is not in the table."""
    props = torch.cuda.get_device_properties(device)
    return lookup(props.name, props.multi_processor_count)


def tensor_precision(precision: str) -> str:
    """The peak a run in `precision` ('bf16', 'fp16', 'fp32') reaches for: fp32 convs use TF32 tensor cores
    when cuDNN allows it."""
    if precision == "fp32" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return precision


@functools.cache
def measured_gpu_flops(precision: str, index: int) -> float:
    """The rate of an 8192³ matmul in `precision` on CUDA device `index` (median of 10), measured once per
    process: the peak of a GPU the datasheet table does not know."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        with torch.cuda.device(index):
            a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
            b = torch.randn_like(a)
            for _ in range(3):
                a @ b
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(10):
                start.record()
                a @ b
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * 8192**3 / sorted(times)[len(times) // 2]


@dataclass(frozen=True)
class Peak:
    """The peak a figure is against: FLOP/s, the precision it is for, and where it comes from ('datasheet <product>',
    'measured <how>')."""

    flops: float
    precision: str
    source: str

    def describe(self) -> str:
        rate = f"{self.flops / 1e12:.1f} TFLOP/s" if self.flops >= 1e12 else f"{self.flops / 1e9:.0f} GFLOP/s"
        return f"{rate} {self.precision} ({self.source})"


def gpu_peak(device: torch.device, precision: str) -> Peak:
    """A CUDA device's peak for a run in `precision`: the datasheet's, else a matmul measured now."""
    kind = tensor_precision(precision)
    entry = device_peak(device)
    if entry is not None:
        return Peak(entry.tflops[kind] * 1e12, kind, f"datasheet {entry.product}, dense")
    index = device.index if device.index is not None else torch.cuda.current_device()
    return Peak(
        measured_gpu_flops(kind, index),
        kind,
        f"measured: 8192³ matmul on {torch.cuda.get_device_name(index)}, not in fastpix's table",
    )


def peak_flops(device: torch.device, precision: str) -> Peak | None:
    """The peak a training run's MFU is against: on a GPU `gpu_peak`; None on a CPU (no MFU there)."""
    return gpu_peak(device, precision) if device.type == "cuda" else None


@functools.cache
def cpu_roof_flops(dtype: torch.dtype, reps: int = 5) -> float:
    """This CPU's reachable FLOP/s in dtype, measured once per process: the faster of a 2048³ matmul and a 1×1 conv
    that oneDNN runs as one large GEMM (8×1024×32×32 by 1024×1024, channels-last), best of reps. Both, because
    torch's fp32 matmul goes to MKL, which on AMD CPUs reaches about half of what oneDNN's fp32 kernels do, and the
    convs fastpix runs are oneDNN's."""
    import torch.nn.functional as F

    def best(fn) -> float:
        fn()
        fastest = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            fastest = min(fastest, time.perf_counter() - start)
        return fastest

    with torch.inference_mode():
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        matmul = 2 * 2048**3 / best(lambda: a @ b)
        x = torch.randn(8, 1024, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(1024, 1024, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv = 2 * 8 * 32 * 32 * 1024 * 1024 / best(lambda: F.conv2d(x, w))
    return max(matmul, conv)


def roof(device: torch.device, precision: str) -> Peak:
    """The peak a benchmark row's '% of roof' is against: on a GPU `gpu_peak`, on a CPU the roof measured now."""
    if device.type == "cuda":
        return gpu_peak(device, precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return Peak(cpu_roof_flops(dtype), precision, "measured: 2048³ matmul or GEMM-shaped 1×1 conv on this CPU")


def describe_device(device=None) -> str:
    """One line for `fastpix info`: the product the datasheet table chose for this GPU and its dense peaks."""
    props = torch.cuda.get_device_properties(device)
    entry = lookup(props.name, props.multi_processor_count)
    if entry is None:
        return (
            f"peak: {props.name} ({props.multi_processor_count} SMs) is not in fastpix's datasheet table; MFU "
            "is measured against an 8192³ matmul timed at first use"
        )
    figures = ", ".join(f"{k} {entry.tflops[k]:.1f}" for k in PRECISIONS)
    return (
        f"peak: {entry.product} ({props.multi_processor_count} SMs), dense TFLOP/s {figures} (datasheet; fp32 "
        f"runs count against tf32 while cuDNN allows TF32: {torch.backends.cudnn.allow_tf32})"
    )
