"""The kernel demo (`python -m mmearth_kernels.demo`) runs and its correctness checks pass."""

from mmearth_kernels import demo


def test_demo_runs(capsys):
    demo.main(["--batch", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    assert out.count(" ok") == 8  # 4 stages x (dwconv, GRN)
    assert "19 of 49 patches kept (61.2 % masked)" in out
