"""benchmarks/kernel_resources (compile truth without a GPU): the ptxas parser on captured output, the occupancy
arithmetic on hand-checked cases, kernel discovery against an AST scan of the sources, the --check rules, and one
real compile for sm_90a."""

import ast
import glob
import os

import pytest

pytest.importorskip("triton", reason="the compile check needs triton (torch's CUDA wheels bring it)")

from benchmarks.kernel_resources import compilers, discover, record, scenarios  # noqa: E402
from benchmarks.kernel_resources.ptxas import ARCH_LIMITS, occupancy, parse_ptxas  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# As Triton's ptxas run prints it (TRITON_DUMP_PTXAS_LOG=1), for a kernel that spills.
TRITON_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_tiled_wgrad_kernel' for 'sm_90a'
ptxas info    : Function properties for _tiled_wgrad_kernel
    632 bytes stack frame, 768 bytes spill stores, 1140 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 632 bytes cumulative stack size, 512 bytes smem
ptxas info    : Compile time = 66130.406 ms
"""

# As nvcc -Xptxas -v prints it: two entries, a called device function's properties block between them.
NVCC_LOG = """ptxas info    : 11 bytes gmem
ptxas info    : Compiling entry function '_ZN15mmearth_kernels4cuda12_GLOBAL__N_19grn_statsIfEEvPKT_' for 'sm_90a'
ptxas info    : Function properties for _ZN15mmearth_kernels4cuda12_GLOBAL__N_19grn_statsIfEEvPKT_
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
ptxas info    : Function properties for _ZN3c104cuda6helperEv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function '_ZN15mmearth_kernels4cuda12_GLOBAL__N_16gatherIdEEvv' for 'sm_90a'
ptxas info    : Function properties for _ZN15mmearth_kernels4cuda12_GLOBAL__N_16gatherIdEEvv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 96 registers, 392 bytes cmem[0]
"""


def test_parser_reads_a_triton_log():
    (name, e), = parse_ptxas(TRITON_LOG).items()
    assert name == "_tiled_wgrad_kernel"
    assert (e.registers, e.spill_stores, e.spill_loads, e.stack_bytes, e.smem_bytes, e.barriers) == (
        255, 768, 1140, 632, 512, 1)


def test_parser_reads_every_entry_of_an_nvcc_log_and_skips_device_functions():
    entries = parse_ptxas(NVCC_LOG)
    assert list(entries) == ["_ZN15mmearth_kernels4cuda12_GLOBAL__N_19grn_statsIfEEvPKT_",
                             "_ZN15mmearth_kernels4cuda12_GLOBAL__N_16gatherIdEEvv"]
    stats, gather = entries.values()
    assert (stats.registers, stats.smem_bytes, stats.barriers, stats.spill_stores) == (32, 1024, 1, 0)
    # the helper's spills belong to no entry: they are reported in the entries that inline it, if any
    assert (gather.registers, gather.stack_bytes, gather.smem_bytes, gather.spill_loads) == (96, 16, 0, 0)


@pytest.mark.parametrize("regs, threads, smem, arch, blocks, warps, why", [
    (32, 256, 0, "sm_90a", 8, 64, "threads"),          # 8 blocks of 8 warps: the SM's 64 warps (registers tie)
    (16, 1024, 0, "sm_90a", 2, 64, "threads"),         # 2 x 1024 threads
    (240, 128, 0, "sm_90a", 2, 8, "registers"),        # 7680 registers per warp: 8 warps fit in 65,536
    (64, 128, 0, "sm_90a", 8, 32, "registers"),        # 2048 registers per warp: 32 warps, 8 blocks of 4
    (32, 128, 100 * 1024, "sm_90a", 2, 8, "shared memory"),  # (100 KB + 1 KB reserved) x 2 <= 228 KB
    (32, 128, 100 * 1024, "sm_80", 1, 4, "shared memory"),   # ... but only once in 164 KB
    (255, 512, 0, "sm_90a", 0, 0, "cannot launch: 255 registers x 512 threads"),
    (32, 128, 200 * 1024, "sm_80", 0, 0, "cannot launch: 204800 bytes of shared memory per block"),
])
def test_occupancy_arithmetic(regs, threads, smem, arch, blocks, warps, why):
    occ = occupancy(regs, threads, smem, arch)
    assert (occ.blocks_per_sm, occ.warps_per_sm) == (blocks, warps)
    assert occ.limited_by == why
    assert occ.occupancy == warps / (ARCH_LIMITS[arch]["max_threads_per_sm"] // 32)


def _ast_scan():
    """{module.name: autotuned?} of every function decorated with triton.jit in the package's sources."""
    out = {}
    for path in glob.glob(os.path.join(ROOT, "mmearth_kernels", "triton_kernels", "*.py")):
        module = os.path.basename(path)[:-3]
        for node in ast.walk(ast.parse(open(path).read())):
            if not isinstance(node, ast.FunctionDef):
                continue
            decos = {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list}
            if "triton.jit" in decos:
                out[f"{module}.{node.name}"] = "triton.autotune" in decos
    return out


