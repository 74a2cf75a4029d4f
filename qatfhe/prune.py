"""Pruning by weight magnitude, with the semantics of torch.nn.utils.prune.

A pruned tensor carries a mask in the C network: masked entries are exactly 0
in the forward pass and stay 0 through training (gradients and AdamW updates,
weight decay included, skip them). Masks are saved and loaded with the net.

    from qatfhe import prune
    prune.l1_unstructured(net[3], "weight", amount=8000)   # or a fraction: 0.8
    prune.fan_in(net[3], max_non_zero=20)                  # at most 20 per neuron
    prune.remove(net[3], "weight")                         # permanent, mask dropped
    prune.sparsity(net)                                    # zeros per layer

Pruning an already pruned tensor prunes among the entries still kept and
combines the masks, as PyTorch does; a float amount is a fraction of those
kept entries, rounded with Python's round() (half to even). Weights are ranked
by |w|; of equal |w| the one at the lower flat index is pruned first (PyTorch
leaves ties unspecified; without ties both choose the same entries).
"""
import numbers
from typing import NamedTuple

import numpy as np

from . import _core

__all__ = ["l1_unstructured", "fan_in", "remove", "is_pruned", "sparsity", "LayerSparsity",
           "prune_net", "unprune_net"]


class LayerSparsity(NamedTuple):
    """Zeros of one layer's weight (`sparsity`)."""

    zeros: int         # weights exactly 0, masked or not
    total: int         # weights
    max_non_zero: int  # most non-zero weights of any output neuron (channel): accumulator terms
    masked: int        # weights the pruning mask holds at 0 (0 when not pruned)


def _describe(layer):
    index = getattr(layer, "index", None)
    name = type(layer).__name__
    return name if index is None else f"layer {index} ({name})"


def _has_weight(layer):
    """True for layer kinds with a weight (Linear, QuantLinear ...), in a net or not; not
    for BatchNorm2d, whose weight is a per-channel scale, not a fan-in."""
    from .nn import BatchNorm2d
    return (isinstance(getattr(type(layer), "weight", None), property)
            and not isinstance(layer, BatchNorm2d))


def _net_of(layer):
    """The Sequential that owns layer's tensors; TypeError/ValueError otherwise."""
    if not _has_weight(layer):
        raise TypeError(f"{_describe(layer)} has no weights to prune; expected a layer "
                        "with a weight, such as Linear or QuantLinear")
    if getattr(layer, "net", None) is None or getattr(layer, "index", None) is None:
        raise ValueError(f"{_describe(layer)} must belong to an nn.Sequential to be pruned")
    return layer.net


def _tensor(layer, name):
    """(net, tensor name such as "3.weight", float32 values) of layer's parameter `name`."""
    net = _net_of(layer)
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'weight', got {type(name).__name__}")
    prunable = [p for p in ("weight", "bias") if getattr(layer, p, None) is not None]
    if name not in prunable:
        raise ValueError(f"{_describe(layer)} has no parameter {name!r} to prune; "
                         f"expected one of {prunable}")
    return net, f"{layer.index}.{name}", np.asarray(getattr(layer, name), dtype=np.float32)


def _check_count(value, argument, minimum):
    """value as an int in [minimum, 2**63 - 1]; TypeError for non-integers (bool included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{argument} must be at least {minimum}, got {value}")
    if value > 2 ** 63 - 1:
        raise ValueError(f"{argument} must be an int in [{minimum}, 2**63 - 1], got {value}")
    return int(value)


def _amount_to_count(amount, kept, where):
    """PyTorch's rule: an int is a count, a float in [0, 1] a fraction of the kept entries."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be an int (a count) or a float in [0, 1] (a fraction), "
                        f"got {type(amount).__name__}")
    if isinstance(amount, numbers.Integral):
        count = _check_count(amount, "amount", 0)
    else:
        fraction = float(amount)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"amount as a float is a fraction and must be in [0, 1], "
                             f"got {amount}")
        count = round(fraction * kept)
    if count > kept:
        raise ValueError(f"amount={count} exceeds the {kept} entries of {where} that are "
                         "still kept")
    return count


def l1_unstructured(layer, name, amount):
    """Mask the `amount` smallest-|w| entries of layer's parameter `name`
    ("weight", or "bias"), over the whole tensor, among the entries still kept.
    amount: int count, or float fraction in [0, 1] of the kept entries. Returns layer."""
    net, tensor_name, values = _tensor(layer, name)
    current = net._core.get_mask(tensor_name)
    kept = values.size if current is None else int(np.count_nonzero(current))
    count = _amount_to_count(amount, kept, f"{_describe(layer)}.{name}")
    net._core.set_mask(tensor_name, _core.l1_unstructured_mask(values, current, count))
    return layer


