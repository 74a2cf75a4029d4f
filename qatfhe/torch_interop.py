"""PyTorch in and out: from_torch, convert (the tutorial's replacement table) and to_torch.

    from_torch(module)   a float qatfhe network from a torch module that is a chain of
                         Linear, ReLU, Conv2d, AvgPool2d, MaxPool2d, BatchNorm2d and Flatten
                         (an nn.Sequential, or any
                         module whose forward torch.fx traces to such a chain), weights copied
    convert(net_or_module, bit_width=3)
                         the FHE-friendly counterpart, initialised from the float weights and
                         ready to fine-tune with fit(), plus a report of every change
    to_torch(net)        a torch nn.Sequential computing what the network computes in eval
                         mode: fake quantization with the current scales frozen (or, with
                         fake_quant=False, the float network underneath)

torch is optional: it is imported inside the functions that need it.

The replacement table (tutorial, REFERENCE.md section 2) as convert() applies it:
    Linear    -> QuantLinear(weight_quant, weight_bit_width)
    Conv2d    -> QuantConv2d(weight_quant, weight_bit_width)
    ReLU      -> QuantReLU(act_quant, bit_width)
    AvgPool2d -> AvgPool2d + QuantIdentity
    BatchNorm2d, MaxPool2d -> kept (state included); MaxPool2d reads codes like AvgPool2d
    and a QuantIdentity wherever a layer that Concrete-ML computes on integers (Linear, Conv2d,
    AvgPool2d, Flatten, Reshape, Transpose, a residual add) would otherwise receive a tensor
    that no quantizer produced: at the input, before a Flatten that follows a Conv2d, between
    two Linear layers with no activation in between...
Layers already quantized (QuantLinear, QuantIdentity, ...) are kept as they are, state included.

Default quantizers of convert(), chosen so that fine-tuning starts from the float network
rather than from scratch (numbers: SimpleNet(100) on the checkerboard, 3 bits, 7 epochs):
  weights      Int8WeightPerTensorFloat: scale = max|W| / (2^(b-1) - 1), recomputed every
               step, so the float weights land on the integer grid at their own scale.  A
               constant threshold (the tutorial's CommonWeightQuant, T = 1) rounds PyTorch-
               initialised or trained weights (|w| ~ 1/sqrt(fan_in)) mostly to 0 at 3 bits,
               throwing the float network away.
  input        CommonActQuant, the tutorial's input quantizer: constant range [-1, 1] (scale
               1/3 at 3 bits), for inputs scaled to [-1, 1]; pass input_quant= for others.
               A learned input threshold (Int8ActPerTensorFloat or Uint8ActPerTensorFloat)
               starts from batch statistics, which with batch size 1 average each sample's
               own max (about 2/3 on [0, 1]^2) and clip the rest of the range: on the
               checkerboard at 3 bits training then stayed at chance (46-61% after 7 epochs,
               3 seeds) where CommonActQuant reaches 85-97%.
  ReLU         Uint8ActPerTensorFloat (unsigned, learned threshold: the first 300 steps
               follow the observed range, then it is trained), since each layer's range is
               unknown before data flows.
  inserted QuantIdentity inside the network: the same unsigned learned quantizer when its
               input is known to be non-negative (after a ReLU, through pooling or
               reshaping), else identity_quant (default Int8ActPerTensorFloat, signed,
               learned)."""
import numpy as np

from . import nn
from .quant import (CommonActQuant, Int8ActPerTensorFloat, Int8WeightPerTensorFloat,
                    Uint8ActPerTensorFloat)

__all__ = ["from_torch", "convert", "to_torch", "ConversionReport", "SUPPORTED_TORCH_LAYERS"]

SUPPORTED_TORCH_LAYERS = ("Linear", "ReLU", "Conv2d", "AvgPool2d", "Flatten", "MaxPool2d",
                          "BatchNorm2d")
_SUPPORTED_TEXT = ", ".join(SUPPORTED_TORCH_LAYERS)


