"""Each script in examples/ runs and shows what it claims (quick settings)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_digits_learns(tmp_path, capsys):
    pytest.importorskip("sklearn")
    example = load_example("train_digits")
    plot = tmp_path / "curves.png"
    results = example.main(["--epochs", "2", "--batch-size", "64", "--plot", str(plot)])
    assert set(results) == {("mlp", False), ("mlp", True), ("cnn", False), ("cnn", True)}
    for (name, batch_norm), result in results.items():
        losses = result["losses"]
        assert len(losses) == 2 * (1437 // 64) and np.isfinite(losses).all(), (name, batch_norm)
        if batch_norm or name == "cnn":
            # Robust even in two epochs: the loss falls and the test accuracy beats chance (10%).
            quarter = len(losses) // 4
            assert losses[-quarter:].mean() < losses[:quarter].mean(), (name, batch_norm)
            assert result["test_accuracy"][-1] > 0.3, (name, batch_norm)
    out = capsys.readouterr().out
    assert out.count("test accuracy") == 4
    if importlib.util.find_spec("matplotlib") is None:
        assert "no plot" in out
    else:
        assert plot.read_bytes().startswith(b"\x89PNG")


def test_train_digits_rejects_bad_options():
    pytest.importorskip("sklearn")
    example = load_example("train_digits")
    with pytest.raises(SystemExit) as raised:
        example.main(["--models", "resnet"])
    assert raised.value.code == 2


def test_pytorch_inference_with_shipped_file(capsys):
    example = load_example("pytorch_inference")
    difference = example.main(["--no-torch"])
    assert difference < 1e-5
    assert "the outputs match" in capsys.readouterr().out


def test_pytorch_inference_against_torch(capsys):
    pytest.importorskip("torch")
    example = load_example("pytorch_inference")
    assert example.main([]) < 1e-5
    assert "PyTorch, run now" in capsys.readouterr().out


def test_pytorch_export_round_trip(tmp_path):
    pytest.importorskip("torch")
    example = load_example("pytorch_inference")
    path = tmp_path / "model.npz"
    example.main(["--export", str(path), "--seed", "3"])
    state = example.load_state(path)
    output = example.NumPyNetwork(state)(state[example.SAMPLE_INPUT])
    np.testing.assert_allclose(output, state[example.SAMPLE_OUTPUT], atol=1e-5)
    assert set(example.load_state(example.SHIPPED)) == set(state)


def test_gpu_cupy_runs_or_explains(capsys):
    example = load_example("gpu_cupy")
    reason = example.missing_requirement()
    assert example.main(["--steps", "1"]) == 0
    out = capsys.readouterr().out
    if reason is None:
        assert "largest difference from the CPU modules" in out
    else:
        assert reason in out and "needs an NVIDIA GPU and CuPy" in out
