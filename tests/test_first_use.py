"""What a new user meets first: compile notices, precompile, and the optional CUDA extra.

Each test runs a fresh Python process (a new process is what a user starts),
importing the numba_bn under test.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import numba_bn as nbn
import numba_bn.cli as cli
from numba_bn import _backend

ROOT = Path(nbn.__file__).resolve().parents[1]


def run_python(code, env=None, timeout=300):
    """Run ``code`` in a fresh interpreter that imports this numba_bn; returns the CompletedProcess."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True, text=True,
        timeout=timeout, cwd=ROOT,
    )


# ---------------------------------------------------------------- precompile


COUNT_COMPILATIONS = """
    import numpy as np
    from numba.core import event
    import numba_bn as nbn

    compiled = []

    class Recorder(event.Listener):
        def on_start(self, ev):
            function = ev.data["dispatcher"].py_func
            if function.__module__.startswith("numba_bn"):
                compiled.append(function.__qualname__)

        def on_end(self, ev):
            pass

    event.register("numba:compile", Recorder())
"""


def test_after_precompile_first_calls_in_a_new_process_compile_nothing():
    nbn.precompile(dtypes="float32", layouts=("channels_first", "channels_last"), ranks=(2, 4))
    completed = run_python(COUNT_COMPILATIONS + """
    rng = np.random.default_rng(0)
    for shape, axis in [((64, 8, 6, 6), 1), ((64, 6, 6, 8), -1), ((2, 8, 3, 3), 1), ((4096, 24), 1)]:
        cls = nbn.BatchNorm2d if len(shape) == 4 else nbn.BatchNorm1d
        channels = shape[axis]
        for affine in (True, False):
            bn = cls(channels, affine=affine, channel_axis=axis)
            x = rng.standard_normal(shape, dtype=np.float32)
            bn.backward(bn(x))
            bn.eval()
            bn.backward(bn(x))
    print("compiled:", compiled)
    """)
    assert completed.returncode == 0, completed.stderr
    assert "compiled: []" in completed.stdout, completed.stdout
    assert "numba_bn: compiling" not in completed.stderr


def test_after_fused_precompile_fused_first_calls_compile_nothing():
    nbn.precompile(dtypes="float32", layouts="channels_first", ranks=4, fused=True)
    completed = run_python(COUNT_COMPILATIONS + """
    rng = np.random.default_rng(0)
    for shape in [(2, 8, 3, 3), (64, 8, 8, 8), (16, 40, 8, 8)]:
        bn = nbn.BatchNorm2d(shape[1], activation="relu")
        x = rng.standard_normal(shape, dtype=np.float32)
        for training in (True, False):
            bn.train(training)
            bn.backward(bn(x))
            bn.backward(bn(x, x))
    print("compiled:", compiled)
    """)
    assert completed.returncode == 0, completed.stderr
    assert "compiled: []" in completed.stdout, completed.stdout


def test_after_family_precompile_first_calls_compile_nothing():
    nbn.precompile(dtypes="float32", layouts="channels_last", ranks=4, family=True)
    completed = run_python(COUNT_COMPILATIONS + """
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 3, 8), (64, 8, 8, 8)]:  # the serial kernels, then the thread pool's
        x = rng.standard_normal(shape, dtype=np.float32)
        for module in (nbn.GroupNorm(2, 8, channel_axis=-1), nbn.LayerNorm(8),
                       nbn.InstanceNorm2d(8, affine=True, track_running_stats=True, channel_axis=-1)):
            for training in (True, False):
                module.train(training)
                module.backward(module(x))
    print("compiled:", compiled)
    """)
    assert completed.returncode == 0, completed.stderr
    assert "compiled: []" in completed.stdout, completed.stdout