def _import_torch(what):
    try:
        import torch
    except ImportError:
        raise ImportError(f"qatfhe.{what} needs PyTorch: pip install torch") from None
    return torch


# ------------------------------------------------------------------ from_torch

def from_torch(module, seed=0, input_shape=None):
    """A float qatfhe network computing what `module` computes, weights copied.

    module: a torch.nn.Module whose forward is a chain (each step feeds only the next) of
        nn.Linear, nn.ReLU, nn.Conv2d (dilation=1, zero padding), nn.AvgPool2d
        (count_include_pad=True, floor mode), nn.MaxPool2d (dilation=1, floor mode),
        nn.BatchNorm2d (weights and running statistics copied), nn.Flatten() and the
        functional relu /
        flatten(x, 1).  nn.Sequential qualifies; other modules are traced with torch.fx.
    seed, input_shape: passed to nn.Sequential (input_shape=(C, H, W) lets a network that
        starts with Flatten know its input).
    Anything else (another layer, a branch, a skip connection, NaN or infinite weights)
    raises ValueError naming the layer."""
    torch = _import_torch("from_torch")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    steps = _trace_chain(torch, module)
    if not steps:
        raise ValueError("module computes no layer (its forward returns its input); expected "
                         f"a chain of {_SUPPORTED_TEXT}")
    layers, sources = [], []
    for name, kind, torch_layer in steps:
        layers.append(_qatfhe_layer(torch, name, kind, torch_layer))
        sources.append((name, torch_layer))
    net = nn.Sequential(*layers, seed=seed, input_shape=input_shape)
    for layer, (name, torch_layer) in zip(layers, sources):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer.weight = torch_layer.weight.detach().cpu().numpy()
            if layer.has_bias:
                layer.bias = torch_layer.bias.detach().cpu().numpy()
        elif isinstance(layer, nn.BatchNorm2d):
            for pname in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                value = getattr(torch_layer, pname)
                if value is not None:
                    setattr(layer, pname, value.detach().cpu().numpy().astype(np.float32)
                            .reshape(getattr(layer, pname).shape))
    return net


