"""``python -m numba_bn``: bench, info and startup, progress bar, errors, and the table script."""

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from numba_bn import cli
from numba_bn.bench import cases, report
from numba_bn.bench.report import MIN_COPIES
from numba_bn.bench.implementations import OURS, ROOFLINE, cuda_available
from numba_bn.bench.progress import ProgressBar
from numba_bn.bench.startup import StartupTiming

ROOT = Path(__file__).resolve().parent.parent
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(autouse=True)
def restore_thread_counts():
    """``bench --threads`` sets Numba's and PyTorch's thread counts: put them back for later tests."""
    import numba

    numba_threads = numba.get_num_threads()
    try:
        import torch
    except ImportError:
        torch = None
    torch_threads = torch.get_num_threads() if torch is not None else None
    yield
    numba.set_num_threads(numba_threads)
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)


def test_bench_writes_table_and_consistent_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    status = cli.main(["--shapes", "8x4x6x6,16x8", "--budget", "0.01", "--json", str(path), "--threads", "1"])
    assert status == 0
    captured = capsys.readouterr()
    assert "[" in captured.err and "done" in captured.err  # the progress bar, on stderr
    assert "vs numpy" in captured.out and "% copy" in captured.out
    data = json.loads(path.read_text())
    assert data["settings"]["threads"] == data["machine"]["threads"] == 1
    rows = data["results"]
    # 8x4x6x6 in both layouts and 16x8 in one, three operations each.
    assert len(rows) == 9
    assert {(r["operation"], tuple(r["shape"]), r["layout"]) for r in rows} == {
        (c.operation, c.shape, c.layout) for c in cases.build_cases([(8, 4, 6, 6), (16, 8)])
    }
    for row in rows:
        timings = row["timings"]
        assert {OURS, "numpy", ROOFLINE} <= set(timings)
        assert ("torch" in timings) == (importlib.util.find_spec("torch") is not None)
        for peer, speedup in row["speedups"].items():
            assert speedup == pytest.approx(timings[peer]["best"] / timings[OURS]["best"])
        least_traffic = MIN_COPIES[row["operation"]]
        assert row["roofline_fraction"] == pytest.approx(
            least_traffic * timings[ROOFLINE]["best"] / timings[OURS]["best"]
        )
        assert all(t["best"] <= t["median"] for t in timings.values())
        assert f"{row['operation']}" in captured.out


