"""The pieces of ``cuda-report`` that need no CUDA: occupancy arithmetic, ``ptxas -v`` parsing,
arguments, and the messages when the CUDA compilers are missing."""

import importlib.util

import pytest

from numba_bn import cli
from numba_bn.cuda import ptx_resources, report
from numba_bn.cuda.occupancy import ARCHITECTURES, arch_limits, occupancy, resident_blocks
from numba_bn.cuda.ptx_resources import KernelResources, parse_ptxas_verbose


@pytest.mark.parametrize(
    "arch, threads, registers, shared, expected",
    [
        # sm_90, 256 threads (8 warps): registers decide, in 256-register units per warp and 4-warp groups.
        ("sm_90", 256, 32, 0, 1.0),  # 64 warps by registers, 8 blocks by warps
        ("sm_90", 256, 40, 0, 0.75),  # 1280/warp: 51 warps -> 48 -> 6 blocks
        ("sm_90", 256, 64, 0, 0.5),  # 2048/warp: 32 warps -> 4 blocks
        ("sm_90", 256, 65, 0, 0.375),  # 2304/warp: 28 warps -> 3 blocks
        ("sm_90", 256, 72, 6144, 0.375),
        # Shared memory: 48 KiB + 1 KiB reserved per block, in 128-byte units, of 228 KiB: 4 blocks.
        ("sm_90", 256, 32, 48 * 1024, 0.5),
        ("sm_90", 32, 32, 0, 0.5),  # 32 blocks of one warp at most
        ("sm_80", 256, 64, 6144, 0.5),
        ("sm_80", 512, 32, 80 * 1024, 0.5),  # 164 KiB fits two blocks of 81 KiB
        ("sm_89", 256, 32, 0, 1.0),  # 48 warps: 6 blocks
        ("sm_89", 256, 64, 0, 32 / 48),
        ("sm_89", 32, 16, 0, 24 / 48),  # 24 blocks at most
        ("sm_75", 256, 32, 0, 1.0),  # 32 warps: 4 blocks
    ],
)
def test_occupancy_follows_the_occupancy_calculator(arch, threads, registers, shared, expected):
    assert occupancy(arch, threads, registers, shared) == pytest.approx(expected)


def test_a_block_that_cannot_launch_has_no_occupancy():
    assert resident_blocks("sm_90", 1024, 128, 0) == 0  # 128 x 1024 registers > 65,536
    assert resident_blocks("sm_90", 2048, 16, 0) == 0  # over 1,024 threads
    assert resident_blocks("sm_90", 256, 16, 228 * 1024) == 0  # over 227 KiB of shared memory
    assert occupancy("sm_90", 1024, 128, 0) == 0.0


def test_an_unknown_arch_names_the_supported_ones():
    supported = "sm_70, sm_75, sm_80, sm_86, sm_89, sm_90"
    with pytest.raises(ValueError, match=f"expected an arch among {supported}, got 'sm_42'"):
        arch_limits("sm_42")
    with pytest.raises(ValueError, match="sm_90"):
        report.cuda_report("sm_100")
    assert {"sm_80", "sm_89", "sm_90"} <= set(ARCHITECTURES)


PTXAS_OUTPUT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN8numba_bn4cuda7kernels14channel_stats_runs' for 'sm_90'
ptxas info    : Function properties for _ZN8numba_bn4cuda7kernels14channel_stats_runs
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 16 bytes cumulative stack size, 24 bytes smem, 608 bytes cmem[0]
ptxas info    : Function properties for _ZN8numba_bn4cuda7kernels6_merge
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
"""


def test_ptxas_verbose_output_is_read_for_the_kernel_and_what_it_calls():
    assert parse_ptxas_verbose(PTXAS_OUTPUT) == KernelResources(64, 12, 16, 24)
    without_shared = "Used 30 registers, 380 bytes cmem[0]\n    0 bytes spill stores, 0 bytes spill loads"
    assert parse_ptxas_verbose(without_shared) == KernelResources(30, 0, 0, 0)
    with pytest.raises(ValueError, match="Used N registers"):
        parse_ptxas_verbose("ptxas fatal   : Unresolved extern function")


def test_compute_capability_of_an_arch():
    assert ptx_resources.compute_capability("sm_90") == (9, 0)
    assert ptx_resources.compute_capability("sm_89") == (8, 9)


def test_missing_ptxas_is_named_with_its_install_command(monkeypatch):
    monkeypatch.setattr(ptx_resources, "find_ptxas", lambda: None)
    monkeypatch.setattr(importlib.util, "find_spec", _found_numba_cuda(importlib.util.find_spec))
    with pytest.raises(report.CudaToolchainError, match=r"needs ptxas.*pip install 'numba_bn\[cuda\]'"):
        report.cuda_report("sm_90")


def test_missing_numba_cuda_is_named_with_its_install_command(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else find_spec(name, *a)
    )
    with pytest.raises(report.CudaToolchainError, match=r"needs numba-cuda.*pip install 'numba_bn\[cuda\]'"):
        report.cuda_report("sm_90")


def test_the_command_exits_1_with_the_message_when_the_compilers_are_missing(monkeypatch, capsys):
    monkeypatch.setattr(ptx_resources, "find_ptxas", lambda: None)
    monkeypatch.setattr(importlib.util, "find_spec", _found_numba_cuda(importlib.util.find_spec))
    assert cli.main(["cuda-report"]) == 1
    captured = capsys.readouterr()
    assert "ptxas" in captured.err and "nvidia-cuda-nvcc-cu12" in captured.err and captured.out == ""


def _found_numba_cuda(find_spec):
    """``find_spec`` that finds numba-cuda even where it is not installed (the check after it is tested)."""
    return lambda name, *a: find_spec("numpy") if name == "numba_cuda" else find_spec(name, *a)


@pytest.mark.parametrize(
    "argv", [["cuda-report", "--arch", "sm_42"], ["cuda-report", "--threads", "48"], ["cuda-report", "--threads", "x"],
             ["cuda-report", "--threads", "1024"], ["cuda-report", "--json", "/no/such/folder/report.json"]],
)
def test_bad_report_arguments_give_usage_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err
    if "--arch" in argv:
        assert "sm_70, sm_75, sm_80, sm_86, sm_89, sm_90" in err
