"""The window arithmetic of train/telemetry.py on a fake clock: step times, throughput, data wait, FLOP/s, MFU."""

import pytest

import train.telemetry as telemetry
from train.hardware import Peak, gpu_peak, resolve_peak


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_a_window_of_four_steps(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(telemetry.time, "perf_counter", clock)
    tel = telemetry.Telemetry("cpu", images_per_step=8, patches_per_step=8 * 19, flops_per_step=2e12,
                              executed_flops_per_step=5e12, peak=Peak(10.0, "test"))
    for dt in (0.010, 0.020, 0.030, 0.040):  # four steps of 10..40 ms
        clock.t += dt
        tel.step_done()
    rec = tel.close_window(wait_s=0.025)  # the loader made the loop wait 25 ms in this window
    assert rec["step_ms"] == pytest.approx(25.0) and rec["step_ms_p90"] == pytest.approx(37.0)
    assert rec["img_per_s"] == pytest.approx(32 / 0.1) and rec["patches_per_s"] == pytest.approx(32 * 19 / 0.1)
    assert rec["data_wait_pct"] == pytest.approx(25.0)
    assert rec["tflops"] == pytest.approx(4 * 2 / 0.1) and rec["tflops_executed"] == pytest.approx(4 * 5 / 0.1)
    assert rec["mfu_pct"] == pytest.approx(100 * 80 / 10)
    # the next window starts where this one ended (and from the loader's wait so far)
    clock.t += 0.5
    tel.step_done()
    rec2 = tel.close_window(wait_s=0.025)
    assert rec2["step_ms"] == pytest.approx(500.0) and rec2["data_wait_pct"] == 0.0
    assert [w["steps"] for w in tel.windows] == [4, 1]


def test_no_peak_means_no_mfu(monkeypatch):
    tel = telemetry.Telemetry("cpu", 1, 1, 1e9, 1e9, Peak(None, "unknown GPU"))
    tel.step_done()
    assert tel.close_window(0.0)["mfu_pct"] is None


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0), ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA L4", "bf16", 121.0), ("NVIDIA L40S", "bf16", 362.05),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2), ("NVIDIA RTX A6000", "bf16", 154.8),
])
def test_gpu_peaks_are_dense_not_sparse(name, precision, tflops):
    assert gpu_peak(name, precision).tflops == tflops


def test_fp32_peak_follows_the_tf32_setting(monkeypatch):
    monkeypatch.setattr(telemetry.torch, "get_float32_matmul_precision", lambda: "highest")
    assert gpu_peak("NVIDIA H100 80GB HBM3", "fp32").tflops == 67.0
    monkeypatch.setattr(telemetry.torch, "get_float32_matmul_precision", lambda: "high")
    assert gpu_peak("NVIDIA H100 80GB HBM3", "fp32").tflops == 494.7


def test_an_unknown_gpu_gets_no_peak_instead_of_another_cards():
    p = gpu_peak("Some Future GPU", "bf16")
    assert p.tflops is None and "--peak-tflops" in p.source


def test_the_user_peak_wins_and_the_cpu_peak_is_measured():
    assert resolve_peak("cpu", "fp32", 3.5) == Peak(3.5, "given by --peak-tflops")
    p = resolve_peak("cpu", "fp32")
    assert p.tflops > 0 and p.source.startswith("measured at start")
