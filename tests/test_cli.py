"""``python -m numba_bn``: bench, info and startup, progress bar, errors, and the table script."""

import importlib
import importlib.util
import io
import json
import os
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
HAS_JAX = importlib.util.find_spec("jax") is not None


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
    assert "vs numpy" in captured.out and "vs best peer" in captured.out and "% copy" in captured.out
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
        assert ("jax" in timings) == HAS_JAX
        # Ratios compare medians; each timing has its quartiles and at least the minimum of samples.
        assert row["statistic"] == "median"
        for peer, speedup in row["speedups"].items():
            assert speedup == pytest.approx(timings[peer]["median"] / timings[OURS]["median"])
            low, high = row["speedup_ranges"][peer]
            assert low <= high
        assert set(row["too_wide_to_call"]) == set(timings) - {OURS}
        # The best peer is the fastest of those timed on the row, never the copy.
        peer_medians = {name: t["median"] for name, t in timings.items() if name not in (OURS, ROOFLINE)}
        assert row["best_peer"] == min(peer_medians, key=peer_medians.get)
        assert row["best_peer_speedup"] == pytest.approx(min(peer_medians.values()) / timings[OURS]["median"])
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

    for needle in (f"numba: {numba.__version__}", "jax:", "threading layer:", "threads:", "cuda:", "kernel cache:"):
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
        ["--peers", "tensorflow"],
        ["--peers", ""],
        ["--device", "cuda", "--peers", "jax"],
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
    # pytest-benchmark writes its JSON only outside a pytest-xdist worker: run as a plain pytest.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_XDIST")}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "benchmarks" / "test_bench_cpu.py"),
         "-k", "64x128 and (eval_forward or train_backward)", "--benchmark-enable", f"--benchmark-json={path}",
         "--benchmark-max-time=0.002", "--benchmark-min-rounds=2", "--benchmark-warmup=off"],
        cwd=ROOT, env=env, check=True, capture_output=True,
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
    for option in ("--quick", "--shapes", "--budget", "--threads", "--json", "--peers"):
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

    importable = implementations._importable
    monkeypatch.setattr(implementations, "_importable", lambda module: module != "torch" and importable(module))
    path = tmp_path / "bench.json"
    # Only the peers named: a missing peer that was not asked for adds no note.
    assert _tiny_bench("--json", str(path), "--peers", "torch,numpy") == 0
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


# ------------------------------------------------------------ the best peer


def _case_result(operation, **medians):
    """A row whose implementations took ``medians`` seconds in every sample."""
    timings = {name: Timing.from_samples([seconds] * 5) for name, seconds in medians.items()}
    return report.CaseResult(cases.Case(operation, (16, 8)), "cpu", timings)


def test_best_peer_is_the_fastest_peer_of_each_row_never_the_copy():
    rows = [
        # The copy is fastest of all, torch second: the best peer is JAX, the fastest *peer*.
        _case_result("train_forward", **{OURS: 1.0, "torch": 3.0, "jax": 2.0, "numpy": 5.0, ROOFLINE: 0.5}),
        # Here NumPy is: the choice is made per row.
        _case_result("eval_forward", **{OURS: 1.0, "torch": 4.0, "jax": 8.0, "numpy": 0.5, ROOFLINE: 0.25}),
        _case_result("train_backward", **{OURS: 2.0, ROOFLINE: 1.0}),  # no peer ran
    ]
    assert [row.best_peer() for row in rows] == ["jax", "numpy", None]
    assert [row.best_peer_speedup() for row in rows] == [2.0, 0.5, None]
    assert rows[0].as_dict()["best_peer"] == "jax" and rows[0].as_dict()["best_peer_speedup"] == 2.0

    table = report.format_text_table(rows).splitlines()
    header = table[0].split()
    assert "vs best peer" in table[0] and header[-1] == "copy" and header[-2] == "%"
    assert "2.00x jax" in table[2] and "0.50x numpy" in table[3]
    # Each peer keeps its own ratio column; the best-peer column comes after them.
    assert table[2].index("3.00x") < table[2].index("2.00x jax")

    markdown = report.markdown_table(rows).splitlines()
    assert markdown[0] == ("| operation | shape (N, C, ...) | layout | numba_bn | vs PyTorch | vs JAX | vs NumPy "
                           "| vs best peer | % of copy |")
    assert "| 3.00x | 2.00x | 5.00x | 2.00x JAX |" in markdown[2]
    assert "| 4.00x | 8.00x | 0.50x | 0.50x NumPy |" in markdown[3]
    assert "| - | - | - | - |" in markdown[4]
    assert any("vs best peer:" in line for line in report.table_notes(rows))


