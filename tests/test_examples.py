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


def test_resnet_block_trains_folds_and_matches_torch(capsys):
    pytest.importorskip("sklearn")
    example = load_example("resnet_block_numpy")
    result = example.main(["--steps", "12", "--channels", "8", "--check"])
    losses = result["losses"]
    assert len(losses) == 12 and np.isfinite(losses).all()
    assert losses[-3:].mean() < losses[:3].mean()
    assert result["fold_difference"] < example.RELATIVE_TOLERANCE
    out = capsys.readouterr().out
    assert "folded into its convolution" in out
    if importlib.util.find_spec("torch") is None:
        assert result["torch_differences"] is None and "comparison with PyTorch was skipped" in out
    else:  # losses of every step, updated weights, running statistics and evaluation logits
        assert set(result["torch_differences"]) == {"losses", "parameters", "running_stats", "logits"}
        assert max(result["torch_differences"].values()) < example.RELATIVE_TOLERANCE
        assert "they agree" in out


def test_resnet_block_without_torch_says_the_comparison_was_skipped(capsys, monkeypatch):
    pytest.importorskip("sklearn")
    example = load_example("resnet_block_numpy")
    monkeypatch.setattr(example, "torch_installed", lambda: False)
    result = example.main(["--steps", "2", "--channels", "4", "--check"])
    assert result["torch_differences"] is None
    assert "comparison with PyTorch was skipped" in capsys.readouterr().out


def test_resnet_convolution_backward_matches_finite_differences():
    """The hand-written 3x3 convolution backward, against central differences in float64."""
    example = load_example("resnet_block_numpy")
    rng = np.random.default_rng(1)
    conv = example.Conv3x3(rng.standard_normal((3, 2, 3, 3)))
    x = rng.standard_normal((2, 2, 4, 5))
    probe = rng.standard_normal((2, 3, 4, 5))  # the loss is sum(probe * conv(x))
    conv.forward(x)
    grad_x = conv.backward(probe)
    step = 1e-6
    for index in [(0, 0, 0, 0), (1, 1, 3, 4), (0, 1, 2, 2)]:
        shifted = x.copy()
        shifted[index] += step
        plus = (probe * conv.forward(shifted)).sum()
        shifted[index] -= 2 * step
        minus = (probe * conv.forward(shifted)).sum()
        assert (plus - minus) / (2 * step) == pytest.approx(grad_x[index], rel=1e-6, abs=1e-8)
    conv.forward(x)
    conv.backward(probe)
    for index in [(0, 0, 0, 0), (2, 1, 1, 2)]:
        weight = conv.weight.copy()
        conv.weight[index] += step
        plus = (probe * conv.forward(x)).sum()
        conv.weight[index] -= 2 * step
        minus = (probe * conv.forward(x)).sum()
        conv.weight[...] = weight
        conv.forward(x)
        conv.backward(probe)
        assert (plus - minus) / (2 * step) == pytest.approx(conv.grad_weight[index], rel=1e-6, abs=1e-8)


def test_resnet_block_rejects_bad_options():
    example = load_example("resnet_block_numpy")
    with pytest.raises(SystemExit) as raised:
        example.main(["--batch-size", "1"])
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