def test_quick_run_prints_the_table(capsys):
    assert cli.main(["--quick", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    table = captured.out
    for shape in cases.QUICK_SHAPES:
        assert cases.format_shape(shape) in table
    assert table.count("train_backward") == 4  # three shapes, the 4-D one in both layouts


def test_info_names_versions_threads_cuda_and_cache(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    import numba

    for needle in (f"numba: {numba.__version__}", "threading layer:", "threads:", "cuda:", "kernel cache:"):
        assert needle in out


def test_startup_command_reports_both_caches(monkeypatch, capsys):
    from numba_bn.bench import startup

    timings = (StartupTiming(0.3, 5.0), StartupTiming(0.25, 0.4))
    monkeypatch.setattr(startup, "measure_cold_and_warm", lambda: timings)
    assert cli.main(["startup"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cold cache") and "5.30 s" in lines[0]
    assert lines[1].startswith("warm cache") and "0.65 s" in lines[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["--shapes", "32x"],
        ["--shapes", "0x3"],
        ["--shapes", "1x3"],
        ["--shapes", "2x3x4x5x6x7"],
        ["--shapes", ","],
        ["--dtype", "int8"],
        ["--threads", "0"],
        ["--threads", "many"],
        ["--threads", str(cli.max_threads() + 1)],
        ["--device", "tpu"],
        ["--layout", "nhwc"],
        ["--operations", "train_forward,sideways"],
        ["--budget", "-1"],
        ["--json", "/no/such/folder/out.json"],
        ["--plot", "chart.svg"],
        ["--layout", "channels_last", "--shapes", "64x128"],
        ["frobnicate"],
        ["bench", "--no-such-option"],
    ],
)
def test_bad_arguments_give_usage_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err


def test_module_entry_point_has_no_traceback_on_bad_input():
    completed = subprocess.run(
        [sys.executable, "-m", "numba_bn", "--shapes", "64xx128"], capture_output=True, text=True,
        cwd=ROOT, check=False,
    )
    assert completed.returncode == 2
    assert "usage:" in completed.stderr and "Traceback" not in completed.stderr


@pytest.mark.skipif(cuda_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_explains(capsys):
    assert cli.main(["--device", "cuda", "--quick"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(HAS_MATPLOTLIB, reason="matplotlib is installed")
def test_plot_without_matplotlib_explains(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["--shapes", "16x8", "--plot", str(tmp_path / "chart.png")])
    assert raised.value.code == 2
    assert "matplotlib" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_plot_is_saved(tmp_path):
    path = tmp_path / "chart.png"
    assert cli.main(["--shapes", "16x8", "--budget", "0.01", "--no-progress", "--plot", str(path)]) == 0
    assert path.read_bytes().startswith(b"\x89PNG")


def test_progress_bar_counts_to_total_one_line_per_step():
    stream = io.StringIO()
    bar = ProgressBar(3, stream=stream, width=6)
    for step in ("a", "b", "c"):
        bar.update(step)
        bar.update(step, advance=1)
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == ["a", "b", "c", "done"]
    assert lines[0].startswith("[------] 0/3") and lines[-1].startswith("[######] 3/3")


@pytest.mark.parametrize("text, shape", [("32x64x56x56", (32, 64, 56, 56)), (" 64X128 ", (64, 128))])
def test_parse_shape(text, shape):
    assert cases.parse_shape(text) == shape


def test_bench_table_script_renders_a_real_benchmark_run(tmp_path):
    """A real (tiny) pytest-benchmark run through scripts/bench_table.py, README markers included."""
    path = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "benchmarks" / "test_bench_cpu.py"),
         "-k", "64x128 and (eval_forward or train_backward)", "--benchmark-enable", f"--benchmark-json={path}",
         "--benchmark-max-time=0.002", "--benchmark-min-rounds=2", "--benchmark-warmup=off"],
        cwd=ROOT, check=True, capture_output=True,
    )
    data = json.loads(path.read_text())
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "scripts" / "bench_table.py")
    bench_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_table)
    block = bench_table.render(data)
    results = report.results_from_pytest_benchmark(data)
    assert [r.case.operation for r in results] == ["eval_forward", "train_backward"]
    for result in results:
        numpy_ratio = result.timings["numpy"].best / result.timings[OURS].best
        assert f"| {result.case.operation} | 64x128 | ch-first |" in block
        assert report.format_ratio(numpy_ratio) in block
    assert data["machine_info"]["numba_bn"]["cpu"] in block and "Command: `python -m pytest" in block

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{bench_table.START}\nold table\n{bench_table.END}\nafter\n")
    assert bench_table.main([str(path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and block in text and text.endswith("after\n")


def test_time_host_measures_and_batches_short_calls():
    import time

    from numba_bn.bench.timing import time_host

    timing = time_host(lambda: time.sleep(0.002), budget=0.01)
    assert 0.002 <= timing.best <= timing.median and timing.repeats >= 3
    calls = []
    fast = time_host(lambda: calls.append(None), min_repeats=3, max_repeats=3, budget=0)
    # One warm-up call, then 3 samples of one or more calls each (short calls are batched).
    assert fast.repeats == 3 and len(calls) >= 4 and (len(calls) - 1) % 3 == 0
    assert fast.best <= fast.median < 1e-3


def test_set_threads_rejects_out_of_range_and_changes_nothing():
    import numba

    from numba_bn.bench.timing import max_threads, set_threads

    before = numba.get_num_threads()
    for bad in (0, max_threads() + 1):
        with pytest.raises(ValueError, match=f"got {bad}"):
            set_threads(bad)
        assert numba.get_num_threads() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"operation": "sideways_forward", "shape": (4, 3)}, "operation"),
        ({"operation": "train_forward", "shape": (4, 3), "layout": "nhwc"}, "layout"),
        ({"operation": "train_forward", "shape": (4, 3), "dtype": "int8"}, "dtype"),
        ({"operation": "train_forward", "shape": (4, 3), "layout": "channels_last"}, "3 or more"),
        ({"operation": "train_forward", "shape": (1, 3)}, "at least 2 values per channel"),
    ],
)
def test_case_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cases.Case(**kwargs)


def test_channels_last_case_stores_channels_last():
    case = cases.Case("eval_forward", (2, 3, 4, 5), cases.CHANNELS_LAST)
    data = cases.make_case_data(case)
    assert data.x.shape == case.storage_shape == (2, 4, 5, 3) and case.channel_axis == -1
    assert data.weight.shape == (3,) and case.nbytes == data.x.nbytes


def test_cuda_simulator_is_refused_with_a_message():
    import os

    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    completed = subprocess.run([sys.executable, "-m", "numba_bn", "--device", "cuda", "--quick"], cwd=ROOT,
                               env=env, capture_output=True, text=True, check=False)
    assert completed.returncode == 1
    assert "simulator" in completed.stderr and "Traceback" not in completed.stderr


def test_host_timings_are_interleaved():
    from itertools import groupby

    from numba_bn.bench.timing import time_host_interleaved

    calls = []
    timings = time_host_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    min_repeats=3, max_repeats=3, budget=0)
    assert [timing.repeats for timing in timings.values()] == [3, 3]
    # Warm-up a, warm-up b, then one sample (of one or more calls) of each in turn.
    assert [name for name, _ in groupby(calls)] == ["a", "b"] * 4
