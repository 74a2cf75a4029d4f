"""Naming the tensors of a network that hold NaN or infinity, for the messages of save,
compile and fit (issue 11: a diverged network is refused by name, not by a side effect)."""
import numpy as np


def tensor_label(net, name):
    """ "weight of layer 1 (QuantLinear)" for the tensor "1.weight"."""
    index, suffix = name.split(".", 1)
    layer = net._c_layers[int(index)]
    return f"{suffix} of layer {net.layer_path(int(index))} ({type(layer).__name__})"


def nonfinite_tensors(net, optimizer_state=False):
    """[(label, bad entries, size)] of every parameter and statistic holding NaN or
    infinity (with optimizer_state, also the optimizer moments of the parameters)."""
    found = []
    for name, t in net._tensors.items():
        arrays = [("", t["data"])]
        if optimizer_state and t["kind"] == "param":
            arrays += [("optimizer moment m of ", t["opt_m"]), ("optimizer moment v of ", t["opt_v"])]
        for prefix, values in arrays:
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                found.append((prefix + tensor_label(net, name), bad, values.size))
    return found


def check_finite_state(net, doing, optimizer_state=False):
    """ValueError naming the first non-finite tensor of net, saying what `doing` needs."""
    found = nonfinite_tensors(net, optimizer_state)
    if found:
        label, bad, size = found[0]
        more = f" (and {len(found) - 1} more tensors)" if len(found) > 1 else ""
        raise ValueError(f"{doing}: the {label} holds NaN or infinity in {bad} of {size} "
                         f"entries{more}, e.g. after a diverged training or a write through a "
                         f"parameter view; expected finite values")
