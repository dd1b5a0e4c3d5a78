"""``python -m numba_bn``: bench, info and startup, progress bar, errors, and the table script."""

import importlib
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from numba_bn import cli
from numba_bn.bench import cases, report
from numba_bn.bench.report import MIN_COPIES
from numba_bn.bench.implementations import OURS, ROOFLINE
from numba_bn.bench.progress import ProgressBar
from numba_bn.bench.startup import StartupTiming
from numba_bn.bench.timing import MIN_REPEATS, Timing

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
    # Each case is first warmed up at its real size, then timed; the bar says which.
    assert "compiling/warming up train_forward 8x4x6x6 channels_first" in captured.err
    assert "timing train_forward 8x4x6x6 channels_first" in captured.err
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
        # Ratios compare medians; each timing has its quartiles and at least the minimum of samples.
        assert row["statistic"] == "median"
        for peer, speedup in row["speedups"].items():
            assert speedup == pytest.approx(timings[peer]["median"] / timings[OURS]["median"])
            low, high = row["speedup_ranges"][peer]
            assert low <= high
        assert set(row["too_wide_to_call"]) == set(timings) - {OURS}
        least_traffic = MIN_COPIES[row["operation"]]
        assert row["roofline_fraction"] == pytest.approx(
            least_traffic * timings[ROOFLINE]["median"] / timings[OURS]["median"]
        )
        for t in timings.values():
            assert t["best"] <= t["q1"] <= t["median"] <= t["q3"]
            assert t["relative_iqr"] == pytest.approx((t["q3"] - t["q1"]) / t["median"])
            assert t["repeats"] >= MIN_REPEATS and t["calls_per_sample"] >= 1
        assert f"{row['operation']}" in captured.out


def test_quick_run_prints_the_table(capsys):
    assert cli.main(["--quick", "--no-progress"]) == 0
    captured = capsys.readouterr()
    # Nothing on stderr but the one-line notices of kernels compiling on a cold cache.
    assert all(line.startswith("numba_bn: compiling") for line in captured.err.splitlines()), captured.err
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


def test_bench_table_merges_runs_row_by_row_at_the_median_ratio(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "scripts" / "bench_table.py")
    bench_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_table)

    def run(ours, torch, stamp):
        benchmarks = [
            {"group": group, "extra_info": {"implementation": name}, "stats": {"min": seconds}, "run": stamp}
            for group, times in (("a", (ours, torch)), ("b", (ours, None)))
            for name, seconds in zip(("numba_bn", "torch"), times) if seconds is not None
        ]
        return {"benchmarks": benchmarks, "datetime": stamp}

    runs = [run(1.0, 1.0, "r1"), run(1.0, 3.0, "r2"), run(0.5, 1.0, "r3")]  # ratios 1, 3, 2; times 1, 1, 0.5
    merged = bench_table.merge_runs(runs)
    origin = {(bench["group"], bench["extra_info"]["implementation"]): bench["run"] for bench in merged["benchmarks"]}
    assert origin == {("a", "numba_bn"): "r3", ("a", "torch"): "r3", ("b", "numba_bn"): "r1"}
    assert merged["merged_from"] == ["r1", "r2", "r3"]
    assert bench_table.merge_runs(runs[:1]) is runs[0]


def test_time_host_measures_and_batches_short_calls():
    import time

    from numba_bn.bench.timing import time_host

    timing = time_host(lambda: time.sleep(0.002), budget=0.01)
    assert 0.002 <= timing.best <= timing.median and timing.repeats >= 3
    calls = []
    fast = time_host(lambda: calls.append(None), min_repeats=3, max_repeats=3, budget=0)
    # A warm-up call, then 3 samples, each an untimed call and a batch of calls lasting ~1 ms.
    assert fast.repeats == 3 and fast.calls_per_sample > 1
    assert len(calls) >= 1 + 3 * (1 + fast.calls_per_sample)
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


# ------------------------------------------------- a benchmark to be trusted


def _tiny_bench(*extra):
    """The smallest bench run: one tiny case, the shortest budget."""
    return cli.main(["--shapes", "16x8", "--operations", "eval_forward", "--budget", "0.005", "--no-progress",
                     *extra])


def test_top_level_help_lists_the_bench_options(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--shapes", "--budget", "--threads", "--json"):
        assert option in out
    assert "precompile" in out and "startup" in out  # the other commands are still listed


def test_bench_prints_spread_and_explains_percent_of_copy(capsys):
    assert _tiny_bench() == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("eval_forward"))
    # numba_bn's cell: the median time and its spread, e.g. "68.3 µs ±7%".
    assert re.search(r"\d (ns|µs|ms|s) ±\d+%", row)
    assert "interquartile range" in out
    footnote = next(line for line in out.splitlines() if line.startswith("% copy:"))
    assert "Above 100%" in footnote and "cache" in footnote and "large arrays" in footnote