def fan_in(layer, max_non_zero):
    """Keep at most the max_non_zero largest |w| of every output neuron (row of a
    Linear weight, output channel of a conv weight), among the entries still kept.
    Bounds the number of terms of every accumulator. Returns layer."""
    net, tensor_name, values = _tensor(layer, "weight")
    max_non_zero = _check_count(max_non_zero, "max_non_zero", 1)
    current = net._core.get_mask(tensor_name)
    rows = values.reshape(values.shape[0], -1)
    mask = _core.fan_in_mask(rows, None if current is None else current.reshape(rows.shape),
                             max_non_zero)
    net._core.set_mask(tensor_name, mask.reshape(values.shape))
    return layer


def _is_sequential(obj):
    from . import nn
    return isinstance(obj, nn.Sequential)


def _masked_names(net):
    """Names of net's tensors that carry a pruning mask ("3.weight" ...)."""
    return [name for name in net._tensors if net._core.get_mask(name) is not None]


def is_pruned(obj):
    """True if the layer (or, given a Sequential, any of its layers) has a pruning mask."""
    if _is_sequential(obj):
        return bool(_masked_names(obj))
    if not _has_weight(obj) or getattr(obj, "net", None) is None:
        return False
    return any(name.split(".", 1)[0] == str(obj.index) for name in _masked_names(obj.net))


def remove(layer, name):
    """Make the pruning of layer's parameter `name` permanent: the values stay
    (pruned entries 0), the mask is dropped and they train freely again. Returns layer."""
    net, tensor_name, _ = _tensor(layer, name)
    if net._core.get_mask(tensor_name) is None:
        raise ValueError(f"{_describe(layer)}.{name} is not pruned; nothing to remove")
    net._core.set_mask(tensor_name, None)
    return layer


def sparsity(net):
    """{layer index: LayerSparsity(zeros, total, max_non_zero, masked)} for every
    layer of the Sequential that has a weight. max_non_zero is the most non-zero
    weights of any output neuron (channel): the accumulator's number of terms."""
    if not _is_sequential(net):
        raise TypeError(f"net must be an nn.Sequential, got {type(net).__name__}")
    report = {}
    for i, layer in enumerate(net):
        if not _has_weight(layer):
            continue
        weight = np.asarray(layer.weight)
        non_zero_per_row = np.count_nonzero(weight.reshape(len(weight), -1), axis=1)
        mask = net._core.get_mask(f"{i}.weight")
        report[i] = LayerSparsity(
            zeros=int(weight.size - non_zero_per_row.sum()), total=int(weight.size),
            max_non_zero=int(non_zero_per_row.max(initial=0)),
            masked=0 if mask is None else int(mask.size - np.count_nonzero(mask)))
    return report


def prune_net(net, max_non_zero):
    """The tutorial's PrunedQuantNet.prune: for every weight layer (Linear, QuantLinear,
    Conv2d, QuantConv2d, inside Residual blocks too), zeros = (fan_in - max_non_zero) *
    out_features, fan_in the weights per output (in_features, or in_channels * kh * kw),
    and, when positive, l1_unstructured(layer, "weight", zeros) over the whole tensor
    (not per neuron: use fan_in() for a per-neuron bound). Call once after init; the masks
    then stay fixed during training. Returns {tensor name: weights masked}."""
    if not _is_sequential(net):
        raise TypeError(f"net must be an nn.Sequential, got {type(net).__name__}")
    max_non_zero = _check_count(max_non_zero, "max_non_zero", 1)
    weighted = [layer for layer in net._c_layers if _has_weight(layer)]
    plan = [(layer, (layer.weight[0].size - max_non_zero) * layer.weight.shape[0])
            for layer in weighted]
    plan = [(layer, zeros) for layer, zeros in plan if zeros > 0]
    for layer, zeros in plan:                  # refuse before changing anything
        current = layer.weight_mask
        kept = layer.weight.size if current is None else int(np.count_nonzero(current))
        if zeros > kept:
            raise ValueError(f"{_describe(layer)} keeps {kept} weights, fewer than the {zeros} "
                             "to prune; call unprune() first or prune a fresh network")
    for layer, zeros in plan:
        l1_unstructured(layer, "weight", amount=zeros)
    return {f"{layer.index}.weight": zeros for layer, zeros in plan}


def unprune_net(net):
    """The tutorial's PrunedQuantNet.unprune: make every pruning of the net
    permanent (remove); the pruned weights stay 0 until trained again.
    Returns the names of the tensors whose masks were removed."""
    if not _is_sequential(net):
        raise TypeError(f"net must be an nn.Sequential, got {type(net).__name__}")
    names = _masked_names(net)
    for name in names:
        net._core.set_mask(name, None)
    return names