def test_best_peer_compares_the_rows_statistic():
    """pytest-benchmark's rows compare minima: the peer with the least minimum is the best, whatever the medians."""
    timings = {OURS: Timing(best=1.0, median=1.0, repeats=3), "torch": Timing(best=1.5, median=4.0, repeats=3),
               "numpy": Timing(best=3.0, median=3.0, repeats=3)}
    case = cases.Case("eval_forward", (16, 8))
    assert report.CaseResult(case, "cpu", timings, statistic="best").best_peer() == "torch"
    assert report.CaseResult(case, "cpu", timings, statistic="median").best_peer() == "numpy"


def test_a_noisy_best_peer_ratio_is_marked():
    steady = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0]
    noisy = [1.0, 2.0, 0.5, 1.5, 0.7, 1.8, 1.0]
    timings = {OURS: Timing.from_samples(steady), "torch": Timing.from_samples([1.5 * t for t in noisy]),
               "numpy": Timing.from_samples([3 * t for t in steady])}
    row = report.CaseResult(cases.Case("eval_forward", (16, 8)), "cpu", timings)
    assert row.best_peer() == "torch" and row.too_wide_to_call("torch")
    assert f"{report.UNCERTAIN_MARK}1.50x torch" in report.format_text_table([row])


# ------------------------------------------------------------------- JAX


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_jax_is_timed_as_a_peer_where_installed(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert _tiny_bench("--json", str(path), "--operations", "train_forward,eval_forward,train_backward",
                       "--peers", "jax") == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "vs jax" in header and "vs best peer" in header
    assert "vs torch" not in header and "vs numpy" not in header  # --peers jax: the others are not timed
    assert "jax: JAX CPU: jax.jit" in out
    data = json.loads(path.read_text())
    assert data["settings"]["peers"] == ["jax"] and data["machine"]["jax"]
    for row in data["results"]:
        assert set(row["timings"]) == {OURS, "jax", ROOFLINE}
        assert row["best_peer"] == "jax"
        assert row["best_peer_speedup"] == pytest.approx(row["speedups"]["jax"])


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_jax_left_out_of_float64_with_a_note(capsys):
    assert _tiny_bench("--dtype", "float64", "--peers", "jax,numpy") == 0
    out = capsys.readouterr().out
    assert "vs jax" not in out and "vs numpy" in out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == ["note: jax is left out: it runs float32, float16 only, not float64. "
                     "JAX computes in float32 unless its process-wide jax_enable_x64 switch is on."]


@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
@pytest.mark.skipif(cli.max_threads() < 2, reason="needs 2 or more threads to run with fewer")
def test_jax_with_fewer_threads_says_its_pool_is_not_limited():
    _, notes = cli.select_implementations("cpu", ("jax",), "float32", threads=1)
    assert notes == [cli.JAX_THREADS_NOTE]
    _, notes = cli.select_implementations("cpu", ("jax",), "float32", threads=cli.max_threads())
    assert notes == []
    chosen, notes = cli.select_implementations("cpu", ("numpy",), "float32", threads=1)
    assert [impl.name for impl in chosen] == [OURS, "numpy", ROOFLINE] and notes == []


def test_missing_jax_is_named_with_its_install_command(monkeypatch):
    implementations = importlib.import_module("numba_bn.bench.implementations")

    importable = implementations._importable
    monkeypatch.setattr(implementations, "_importable", lambda module: module != "jax" and importable(module))
    chosen, notes = cli.select_implementations("cpu", cli.PEERS, "float32", threads=cli.max_threads())
    assert "jax" not in [impl.name for impl in chosen]
    (note,) = [note for note in notes if note.startswith("jax")]
    assert "not installed" in note and 'pip install "jax[cpu]==0.10.2"' in note


def _bench_table_module():
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "scripts" / "bench_table.py")
    bench_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_table)
    return bench_table


