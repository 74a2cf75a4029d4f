"""Network.fit: whole epochs in C, one call per epoch, with an optional progress bar.

Training stops at the first NaN or infinity (loss, parameter or statistic) with a
DivergenceError naming the epoch and step; the network is left as it was after the last
finite step (the C epoch keeps a copy from its start, checks each loss and, at its end, the
parameters; after a failure a checked replay finds the first bad step and the batches
before it are replayed)."""
import re

import numpy as np

from . import _checks
from ._finite import check_finite_state


class DivergenceError(ValueError, FloatingPointError):
    """fit stopped because the loss or a parameter became NaN or infinite.  epoch and step
    (1-based; step counts the epoch's batches) say where; history holds the finished
    epochs.  The network holds its values after the last finite step."""

    def __init__(self, message, epoch, step, history):
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


def _progress(total, enabled, desc):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="epoch", leave=False)


def fit(net, X, y, epochs=1, batch_size=1, optimizer=None, seed=None, progress=True):
    X = net._samples(X)
    y = _checks.labels(y, len(X), net._core.out_size)
    epochs = _checks.positive_int(epochs, "epochs", minimum=0)
    batch_size = _checks.positive_int(batch_size, "batch_size", maximum=_checks.INT64_MAX)
    if seed is not None:
        seed = _checks.seed(seed)
    if optimizer is not None:
        from .optim import Optimizer
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a qatfhe.optim optimizer such as "
                            f"optim.AdamW(net.parameters(), lr=1e-3), or None, got {optimizer!r}")
        if getattr(optimizer, "net", None) is not net:
            raise ValueError("optimizer belongs to another network; build it from "
                             "net.parameters()")
        optimizer._check_bound()
    elif net.optimizer is None:
        from .optim import AdamW
        AdamW(net.parameters())
    check_finite_state(net, "cannot train")
    history = {"loss": [], "accuracy": []}
    bar = _progress(epochs, progress, "fit")
    net.train()
    try:
        for epoch in range(epochs):
            epoch_seed = None if seed is None else (seed + epoch) % 2 ** 64
            net._next_forward(True)
            try:
                loss_sum, correct = net._core.train_epoch(X, y, batch_size, epoch_seed)
            except FloatingPointError as exc:
                raise _diverged(net, exc, epoch, epochs, history) from None
            history["loss"].append(loss_sum / len(X))
            history["accuracy"].append(correct / len(X))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history['loss'][-1]:.4f}",
                                acc=f"{history['accuracy'][-1]:.3f}")
    finally:
        if bar is not None:
            bar.close()
    return history


def _diverged(net, exc, epoch, epochs, history):
    message = net._name_layers(str(exc))
    step = int(re.search(r"step (\d+)", message).group(1))
    return DivergenceError(f"epoch {epoch + 1} of {epochs}: {message} (lower lr, weight_decay "
                           f"or momentum, or clip the data)", epoch + 1, step, history)