def _trace_chain(torch, module):
    """[(name, kind, torch layer or None)] of the module's forward, refusing non-chains."""
    import torch.fx as fx
    try:
        graph_module = fx.symbolic_trace(module)
    except Exception as exc:  # fx raises many types (TraceError, TypeError ...)
        raise ValueError(f"cannot trace {type(module).__name__}.forward with torch.fx "
                         f"({type(exc).__name__}: {exc}); write the model as an nn.Sequential "
                         f"of {_SUPPORTED_TEXT}") from None
    nodes = list(graph_module.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ValueError(f"{type(module).__name__}.forward takes {len(inputs)} inputs; a chain "
                         f"of layers takes exactly one")
    current, steps = inputs[0], []
    for node in nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise ValueError(f"{type(module).__name__}.forward does not return the result "
                                 f"of its last layer (it returns {node.args[0]!r}); only a "
                                 f"single chain of layers is supported")
            break
        if node.op == "get_attr":
            raise ValueError(f"{_node_label(node)} reads a parameter or buffer directly; only "
                             f"whole layers ({_SUPPORTED_TEXT}) are supported")
        step = _describe_node(torch, graph_module, node)   # names an unsupported op first
        _check_chain_link(node, current, module)
        steps.append(step)
        current = node
    return steps


def _check_chain_link(node, current, module):
    where = _node_label(node)
    inputs = node.all_input_nodes
    if inputs != [current]:
        names = ", ".join(n.name for n in inputs) or "nothing"
        raise ValueError(f"{where} takes its input from {names}, not from the step just before "
                         f"it ({current.name}): branches, skip connections and multiple inputs "
                         f"are not supported, the forward must be a single chain of "
                         f"{_SUPPORTED_TEXT}")
    if len(current.users) != 1:
        users = ", ".join(n.name for n in current.users)
        raise ValueError(f"the output of {current.name} is used by {len(current.users)} steps "
                         f"({users}) in {type(module).__name__}.forward: branches are not "
                         f"supported, the forward must be a single chain of {_SUPPORTED_TEXT}")


def _node_label(node):
    if node.op == "call_module":
        return f"layer {node.target!r}"
    if node.op == "get_attr":
        return f"attribute {node.target!r}"
    target = getattr(node.target, "__name__", node.target)
    return f"operation {target!r} (node {node.name!r})"


def _describe_node(torch, graph_module, node):
    F = torch.nn.functional
    if node.op == "call_module":
        layer = graph_module.get_submodule(node.target)
        for kind in SUPPORTED_TORCH_LAYERS:
            if type(layer) is getattr(torch.nn, kind):
                return node.target, kind, layer
        raise ValueError(f"layer {node.target!r} ({type(layer).__name__}) is not supported; "
                         f"supported layers: {_SUPPORTED_TEXT}")
    args = list(node.args[1:])
    kwargs = dict(node.kwargs)
    if node.op == "call_function" and node.target in (torch.relu, F.relu) or (
            node.op == "call_method" and node.target == "relu"):
        return node.name, "ReLU", None
    if (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target == "flatten"):
        start = kwargs.get("start_dim", args[0] if args else 0)
        end = kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        if start != 1 or end != -1:
            raise ValueError(f"{_node_label(node)} flattens dims {start}..{end}; only "
                             f"flatten(x, 1) (whole samples) is supported")
        return node.name, "Flatten", None
    raise ValueError(f"{_node_label(node)} is not supported; supported layers: "
                     f"{_SUPPORTED_TEXT} (and the functional relu, flatten(x, 1))")


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _qatfhe_layer(torch, name, kind, layer):
    """The float qatfhe layer for one torch step, after checking what qatfhe cannot compute."""
    label = f"layer {name!r} ({kind})"
    if kind == "ReLU":
        return nn.ReLU()
    if kind == "Flatten":
        if layer is not None and (layer.start_dim != 1 or layer.end_dim != -1):
            raise ValueError(f"{label} has start_dim={layer.start_dim}, end_dim={layer.end_dim}; "
                             f"only Flatten() (start_dim=1, end_dim=-1) is supported")
        return nn.Flatten()
    if kind in ("Linear", "Conv2d", "BatchNorm2d"):
        _check_finite(torch, label, layer)
    if kind == "BatchNorm2d":
        return nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                              affine=layer.affine,
                              track_running_stats=layer.track_running_stats)
    if kind == "MaxPool2d":
        if _pair(layer.dilation) != (1, 1) or layer.ceil_mode or layer.return_indices:
            raise ValueError(f"{label} is supported with dilation=1, ceil_mode=False and "
                             f"return_indices=False only")
        stride = layer.stride if layer.stride is not None else layer.kernel_size
        return nn.MaxPool2d(_pair(layer.kernel_size), stride=_pair(stride),
                            padding=_pair(layer.padding))
    if kind == "Linear":
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if kind == "Conv2d":
        problems = []
        if _pair(layer.dilation) != (1, 1):
            problems.append(f"dilation={layer.dilation} (only 1)")
        if layer.padding_mode != "zeros":
            problems.append(f"padding_mode={layer.padding_mode!r} (only 'zeros')")
        padding = layer.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif all(k % 2 == 1 for k in layer.kernel_size) and _pair(layer.stride) == (1, 1):
                padding = tuple(k // 2 for k in layer.kernel_size)
            else:
                problems.append(f"padding={padding!r} with an even kernel or a stride")
        if problems:
            raise ValueError(f"{label} is not supported with " + ", ".join(problems))
        return nn.Conv2d(layer.in_channels, layer.out_channels, tuple(layer.kernel_size),
                         stride=tuple(layer.stride), padding=tuple(_pair(padding)),
                         bias=layer.bias is not None, groups=layer.groups)
    # AvgPool2d
    problems = []
    if layer.ceil_mode:
        problems.append("ceil_mode=True (only False)")
    if not layer.count_include_pad:
        problems.append("count_include_pad=False (only True)")
    if layer.divisor_override is not None:
        problems.append(f"divisor_override={layer.divisor_override} (only None)")
    if problems:
        raise ValueError(f"{label} is not supported with " + ", ".join(problems))
    stride = layer.stride if layer.stride is not None else layer.kernel_size
    return nn.AvgPool2d(_pair(layer.kernel_size), stride=_pair(stride),
                        padding=_pair(layer.padding))


def _check_finite(torch, label, layer):
    for pname in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(layer, pname, None)
        if value is not None and not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"{label} has NaN or infinite values in its {pname}; expected "
                             f"finite weights")


