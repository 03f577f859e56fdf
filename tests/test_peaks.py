"""The peak a utilisation figure is against (fastpix/peaks.py): the datasheet table chosen from a GPU's name and SM
count, the measured fallback for a GPU the table does not know, the CPU's measured roof, and `fastpix info`'s line.
No GPU is needed: device names and properties are given as a driver would report them."""

from types import SimpleNamespace

import pytest
import torch

from fastpix import peaks


@pytest.mark.parametrize(
    "name, sms, product, bf16",
    [
        ("NVIDIA H100 80GB HBM3", 132, "H100 SXM", 989.5),  # the SXM part's name does not say SXM
        ("NVIDIA H100 PCIe", 114, "H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 132, "H100 NVL", 835.5),
        ("NVIDIA H100", 114, "H100 PCIe", 756.5),  # a bare name: the SM count tells the form factor
        ("NVIDIA H200", 132, "H200 SXM", 989.5),
        ("NVIDIA H200 NVL", 132, "H200 NVL", 835.5),
        ("NVIDIA GH200 480GB", 132, "GH200", 989.5),  # not an H200
        ("NVIDIA A100-SXM4-80GB", 108, "A100 SXM", 312.0),
        ("NVIDIA A100-PCIE-40GB", 108, "A100 PCIe", 312.0),
        ("NVIDIA A100 80GB PCIe", 108, "A100 PCIe", 312.0),
        ("NVIDIA L4", 58, "L4", 121.0),
        ("NVIDIA L40", 142, "L40", 181.0),  # not an L4
        ("NVIDIA L40S", 142, "L40S", 366.5),  # not an L40
        ("NVIDIA GeForce RTX 4090", 128, "GeForce RTX 4090", 165.2),  # fp32 accumulate
        ("NVIDIA A10", 72, "A10", 125.0),
    ],
)
def test_the_datasheet_entry_is_chosen_from_the_name_and_sm_count(name, sms, product, bf16):
    entry = peaks.lookup(name, sms)
    assert entry.product == product and entry.tflops["bf16"] == bf16
    assert entry.tflops["fp16"] == bf16 and entry.tflops["tf32"] < bf16 and entry.tflops["fp32"] <= entry.tflops["tf32"]


@pytest.mark.parametrize(
    "name, sms", [("NVIDIA A10G", 80), ("NVIDIA H800", 132), ("Tesla T4", 40), ("NVIDIA GeForce RTX 4080", 76)]
)
def test_a_gpu_outside_the_table_is_unknown(name, sms):
    assert peaks.lookup(name, sms) is None


def test_a_partition_is_scaled_to_its_sms():
    """A MIG slice keeps the product's name and reports its own SMs: its peak is the per-SM share."""
    entry = peaks.lookup("NVIDIA H100 80GB HBM3 MIG 3g.40gb", 60)
    assert entry.product == "H100 SXM (60 of 132 SMs)" and entry.tflops["bf16"] == pytest.approx(989.5 * 60 / 132)


def fake_gpu(monkeypatch, name, sms):
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(name=name, multi_processor_count=sms)
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_a_known_gpu_is_measured_against_its_datasheet_peak(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA H100 PCIe", 114)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert peaks.gpu_peak(cuda, "bf16") == peaks.Peak(756.5e12, "bf16", "datasheet H100 PCIe, dense")
    assert peaks.peak_flops(cuda, "fp32").flops == 378e12  # fp32 convs run on TF32 tensor cores
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert peaks.peak_flops(cuda, "fp32") == peaks.Peak(51e12, "fp32", "datasheet H100 PCIe, dense")
    assert "756.5" in peaks.describe_device() and "H100 PCIe (114 SMs)" in peaks.describe_device()


def test_an_unknown_gpu_is_measured_against_a_matmul_timed_on_it(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA H800", 132)
    timed = []
    monkeypatch.setattr(peaks, "measured_gpu_flops", lambda precision, index: timed.append(precision) or 7e14)
    peak = peaks.gpu_peak(torch.device("cuda"), "bf16")
    assert peak.flops == 7e14 and timed == ["bf16"] and "measured" in peak.source and "H800" in peak.source
    assert "not in fastpix's datasheet table" in peaks.describe_device()


def test_a_cpu_has_no_mfu_in_training_and_a_measured_roof_in_benchmarks(monkeypatch):
    cpu = torch.device("cpu")
    assert peaks.peak_flops(cpu, "bf16") is None
    monkeypatch.setattr(peaks, "cpu_roof_flops", lambda dtype: {torch.bfloat16: 2e11, torch.float32: 1e11}[dtype])
    assert peaks.roof(cpu, "bf16").flops == 2e11 and peaks.roof(cpu, "fp32").flops == 1e11
    assert peaks.roof(cpu, "fp32").describe().startswith("100 GFLOP/s fp32 (measured")


def test_fastpix_info_names_the_peak_on_a_gpu(monkeypatch, capsys):
    from fastpix.cli import main

    fake_gpu(monkeypatch, "NVIDIA H200", 132)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "peak: H200 SXM (132 SMs), dense TFLOP/s bf16 989.5, fp16 989.5, tf32 494.5, fp32 67.0" in out


def test_a_training_log_names_the_peak_its_mfu_is_against():
    """The first logged record of a GPU run carries the MFU and the peak it is against; later ones the MFU."""
    from types import SimpleNamespace

    from fastpix.config import DataConfig, ModelConfig, TrainConfig
    from fastpix.train.progress import Progress

    records = []
    run = SimpleNamespace(log=records.append, dir="run")
    engine = SimpleNamespace(read_losses=lambda: {"G_GAN": 1.0}, report=lambda: {"cuda_graph": "off"})
    peak = peaks.Peak(1e12, "bf16", "datasheet H100 SXM, dense")
    start = SimpleNamespace(epoch=1, iteration=0, position=0)
    progress = Progress(
        run,
        (ModelConfig(), DataConfig(), TrainConfig()),
        SimpleNamespace(size=1, is_main=True),
        torch.device("cpu"),
        None,
        (1e10, peak),
        (10, 10),
        start,
        show_bar=False,
    )
    batch = {"A": torch.zeros(4, 3, 8, 8)}
    for iteration in (1, 2):
        progress.window_images = 4
        progress.log(engine, batch, SimpleNamespace(epoch=1, iteration=iteration, position=4 * iteration), 2e-4, 0.0)
    assert records[0]["mfu_peak"] == "1.0 TFLOP/s bf16 (datasheet H100 SXM, dense)" and "mfu_peak" not in records[1]
    assert all(r["mfu"] > 0 for r in records)