def test_missing_pytorch_is_named_with_its_install_command(monkeypatch, tmp_path, capsys):
    implementations = importlib.import_module("numba_bn.bench.implementations")

    monkeypatch.setattr(implementations, "_importable", lambda module: module != "torch")
    path = tmp_path / "bench.json"
    assert _tiny_bench("--json", str(path)) == 0
    out = capsys.readouterr().out
    assert "vs torch" not in out and "vs numpy" in out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    assert "torch" in notes[0] and "not installed" in notes[0]
    assert "pip install torch==2.13.0" in notes[0]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in notes[0]
    data = json.loads(path.read_text())
    assert data["settings"]["left_out"] == [notes[0][len("note: "):]]
    assert "torch" not in data["results"][0]["timings"]


def test_pytorch_without_cuda_is_explained_for_the_gpu_benchmark():
    import dataclasses

    from numba_bn.bench.implementations import IMPLEMENTATIONS

    torch_cuda = dataclasses.replace(IMPLEMENTATIONS["cuda"]["torch"], requires=(), usable=lambda: False)
    reason = torch_cuda.unavailable_reason()
    assert "torch.cuda.is_available() is False" in reason and "pip install" in reason
    assert dataclasses.replace(torch_cuda, usable=lambda: True).unavailable_reason() is None


def test_samples_of_implementations_alternate_round_after_round():
    from itertools import groupby

    from numba_bn.bench.timing import time_interleaved

    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("ours", "peer", "copy")}
    timings = time_interleaved(runs, min_repeats=5, max_repeats=5, budget=0, min_sample_seconds=0)
    assert [timing.repeats for timing in timings.values()] == [5, 5, 5]
    assert all(timing.calls_per_sample == 1 for timing in timings.values())
    # Warm-up calls, then one sample (an untimed call and a timed one) of each per round:
    # the same order every round, never two samples of one implementation in a row.
    runs_of_calls = [(name, len(list(group))) for name, group in groupby(calls)]
    sampling = runs_of_calls[-15:]
    assert [name for name, _ in sampling] == ["ours", "peer", "copy"] * 5
    assert all(count == 2 for _, count in sampling)


def test_interleaved_samples_share_a_drift_of_the_machine(monkeypatch):
    """A machine that slows down 3x mid-run: both medians move, their ratio and its range do not."""
    from numba_bn.bench import timing as timing_module

    clock = {"calls": 0}

    def measure(run, calls):
        clock["calls"] += calls
        slowdown = 3.0 if clock["calls"] > 40 else 1.0
        return run() * calls * slowdown

    monkeypatch.setattr(timing_module, "_measure_host", measure)
    timings = timing_module.time_interleaved({OURS: lambda: 1e-3, "peer": lambda: 2e-3}, min_repeats=20,
                                             max_repeats=20, budget=0, min_sample_seconds=0)
    result = report.CaseResult(cases.Case("eval_forward", (16, 8)), "cpu", timings)
    assert timings[OURS].relative_iqr > 0.5  # the drift shows in each side's spread...
    assert result.speedup("peer") == pytest.approx(2.0)
    assert result.speedup_range("peer") == pytest.approx((2.0, 2.0))  # ...not in the paired ratios


def _result(ours_samples, peer_samples, copy_samples=None):
    timings = {OURS: Timing.from_samples(ours_samples), "torch": Timing.from_samples(peer_samples)}
    if copy_samples is not None:
        timings[ROOFLINE] = Timing.from_samples(copy_samples)
    return report.CaseResult(cases.Case("eval_forward", (16, 8)), "cpu", timings)


def test_comparisons_too_wide_to_call_are_marked_with_a_legend():
    steady = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0]
    clear = _result(steady, [2 * t for t in steady], steady)
    noisy = _result([1.0, 2.0, 0.5, 1.5, 0.7, 1.8, 1.0], [2 * t for t in steady], steady)
    even = _result(steady, [1.0, 0.98, 1.03, 0.97, 1.02, 1.0, 1.01], steady)  # tight, but which is faster?
    assert not clear.too_wide_to_call("torch") and not clear.too_wide_to_call(ROOFLINE)
    assert noisy.too_wide_to_call("torch") and noisy.too_wide_to_call(ROOFLINE)
    assert even.too_wide_to_call("torch") and not even.too_wide_to_call(ROOFLINE)

    table = report.format_text_table([clear]).splitlines()
    assert report.UNCERTAIN_MARK not in table[2] and "2.00x" in table[2]
    assert not any(line.startswith(report.UNCERTAIN_MARK) for line in report.table_notes([clear]))

    table = report.format_text_table([clear, noisy, even]).splitlines()
    assert "~" not in table[2] and "~2.00x" in table[3] and "~1.00x" in table[4]
    legend = [line for line in report.table_notes([clear, noisy, even]) if line.startswith("~:")]
    assert len(legend) == 1 and "rerun" in legend[0] and "--budget" in legend[0]


def test_timing_quartiles_and_json():
    timing = Timing.from_samples([4.0, 1.0, 3.0, 2.0, 5.0], calls_per_sample=7)
    assert (timing.best, timing.q1, timing.median, timing.q3) == (1.0, 2.0, 3.0, 4.0)
    assert timing.relative_iqr == pytest.approx(2 / 3)
    assert timing.as_dict() == {"best": 1.0, "median": 3.0, "repeats": 5, "q1": 2.0, "q3": 4.0,
                                "relative_iqr": pytest.approx(2 / 3), "calls_per_sample": 7}
    assert Timing(best=1.0, median=2.0, repeats=3).relative_iqr is None  # e.g. from an older file