# ------------------------------------------------------------------ convert

class ConversionReport(list):
    """What convert() did, one entry per layer of the result: dicts with keys
    "action" ("replaced", "inserted" or "kept"), "position" (index path in the result, e.g.
    "3" or "2.block.1"), "before" (the layer of the source, None when inserted), "after"
    (the layer of the result) and "reason"."""

    def replaced(self):
        return [e for e in self if e["action"] == "replaced"]

    def inserted(self):
        return [e for e in self if e["action"] == "inserted"]

    def __str__(self):
        lines = []
        for e in self:
            before = "" if e["before"] is None else f"{e['before']!r} -> "
            lines.append(f"{e['position']:>6}  {e['action']:<8}  {before}{e['after']!r}"
                         f"{'  (' + e['reason'] + ')' if e['reason'] else ''}")
        return "\n".join(lines)


class _Options:
    def __init__(self, bit_width, weight_bit_width, weight_quant, act_quant, input_quant,
                 identity_quant, per_channel):
        from .quant import check_bit_width
        self.bit_width = check_bit_width(bit_width, "bit_width")
        self.weight_bit_width = self.bit_width if weight_bit_width is None else \
            check_bit_width(weight_bit_width, "weight_bit_width")
        if not isinstance(per_channel, (bool, np.bool_)):
            raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
        self.per_channel = bool(per_channel)
        self.weight_quant, self.act_quant = weight_quant, act_quant
        self.input_quant, self.identity_quant = input_quant, identity_quant
        # build each once now, so that a bad quantizer fails before any work, naming itself
        nn.QuantLinear(1, 1, **self.weights())
        nn.QuantReLU(act_quant=act_quant, bit_width=self.bit_width)
        nn.QuantIdentity(act_quant=input_quant, bit_width=self.bit_width)
        nn.QuantIdentity(act_quant=identity_quant, bit_width=self.bit_width)

    def weights(self):
        return dict(weight_quant=self.weight_quant, weight_bit_width=self.weight_bit_width,
                    bias_quant=None, weight_scaling_per_output_channel=self.per_channel)

    def identity(self, at_input, nonneg):
        """The QuantIdentity to insert: at the network input, before a tensor known to be
        non-negative, or before one that may be negative."""
        quant = self.input_quant if at_input else (
            self.act_quant if nonneg else self.identity_quant)
        return nn.QuantIdentity(act_quant=quant, bit_width=self.bit_width)


