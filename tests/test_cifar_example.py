"""examples/cifar_like_cnn.py at reduced size: it trains, compiles, and its exit status is 0
only when the circuit agrees with the fake-quant network on every test image."""
import importlib.util
import pathlib

import numpy as np


def load_example():
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "cifar_like_cnn.py"
    spec = importlib.util.spec_from_file_location("cifar_like_cnn", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_generated_bars_follow_their_rule():
    """The label is 2 * colour + orientation: the bar's channel holds the brightest row or
    column sum, along the bar's direction (noise hides a few short bars from this rule)."""
    X, y = load_example().bar_images(300, 16, seed=3)
    assert X.shape == (300, 3, 16, 16) and X.dtype == np.float32
    hits = 0
    for image, label in zip(X, y):
        rows, cols = image.sum(axis=2), image.sum(axis=1)          # (3, 16) each
        channel = int(np.argmax(np.maximum(rows.max(axis=1), cols.max(axis=1))))
        vertical = int(cols[channel].max() > rows[channel].max())
        hits += 2 * channel + vertical == label
    assert hits >= 0.9 * len(y), hits
    assert np.bincount(y, minlength=6).min() > 30                   # every class present


def test_cifar_like_example_runs_small_and_agrees(capsys):
    assert load_example().main(["--small"]) == 0
    out = capsys.readouterr().out
    assert "100/100 predictions, 100/100 logit vectors bit for bit" in out
    assert "pairwise max lookups per image" in out and "max accumulator:" in out