def test_precompile_reports_each_combination_and_rejects_unknown_choices():
    seconds = nbn.precompile(dtypes=["float32"], layouts="channels_last", ranks=[3, 2])
    assert list(seconds) == ["float32 channels_last 3D", "float32 channels_last 2D"]
    assert all(value >= 0 for value in seconds.values())
    steps = []
    nbn.precompile(dtypes="float32", layouts="channels_first", ranks=2, progress=lambda *a: steps.append(a))
    assert steps == [(0, 1, "float32 channels_first 2D"), (1, 1, "done")]
    for kwargs, fragment in [
        ({"dtypes": "int8"}, "expected dtypes from ['float32', 'float64', 'float16'], got ['int8']"),
        ({"layouts": "NCHW"}, "got ['NCHW']"),
        ({"ranks": 6}, "got [6]"),
        ({"ranks": []}, "got []"),
    ]:
        with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            nbn.precompile(**kwargs)
    with pytest.raises(TypeError, match="progress"):
        nbn.precompile(dtypes="float32", layouts="channels_first", ranks=2, progress="yes")


def test_precompile_command(capsys):
    assert cli.main(["precompile", "--dtypes", "float32", "--layouts", "channels_first", "--ranks", "4",
                     "--no-progress"]) == 0
    assert "compiled numba_bn's CPU kernels for 1 dtype/layout/rank combinations" in capsys.readouterr().out
    with pytest.raises(SystemExit) as raised:
        cli.main(["precompile", "--dtypes", "float8"])
    assert raised.value.code == 2


# ------------------------------------------------------------ compile notice


def test_compile_notice_once_per_dtype_and_layout_and_silenceable(tmp_path):
    completed = run_python("""
    import sys
    import numpy as np
    import numba_bn as nbn
    from numba_bn import config

    x = np.random.default_rng(0).standard_normal((4, 3))
    config.COMPILE_NOTICE = False
    nbn.BatchNorm1d(3, dtype=np.float64).eval()(x.astype(np.float32).astype(np.float64)[:, ::-1].copy())
    print("--- silent above", file=sys.stderr, flush=True)
    config.COMPILE_NOTICE = True
    bn = nbn.BatchNorm1d(3, channel_axis=-1).eval()
    bn(x.astype(np.float32))
    bn(x.astype(np.float32))
    nbn.BatchNorm1d(3, channel_axis=-1).eval()(x.astype(np.float32))
    """, env={"NUMBA_CACHE_DIR": str(tmp_path)})  # an empty cache: everything compiles
    assert completed.returncode == 0, completed.stderr
    silent, _, noticed = completed.stderr.partition("--- silent above")
    assert "numba_bn: compiling" not in silent
    notices = [line for line in noticed.splitlines() if line.startswith("numba_bn: compiling")]
    assert len(notices) == 1, completed.stderr
    assert "float32 channels-last input (first use only" in notices[0]
    assert str(tmp_path) in notices[0] and "NUMBA_BN_COMPILE_NOTICE=0" in notices[0]


def test_compile_notice_environment_switch():
    completed = run_python("from numba_bn import config; print(config.COMPILE_NOTICE)",
                           env={"NUMBA_BN_COMPILE_NOTICE": "0"})
    assert completed.stdout.strip() == "False"


# ---------------------------------------------------------------- CUDA extra


def test_without_the_cuda_extra_the_cpu_works_and_cuda_names_the_extra():
    completed = run_python("""
    import sys
    sys.modules["numba_cuda"] = None  # as if numba-cuda were not installed
    import numpy as np
    import numba_bn as nbn

    print(nbn.BatchNorm1d(2)(np.ones((3, 2), np.float32)).shape)
    try:
        nbn.BatchNorm1d(2, device="cuda")
    except ValueError as error:
        print("error:", error)
    """)
    assert completed.returncode == 0, completed.stderr
    assert "(3, 2)" in completed.stdout
    assert "error: expected a usable CUDA device for device='cuda', got none" in completed.stdout
    assert "pip install 'numba_bn[cuda]'" in completed.stdout


def test_without_a_gpu_the_cuda_benchmark_explains():
    # The simulator off, as on a user's machine (the tests run with it on).
    completed = subprocess.run(
        [sys.executable, "-m", "numba_bn", "--device", "cuda", "--quick"], cwd=ROOT, capture_output=True,
        text=True, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"), timeout=300,
    )
    if _backend.cuda_available() and completed.returncode == 0:
        pytest.skip("a real GPU answered")
    assert completed.returncode == 1, completed.stderr
    assert "CUDA is not available" in completed.stderr and "Traceback" not in completed.stderr