def convert(net_or_module, bit_width=3, weight_bit_width=None, *,
            weight_quant=Int8WeightPerTensorFloat, act_quant=Uint8ActPerTensorFloat,
            input_quant=CommonActQuant, identity_quant=Int8ActPerTensorFloat,
            per_channel=False, seed=None, input_shape=None):
    """The FHE-friendly (quantization-aware) counterpart of a float network.

    net_or_module: a qatfhe nn.Sequential, or a torch module accepted by from_torch.
    bit_width: activation bits (QuantReLU and inserted QuantIdentity layers).
    weight_bit_width: weight bits (default: bit_width).
    weight_quant: quantizer of the new QuantLinear / QuantConv2d weights.
    act_quant: quantizer of the new QuantReLU layers, and of an inserted QuantIdentity whose
        input is known to be non-negative.
    input_quant: quantizer of an inserted QuantIdentity whose input may be negative (the
        network input among them).
    per_channel: one weight scale per output channel.
    seed: seed of the new network (default: the source network's, 0 for a torch module).
    input_shape: (C, H, W) for the new network (default: the source network's, if known).

    Returns (net, report): a new network in training mode whose weights, biases and pruning
    masks are those of the source (quantizers already in it are kept with their state),
    ready for net.fit(...); and a ConversionReport listing what was replaced and inserted.
    See this module's docstring for the table and the choice of default quantizers."""
    opts = _Options(bit_width, weight_bit_width, weight_quant, act_quant, input_quant,
                    identity_quant, per_channel)
    if isinstance(net_or_module, nn.Sequential):
        source = net_or_module
    else:
        torch = _torch_if_module(net_or_module)
        if torch is None:
            raise TypeError(f"net_or_module must be a qatfhe nn.Sequential or a torch.nn.Module, "
                            f"got {type(net_or_module).__name__}")
        source = from_torch(net_or_module, seed=0 if seed is None else seed,
                            input_shape=input_shape)
    for name, data in source.named_parameters():
        if not np.isfinite(data).all():
            raise ValueError(f"net_or_module has NaN or infinite values in {name!r}; expected "
                             f"finite weights")
    report = ConversionReport()
    pairs = []
    layers, _ = _convert_chain(list(source), False, False, opts, report, pairs, "")
    if seed is None:
        seed = source.seed
    if input_shape is None:
        input_shape = _known_input_shape(source)
    net = nn.Sequential(*layers, seed=seed, input_shape=input_shape)
    _copy_state(source, net, pairs)
    net.train()
    return net, report


def _torch_if_module(obj):
    """torch if obj is a torch module (torch importable and obj an nn.Module), else None."""
    if "torch" not in type(obj).__module__ and not any(
            "torch" in c.__module__ for c in type(obj).__mro__):
        return None
    torch = _import_torch("convert")
    return torch if isinstance(obj, torch.nn.Module) else None


_NEEDS_CODES = (nn.Linear, nn.QuantLinear, nn.Conv2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten,
                nn.Reshape, nn.Transpose, nn.Residual)


def _convert_chain(layers, quantized, nonneg, opts, report, pairs, prefix):
    """Converted copies of `layers`; quantized / nonneg describe the incoming tensor (made by a
    quantizer / known to be >= 0).  Returns (new layers, (quantized, nonneg) at the end)."""
    out = []

    def add(action, before, after, reason):
        report.append({"action": action, "position": f"{prefix}{len(out)}", "before": before,
                       "after": after, "reason": reason})
        out.append(after)

    for layer in layers:
        if isinstance(layer, _NEEDS_CODES) and not quantized:
            at_input = not out and not prefix
            where = "the network input" if at_input else f"the input of {type(layer).__name__}"
            add("inserted", None, opts.identity(at_input, nonneg),
                f"quantizes {where}: Concrete-ML needs integers there")
            quantized = True
        if isinstance(layer, (nn.QuantIdentity, nn.QuantReLU)):
            new = _fresh(layer)
            add("kept", layer, new, "already a quantizer")
            pairs.append((layer, new))
            quantized = True
            nonneg = isinstance(layer, nn.QuantReLU) or not layer.act_quant.signed
        elif isinstance(layer, (nn.QuantLinear, nn.QuantConv2d)):
            new = _fresh(layer)
            add("kept", layer, new, "already quantization-aware")
            pairs.append((layer, new))
            quantized = nonneg = False
        elif isinstance(layer, nn.Linear):
            new = nn.QuantLinear(layer.in_features, layer.out_features, bias=layer.has_bias,
                                 **opts.weights())
            add("replaced", layer, new, "")
            pairs.append((layer, new))
            quantized = nonneg = False
        elif isinstance(layer, nn.Conv2d):
            new = nn.QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                 stride=layer.stride, padding=layer.padding,
                                 bias=layer.has_bias, groups=layer.groups, **opts.weights())
            add("replaced", layer, new, "")
            pairs.append((layer, new))
            quantized = nonneg = False
        elif isinstance(layer, nn.ReLU):
            new = nn.QuantReLU(act_quant=opts.act_quant, bit_width=opts.bit_width)
            add("replaced", layer, new, "")
            quantized = nonneg = True
        elif isinstance(layer, nn.AvgPool2d):
            add("kept", layer, _fresh(layer), "")
            add("inserted", None, opts.identity(False, nonneg),
                "AvgPool2d -> AvgPool2d + QuantIdentity: requantizes the average")
            quantized = True
        elif isinstance(layer, (nn.Flatten, nn.Reshape, nn.Transpose, nn.MaxPool2d)):
            add("kept", layer, _fresh(layer), "")
        elif isinstance(layer, nn.BatchNorm2d):
            new = _fresh(layer)
            add("kept", layer, new, "folded into the next table lookup when compiled")
            pairs.append((layer, new))
            quantized = nonneg = False
        elif isinstance(layer, nn.Residual):
            quant = _fresh(layer.quant)
            pairs.append((layer.quant, quant))
            q_nonneg = isinstance(quant, nn.QuantReLU) or not quant.act_quant.signed
            position = f"{prefix}{len(out)}"
            block, _ = _convert_chain(layer.block, True, q_nonneg, opts, report, pairs,
                                      f"{position}.block.")
            new = nn.Residual(*block, quant=quant)
            add("kept", layer, new, "residual add; its shared QuantIdentity is kept, its block "
                "converted")
            quantized, nonneg = True, q_nonneg
        else:
            raise TypeError(f"cannot convert layer {layer!r}")
    return out, (quantized, nonneg)


