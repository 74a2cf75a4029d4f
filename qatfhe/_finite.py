"""Naming the tensors of a network that hold NaN or infinity, for the messages of save,
compile and fit (issue 11: a diverged network is refused by name, not by a side effect)."""
import numpy as np


def tensor_label(net, name):
    """ "weight of layer 1 (QuantLinear)" for the tensor "1.weight"."""
    index, suffix = name.split(".", 1)
    layer = net._c_layers[int(index)]
    return f"{suffix} of layer {net.layer_path(int(index))} ({type(layer).__name__})"


def check_finite_state(net, doing):
    """ValueError naming the first parameter or statistic of net that holds NaN or
    infinity, saying what `doing` needs."""
    found = [(name, t["data"]) for name, t in net._tensors.items()
             if not np.isfinite(t["data"]).all()]
    if found:
        name, values = found[0]
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        more = f" (and {len(found) - 1} more tensors)" if len(found) > 1 else ""
        raise ValueError(f"{doing}: the {tensor_label(net, name)} holds NaN or infinity in "
                         f"{bad} of {values.size} entries{more}, e.g. after a diverged "
                         f"training or a write through a parameter view; expected finite values")