def test_discovery_finds_every_triton_function_of_the_package():
    scanned = _ast_scan()
    assert scanned, "the AST scan found no @triton.jit function: is the package empty?"
    assert set(discover.defined_jit_objects()) == set(scanned)
    kernels = discover.kernels()
    assert {n for n, tuned in scanned.items() if tuned} <= set(kernels), "an autotuned function is never a helper"
    # a helper is called by a kernel: it is compiled into it, so every Triton function is covered
    assert set(scanned) - set(kernels), "the device helpers (merge_stats, _neighbour, ...) were not told apart"


def test_every_kernel_is_launched_by_the_scenarios():
    launches = scenarios.launches(models=("atto",), dtypes=("fp32",), batch=2)
    assert {launch.kernel for launch in launches} == set(discover.kernels())
    # an autotuned kernel is captured once per config
    tuned = [launch for launch in launches if launch.config is not None]
    assert tuned and all("num_warps=" in launch.config for launch in tuned)


def _row(**over):
    row = dict(kind="triton", kernel="m.k", config="BLOCK_C=64, num_warps=4", dtype="fp32", arch="sm_90a",
               status="ok", registers=128, spill_stores=0, spill_loads=0, compile_s=1.0, blocks_per_sm=3,
               limited_by="registers")
    return {**row, **over}


def test_check_fails_on_a_spill_a_slow_compile_a_failed_compile_and_an_impossible_launch():
    rec = {"limits": dict(record.LIMITS), "results": [_row()]}
    assert record.violations(rec) == []
    rec["results"] = [_row(spill_stores=4), _row(compile_s=record.LIMITS["triton_compile_s"] + 1),
                      _row(kind="cuda", compile_s=record.LIMITS["triton_compile_s"] + 1),  # within the .cu limit
                      _row(status="timeout", error="did not finish"),
                      _row(blocks_per_sm=0, limited_by="cannot launch: 300 registers")]
    bad = record.violations(rec)
    assert len(bad) == 4, bad
    assert "spills (4 bytes stored" in bad[0] and "over the 60 s limit" in bad[1]
    assert "timeout" in bad[2] and "cannot launch" in bad[3]


def test_nvcc_flags_are_setup_pys_and_kernel_names_are_readable():
    flags = compilers.setup_nvcc_flags()
    assert "-O3" in flags and "-G" not in flags  # the release branch, not the debug one
    assert compilers.short_name("void mmearth_kernels::cuda::(anonymous namespace)::grn_sums_kernel"
                                "<c10::BFloat16, float>(c10::BFloat16 const*, long)") == (
        "grn_sums_kernel<c10::BFloat16, float>", "bf16")
    assert compilers.block_threads() == 256


def test_one_real_compile_for_sm_90a(tmp_path, monkeypatch):
    """The smallest kernel, compiled as a launch on an H100 would compile it: the numbers come back from ptxas."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    launches = [launch for launch in scenarios.launches(models=("atto",), dtypes=("fp32",), batch=2)
                if launch.kernel == "grn._fwd_stats_kernel"]
    job = scenarios.jobs(launches[:1], ("sm_90a",))[0]
    (row,) = compilers.compile_triton(job)
    assert 0 < row["registers"] <= 255 and row["spill_stores"] == row["spill_loads"] == 0
    assert row["threads"] == 32 * job.options["num_warps"] and row["compile_s"] > 0
    assert record.with_occupancy(row, "sm_90a")["blocks_per_sm"] >= 1


@pytest.mark.parametrize("argv, says", [
    (["--dtypes", "fp8"], "--dtypes: expected a comma-separated subset of fp32,bf16,fp16,fp64"),
    (["--models", ""], "--models: expected"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--timeout-s", "-1"], "--timeout-s must be > 0"),
    (["--arch", "sm_70"], "invalid choice: 'sm_70'"),
])
def test_bad_options_exit_2_with_one_line(argv, says, capsys):
    from benchmarks.kernel_resources.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_out_that_is_a_folder_is_refused(tmp_path, capsys):
    from benchmarks.kernel_resources.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path)])
    assert e.value.code == 2 and "is a folder" in capsys.readouterr().err