def _fresh(layer):
    """A new, unattached layer with the same configuration."""
    if isinstance(layer, nn.Reshape):
        return nn.Reshape(*layer.shape)
    return nn.layer_from_config(layer.config())


def _known_input_shape(net):
    if getattr(net, "_features", None) is not None:
        return None
    shape = tuple(net.input_shape)
    return shape if min(shape) > 0 else None


def _copy_state(source, net, pairs):
    """Copy every tensor (weights, biases, quantizer thresholds and statistics) and pruning
    mask of each source layer into its counterpart."""
    for old, new in pairs:
        prefix = f"{old.index}."
        for name, entry in source._tensors.items():
            if not name.startswith(prefix):
                continue
            target = f"{new.index}.{name[len(prefix):]}"
            if target not in net._tensors:
                continue
            net._tensors[target]["data"][...] = entry["data"]
            if entry["kind"] == "param":
                mask = source._core.get_mask(name)
                if mask is not None:
                    net._core.set_mask(target, mask)


# ------------------------------------------------------------------ to_torch

def to_torch(net, fake_quant=True):
    """The network as a torch.nn.Sequential (float32, CPU), forward equal to net's eval mode.

    fake_quant=True: QuantIdentity / QuantReLU become FrozenQuant modules (round half to
    even, clamp, times the scale the network uses in eval mode now) and QuantLinear /
    QuantConv2d hold their fake-quantized weights s_w * q_w.  fake_quant=False: the float
    network underneath (quantizers dropped, QuantReLU -> ReLU, raw weights).
    Reshape, Transpose and Residual become small modules of the same names."""
    torch = _import_torch("to_torch")
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"net must be a qatfhe nn.Sequential, got {type(net).__name__}")
    if not isinstance(fake_quant, (bool, np.bool_)):
        raise TypeError(f"fake_quant must be True or False, got {fake_quant!r}")
    modules = _torch_modules(torch)
    out = torch.nn.Sequential(*[_torch_layer(torch, modules, layer, bool(fake_quant))
                                for layer in net])
    return out.eval()