def _pytest_benchmark_document(rows, with_jax_version):
    """A --benchmark-json document with the given ``{implementation: minimum}`` per (operation, shape)."""
    benchmarks = []
    for (operation, shape), minima in rows.items():
        for name, seconds in minima.items():
            benchmarks.append({
                "group": f"{operation} {shape}", "stats": {"min": seconds, "median": seconds, "rounds": 3},
                "extra_info": {"operation": operation, "shape": list(shape), "layout": "channels_first",
                               "dtype": "float32", "implementation": name, "device": "cpu"},
            })
    machine = report.machine_info(threads=2)
    machine["jax"] = "0.10.2" if with_jax_version else None
    return {"benchmarks": benchmarks, "machine_info": {"numba_bn": machine}, "datetime": "2026-12-03T00:00:00"}


def test_bench_table_shows_jax_and_the_best_peer():
    bench_table = _bench_table_module()
    rows = {("train_forward", (64, 128)): {OURS: 1e-3, "torch": 4e-3, "jax": 2e-3, "numpy": 8e-3, ROOFLINE: 5e-4},
            ("train_backward_add_relu", (64, 128)): {OURS: 2e-3, "torch": 3e-3, "jax": 5e-3, ROOFLINE: 1e-3}}
    block = bench_table.render(_pytest_benchmark_document(rows, with_jax_version=True))
    assert "| vs PyTorch | vs JAX | vs NumPy | vs best peer | % of copy |" in block
    assert "| train_forward | 64x128 | ch-first | 1 ms | 4.00x | 2.00x | 8.00x | 2.00x JAX |" in block
    # The fused table has no NumPy column; there PyTorch is the faster peer.
    assert "| vs PyTorch | vs JAX | vs best peer | % of copy |" in block
    assert "| train_backward_add_relu | 64x128 | ch-first | 2 ms | 1.50x | 2.50x | 1.50x PyTorch |" in block
    assert "JAX runs the fused training forward and backward" in block
    assert "JAX 0.10.2" in block and "but JAX (XLA's own pool" in block


def test_bench_table_without_jax_rows_has_no_jax_column():
    """Results without JAX rows (a run where it is not installed) render without its column."""
    bench_table = _bench_table_module()
    data = json.loads((ROOT / "benchmarks" / "results" / "cpu.json").read_text())
    data["benchmarks"] = [
        entry for entry in data["benchmarks"] if entry["extra_info"].get("implementation") != "jax"
    ]
    block = bench_table.render(data)
    assert "vs JAX" not in block and "JAX" not in block
    assert "| vs PyTorch | vs NumPy | vs best peer | % of copy |" in block
    for result in report.results_from_pytest_benchmark(data):
        if result.case.operation == "train_forward":
            best = result.best_peer()
            assert best == min(("torch", "numpy"), key=lambda name: result.timings[name].best)
            ratio = result.timings[best].best / result.timings[OURS].best
            assert f"{report.format_ratio(ratio)} {report.PEER_LABELS[best]} |" in block
    # A file whose machine has JAX but no JAX rows does not name it either.
    rows = {("eval_forward", (64, 128)): {OURS: 1e-3, "torch": 2e-3}}
    assert "JAX" not in bench_table.render(_pytest_benchmark_document(rows, with_jax_version=True))