def _torch_layer(torch, modules, layer, fake_quant):
    tnn = torch.nn
    if isinstance(layer, (nn.QuantIdentity, nn.QuantReLU)):
        relu = isinstance(layer, nn.QuantReLU)
        if not fake_quant:
            return tnn.ReLU() if relu else tnn.Identity()
        q = layer.act_quant
        return modules["FrozenQuant"](float(layer.scale()), q.qmin, q.qmax, relu)
    if isinstance(layer, nn.ReLU):
        return tnn.ReLU()
    if isinstance(layer, (nn.Linear, nn.QuantLinear)):
        new = tnn.Linear(layer.in_features, layer.out_features, bias=layer.has_bias)
    elif isinstance(layer, nn.Conv2d):
        new = tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                         stride=layer.stride, padding=layer.padding, bias=layer.has_bias,
                         groups=layer.groups)
    elif isinstance(layer, nn.AvgPool2d):
        return tnn.AvgPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding,
                             count_include_pad=True)
    elif isinstance(layer, nn.MaxPool2d):
        return tnn.MaxPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding)
    elif isinstance(layer, nn.BatchNorm2d):
        new = tnn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                              affine=layer.affine, track_running_stats=layer.track_running_stats)
        with torch.no_grad():
            for pname in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                target, value = getattr(new, pname), getattr(layer, pname)
                if target is not None and value is not None:
                    target.copy_(torch.from_numpy(np.asarray(value)).reshape(target.shape)
                                 .to(target.dtype))
        return new
    elif isinstance(layer, nn.Flatten):
        return tnn.Flatten()
    elif isinstance(layer, nn.Reshape):
        return modules["Reshape"](layer.shape)
    elif isinstance(layer, nn.Transpose):
        return modules["Transpose"](layer.dim0, layer.dim1)
    elif isinstance(layer, nn.Residual):
        return modules["Residual"](_torch_layer(torch, modules, layer.quant, fake_quant),
                                   [_torch_layer(torch, modules, l, fake_quant)
                                    for l in layer.block])
    else:
        raise TypeError(f"cannot express layer {layer!r} in torch")
    weight = np.array(layer.weight, dtype=np.float32)
    if fake_quant and isinstance(layer, (nn.QuantLinear, nn.QuantConv2d)):
        codes, scale = layer.quant_weight()
        scale = np.asarray(scale, dtype=np.float32).reshape((-1,) + (1,) * (weight.ndim - 1))
        weight = (codes.astype(np.float32) * scale).astype(np.float32)
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(weight))
        if layer.has_bias:
            new.bias.copy_(torch.from_numpy(np.array(layer.bias, dtype=np.float32)))
    return new


_MODULE_CACHE = {}


def _torch_modules(torch):
    """The small torch modules to_torch needs, defined once torch is imported."""
    if _MODULE_CACHE:
        return _MODULE_CACHE

    class FrozenQuant(torch.nn.Module):
        """Fake quantization with a fixed scale: s * clamp(round(x / s), qmin, qmax),
        after a ReLU if relu (round half to even)."""

        def __init__(self, scale, qmin, qmax, relu=False):
            super().__init__()
            self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
            self.qmin, self.qmax, self.relu = int(qmin), int(qmax), bool(relu)

        def forward(self, x):
            if self.relu:
                x = torch.relu(x)
            return torch.clamp(torch.round(x / self.scale), self.qmin, self.qmax) * self.scale

        def extra_repr(self):
            return (f"scale={float(self.scale):.6g}, qmin={self.qmin}, qmax={self.qmax}, "
                    f"relu={self.relu}")

    class Reshape(torch.nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = tuple(shape)

        def forward(self, x):
            return x.reshape(x.shape[0], *self.shape)

    class Transpose(torch.nn.Module):
        def __init__(self, dim0, dim1):
            super().__init__()
            self.dim0, self.dim1 = dim0, dim1

        def forward(self, x):
            return torch.transpose(x, self.dim0, self.dim1)

    class Residual(torch.nn.Module):
        """y = q(x) + q(block(q(x))) with one shared quantizer q."""

        def __init__(self, quant, block):
            super().__init__()
            self.quant = quant
            self.block = torch.nn.Sequential(*block)

        def forward(self, x):
            begin = self.quant(x)
            return begin + self.quant(self.block(begin))

    _MODULE_CACHE.update(FrozenQuant=FrozenQuant, Reshape=Reshape, Transpose=Transpose,
                         Residual=Residual)
    return _MODULE_CACHE
