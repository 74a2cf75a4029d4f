"""Layers and networks with PyTorch / Brevitas names, trained by the C core.

Layers are descriptions until they are placed in a `Sequential`, which builds one
C network owning every parameter, gradient and optimizer state.  From then on
`layer.weight` and `layer.bias` are writable NumPy views into the C memory."""
import weakref

import numpy as np

from . import _core
from . import _checks
from .quant import (CommonActQuant, CommonWeightQuant, Int8ActPerTensorFloat,
                    Int8WeightPerTensorFloat, QuantSpec, Quantizer, Uint8ActPerTensorFloat,
                    resolve)

_live_networks = weakref.WeakSet()

__all__ = ["Module", "Linear", "ReLU", "QuantIdentity", "QuantLinear", "QuantReLU", "Sequential",
           "CrossEntropyLoss", "CommonWeightQuant", "CommonActQuant", "Int8WeightPerTensorFloat",
           "Int8ActPerTensorFloat", "Uint8ActPerTensorFloat", "QuantSpec", "Quantizer", "init"]


class Module:
    """Base of every layer: knows its network and position once placed in one."""

    net = None
    index = None

    def __init_subclass__(cls, **kwargs):
        """Constructor errors start with the layer's class: "Conv2d: stride must be ..."."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        def checked_init(self, *args, _init=init, **kw):
            try:
                _init(self, *args, **kw)
            except (TypeError, ValueError) as exc:
                prefix = f"{cls.__name__}: "
                if str(exc).startswith(prefix) or type(self) is not cls:
                    raise
                raise type(exc)(prefix + str(exc)) from None
        checked_init.__doc__ = init.__doc__
        checked_init.__wrapped__ = init
        cls.__init__ = checked_init

    def _core_spec(self):
        raise NotImplementedError

    def _core_specs(self, start):
        """C layer specs of this module placed at C index `start` (one, or several)."""
        return [self._core_spec()]

    def _attach_all(self, net, start):
        """Attach this module (and any children) from C index `start`; returns the next index."""
        self._attach(net, start)
        return start + 1

    def config(self):
        """The constructor arguments, JSON-serialisable (used by save/load)."""
        raise NotImplementedError

    def _attach(self, net, index):
        if self.net is not None:
            raise ValueError(f"{self!r} already belongs to a network; create a new layer")
        self.net, self.index = net, index
        net._c_layers.append(self)

    def _tensor(self, suffix):
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__} is not part of a network yet; place it "
                               f"in nn.Sequential(...) first")
        entry = self.net._tensors.get(f"{self.index}.{suffix}")
        return None if entry is None else entry["data"]

    def _set_tensor(self, suffix, value):
        target = self._tensor(suffix)
        if target is None:
            raise AttributeError(f"{type(self).__name__} has no {suffix}")
        value = _checks.float_array(value, suffix)
        if value.shape != target.shape:
            raise ValueError(f"{suffix} must have shape {target.shape}, got {value.shape}")
        self.net._core.write_tensor(f"{self.index}.{suffix}", value)   # waits for a fit

    def __repr__(self):
        parts = []
        for key, value in self.config().items():
            if key in ("type", "return_quant_tensor"):
                continue
            if isinstance(value, dict) and "scaling_impl_type" in value:
                value = QuantSpec(**value)
            parts.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class _WeightLayer(Module):
    def __init__(self, in_features, out_features, bias):
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.out_features = _checks.positive_int(out_features, "out_features")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self.has_bias = bool(bias)

    weight = property(lambda self: self._tensor("weight"),
                      lambda self, v: self._set_tensor("weight", v),
                      doc="float32 (out_features, in_features), a view into the network")
    bias = property(lambda self: self._tensor("bias") if self.has_bias else None,
                    lambda self, v: self._set_tensor("bias", v),
                    doc="float32 (out_features,) or None")

    @property
    def weight_mask(self):
        """uint8 (out_features, in_features) pruning mask (1 = kept), or None."""
        if self.net is None:
            return None
        return self.net._core.get_mask(f"{self.index}.weight")

    @property
    def weight_grad(self):
        return self.net._tensors[f"{self.index}.weight"]["grad"]

    @property
    def bias_grad(self):
        return self.net._tensors[f"{self.index}.bias"]["grad"] if self.has_bias else None


class _A2Q:
    """What QuantLinear and QuantConv2d with accumulator_bit_width=P add (qatfhe.a2q)."""

    weight_norm = property(lambda self: self._tensor("weight_norm"),
                           lambda self, v: self._set_tensor("weight_norm", v),
                           doc="float32 (out,) learned L1 norms g of the weights (A2Q), or None")

    def accumulator_budget(self):
        """None, or (T, N, signed): the L1 budget of every output channel's integer weights
        and the input codes' bits and sign it was derived from (qatfhe.a2q)."""
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__} is not part of a network yet")
        return self.net._core.a2q_budget(self.index)

    def set_accumulator_bit_width(self, bits, relax=1.0):
        """Change the accumulator budget P of a layer created with accumulator_bit_width,
        between training steps (a schedule that tightens it gradually trains better than
        the final budget from the start; qatfhe.a2q).  relax >= 1 multiplies the L1 budget
        T during such a schedule; the guarantee holds once it is back to 1."""
        if self.accumulator_bit_width is None:
            raise ValueError(f"{type(self).__name__} was created without accumulator_bit_width; "
                             f"create it with one to change it later")
        bits = _checks.positive_int(bits, "accumulator_bit_width", 2)
        if bits > 32:
            raise ValueError(f"accumulator_bit_width must be an integer in [2, 32], got {bits}")
        relax = _checks.positive_float(relax, "relax")
        if not 1.0 <= relax <= 1e9:
            raise ValueError(f"relax must be in [1, 1e9], got {relax}")
        self.net._core.set_accumulator_bits(self.index, bits, relax)
        self.accumulator_bit_width = bits
        self._a2q_relax = relax


class Linear(_WeightLayer):
    """torch.nn.Linear: y = x W^T + b, W (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)

    def _core_spec(self):
        return {"kind": _core.LAYER_LINEAR, "in_features": self.in_features,
                "out_features": self.out_features, "bias": int(self.has_bias)}

    def config(self):
        return {"type": "Linear", "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.has_bias}


class QuantLinear(_A2Q, _WeightLayer):
    """brevitas.nn.QuantLinear: weights fake-quantized by `weight_quant`, float bias."""

    def __init__(self, in_features, out_features, bias=True, weight_quant=Int8WeightPerTensorFloat,
                 weight_bit_width=None, bias_quant=None, return_quant_tensor=False,
                 weight_narrow_range=None, weight_scaling_const=None,
                 weight_scaling_per_output_channel=False, accumulator_bit_width=None,
                 accumulator_bound="l1", accumulator_rounding="trunc"):
        super().__init__(in_features, out_features, bias)
        _init_weight_quant(self, weight_quant, weight_bit_width, bias_quant, return_quant_tensor,
                           weight_narrow_range, weight_scaling_const,
                           weight_scaling_per_output_channel, accumulator_bit_width,
                           accumulator_bound, accumulator_rounding)

    def _core_spec(self):
        return {"kind": _core.LAYER_LINEAR, "in_features": self.in_features,
                "out_features": self.out_features, "bias": int(self.has_bias),
                "weight_quant": self.weight_quant.to_core(), "per_channel": int(self.per_channel),
                "accumulator_bits": self.accumulator_bit_width or 0,
                "accumulator_split": int(self.accumulator_bound == "split"),
                "accumulator_round": int(self.accumulator_rounding == "round")}

    def config(self):
        return _a2q_config(self, {
            "type": "QuantLinear", "in_features": self.in_features,
            "out_features": self.out_features, "bias": self.has_bias,
            "weight_quant": self.weight_quant.to_dict(),
            "weight_scaling_per_output_channel": self.per_channel,
            "return_quant_tensor": self.return_quant_tensor})

    def quant_weight(self):
        """(codes int32 (out, in), scale) of the current weights, as the forward uses them:
        scale is a float32 scalar, or a float32 (out,) array for a per-channel quantizer."""
        return _quant_weight(self)


def _init_weight_quant(layer, weight_quant, weight_bit_width, bias_quant, return_quant_tensor,
                       narrow_range, scaling_const, per_channel, accumulator_bit_width=None,
                       accumulator_bound="l1", accumulator_rounding="trunc"):
    if bias_quant is not None:
        raise NotImplementedError("bias quantization is not supported: use bias_quant=None "
                                  "(the bias stays float and joins the table lookup)")
    layer.weight_quant = resolve(weight_quant, "weight_quant", bit_width=weight_bit_width,
                                 narrow_range=narrow_range, scaling_const=scaling_const)
    if layer.weight_quant.kind == "learned":
        raise ValueError("weight_quant must use a constant or abs-max (stats) scale, not "
                         "runtime statistics")
    if not isinstance(per_channel, (bool, np.bool_)):
        raise TypeError(f"weight_scaling_per_output_channel must be True or False, got "
                        f"{per_channel!r}")
    layer.per_channel = bool(per_channel)
    layer.return_quant_tensor = bool(return_quant_tensor)
    layer.accumulator_bit_width = None
    if accumulator_bit_width is not None:
        layer.accumulator_bit_width = _checks.positive_int(
            accumulator_bit_width, "accumulator_bit_width", 2)
        if layer.accumulator_bit_width > 32:
            raise ValueError(f"accumulator_bit_width must be an integer in [2, 32], got "
                             f"{accumulator_bit_width!r}")
    if accumulator_bound not in ("l1", "split"):      # qatfhe.a2q: the two proven bounds
        raise ValueError(f'accumulator_bound must be "l1" or "split", got {accumulator_bound!r}')
    layer.accumulator_bound = accumulator_bound
    if accumulator_rounding not in ("trunc", "round"):      # qatfhe.a2q: the codes' rounding
        raise ValueError(f'accumulator_rounding must be "trunc" or "round", got '
                         f'{accumulator_rounding!r}')
    layer.accumulator_rounding = accumulator_rounding


def _a2q_config(layer, config):
    if layer.accumulator_bit_width is not None:
        config["accumulator_bit_width"] = layer.accumulator_bit_width
        if layer.accumulator_bound != "l1":
            config["accumulator_bound"] = layer.accumulator_bound
        if layer.accumulator_rounding != "trunc":
            config["accumulator_rounding"] = layer.accumulator_rounding
    return config


def _quant_weight(layer):
    if getattr(layer, "accumulator_bit_width", None):
        codes, scales = layer.net._core.weight_codes(layer.index)
        per_row = layer.per_channel or layer.weight_quant.kind == "absmax"   # one g per row
        return codes.astype(np.int32), (scales if per_row else scales[0])
    scales = layer.net._core.weight_scale(layer.index)
    q = layer.weight_quant
    w = layer.weight
    shape = (-1,) + (1,) * (w.ndim - 1)
    codes = np.clip(np.rint(w / scales.reshape(shape)), q.qmin, q.qmax).astype(np.int32)
    return codes, (scales if getattr(layer, "per_channel", False) else scales[0])


class ReLU(Module):
    """torch.nn.ReLU."""

    def _core_spec(self):
        return {"kind": _core.LAYER_RELU}

    def config(self):
        return {"type": "ReLU"}


class _ActQuantLayer(Module):
    _default_quant = None
    _relu = 0

    def __init__(self, act_quant=None, bit_width=None, return_quant_tensor=False,
                 narrow_range=None, signed=None, scaling_const=None, collect_stats_steps=None):
        act_quant = self._default_quant if act_quant is None else act_quant
        self.act_quant = resolve(act_quant, "act_quant", bit_width=bit_width,
                                 narrow_range=narrow_range, signed=signed,
                                 scaling_const=scaling_const,
                                 collect_stats_steps=collect_stats_steps)
        if self.act_quant.kind == "absmax":
            raise ValueError("act_quant must use a constant scale or runtime statistics "
                             "(parameter_from_stats), not weight abs-max statistics")
        if self.act_quant.collect_stats_steps < 1:
            raise ValueError("collect_stats_steps must be >= 1")
        self.return_quant_tensor = bool(return_quant_tensor)

    def _core_spec(self):
        return {"kind": _core.LAYER_ACT_QUANT, "act_quant": self.act_quant.to_core(),
                "relu": self._relu}

    def config(self):
        return {"type": type(self).__name__, "act_quant": self.act_quant.to_dict(),
                "return_quant_tensor": self.return_quant_tensor}

    def scale(self):
        """The scale eval mode uses now (after the statistics phase: |T| / int_threshold)."""
        return self.net._core.act_scale(self.index)

    @property
    def threshold(self):
        """The learned threshold parameter T (a (1,) view), or None for a constant quantizer."""
        return self._tensor("act_quant.threshold")


class QuantIdentity(_ActQuantLayer):
    """brevitas.nn.QuantIdentity: quantizes its input (default Int8ActPerTensorFloat)."""
    _default_quant = Int8ActPerTensorFloat
    _relu = 0


class QuantReLU(_ActQuantLayer):
    """brevitas.nn.QuantReLU: ReLU, then its quantizer (default Uint8ActPerTensorFloat)."""
    _default_quant = Uint8ActPerTensorFloat
    _relu = 1


def _pair(value, name, minimum):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return (_checks.positive_int(value[0], name, minimum),
                _checks.positive_int(value[1], name, minimum))
    value = _checks.positive_int(value, name, minimum)
    return (value, value)


class Conv2d(Module):
    """torch.nn.Conv2d on NCHW samples (dilation=1, zero padding); groups as in torch
    (groups=in_channels: depthwise), weight (out_channels, in_channels / groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 groups=1):
        self.in_channels = _checks.positive_int(in_channels, "in_channels")
        self.out_channels = _checks.positive_int(out_channels, "out_channels")
        self.groups = _checks.positive_int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"in_channels ({self.in_channels}) and out_channels "
                             f"({self.out_channels}) must both be divisible by groups "
                             f"({self.groups})")
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self.has_bias = bool(bias)

    weight = _WeightLayer.weight
    bias = _WeightLayer.bias
    weight_mask = _WeightLayer.weight_mask
    weight_grad = _WeightLayer.weight_grad
    bias_grad = _WeightLayer.bias_grad

    def _core_spec(self):
        return {"kind": _core.LAYER_CONV2D, "in_features": self.in_channels,
                "out_features": self.out_channels, "bias": int(self.has_bias),
                "kernel": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "groups": self.groups}

    def config(self):
        config = {"type": "Conv2d", "in_channels": self.in_channels,
                  "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                  "stride": list(self.stride), "padding": list(self.padding),
                  "bias": self.has_bias}
        if self.groups != 1:      # saved files without groups load as groups=1
            config["groups"] = self.groups
        return config


class QuantConv2d(_A2Q, Conv2d):
    """brevitas.nn.QuantConv2d: weights fake-quantized by `weight_quant` (per tensor, or per
    output channel with weight_scaling_per_output_channel=True), float bias."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 weight_quant=Int8WeightPerTensorFloat, weight_bit_width=None, bias_quant=None,
                 return_quant_tensor=False, weight_narrow_range=None, weight_scaling_const=None,
                 weight_scaling_per_output_channel=False, accumulator_bit_width=None, groups=1,
                 accumulator_bound="l1", accumulator_rounding="trunc"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, groups)
        _init_weight_quant(self, weight_quant, weight_bit_width, bias_quant, return_quant_tensor,
                           weight_narrow_range, weight_scaling_const,
                           weight_scaling_per_output_channel, accumulator_bit_width,
                           accumulator_bound, accumulator_rounding)

    def _core_spec(self):
        spec = super()._core_spec()
        spec.update(weight_quant=self.weight_quant.to_core(), per_channel=int(self.per_channel),
                    accumulator_bits=self.accumulator_bit_width or 0,
                    accumulator_split=int(self.accumulator_bound == "split"),
                    accumulator_round=int(self.accumulator_rounding == "round"))
        return spec

    def config(self):
        config = super().config()
        config.update(type="QuantConv2d", weight_quant=self.weight_quant.to_dict(),
                      weight_scaling_per_output_channel=self.per_channel,
                      return_quant_tensor=self.return_quant_tensor)
        return _a2q_config(self, config)

    def quant_weight(self):
        """(codes int32 (out, in, kh, kw), scale): scale float32, or (out,) per channel."""
        return _quant_weight(self)


class AvgPool2d(Module):
    """torch.nn.AvgPool2d (count_include_pad=True).  For FHE put a QuantIdentity after it:
    on quantized input it is an integer window sum followed by one table lookup."""

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)

    def _core_spec(self):
        return {"kind": _core.LAYER_AVGPOOL2D, "kernel": self.kernel_size, "stride": self.stride,
                "padding": self.padding}

    def config(self):
        return {"type": "AvgPool2d", "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding)}


class MaxPool2d(Module):
    """torch.nn.MaxPool2d (dilation 1, floor mode; padding counts as -inf, at most half the
    kernel).  Gradients go to the first maximum of each window, as torch.  On quantized input
    (after a QuantIdentity / QuantReLU) it carries the integer codes: the integer circuit takes
    maxima of codes, exact because the quantizer is monotone."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        if _pair(dilation, "dilation", 1) != (1, 1) or return_indices or ceil_mode:
            raise NotImplementedError("only dilation=1, return_indices=False and "
                                      "ceil_mode=False are supported")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding must be at most half the kernel, got padding "
                             f"{self.padding} for kernel_size {self.kernel_size}")

    def _core_spec(self):
        return {"kind": _core.LAYER_MAXPOOL2D, "kernel": self.kernel_size, "stride": self.stride,
                "padding": self.padding}

    def config(self):
        return {"type": "MaxPool2d", "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding)}


class BatchNorm2d(Module):
    """torch.nn.BatchNorm2d over the channels of NCHW samples (or the features of (F,)
    samples).  Training normalises with the batch mean and biased variance and updates the
    running statistics (unbiased variance) by `momentum` (None: cumulative average); eval
    mode uses the running statistics (or the batch's with track_running_stats=False).
    weight and bias are trained by the optimizers; running_mean, running_var and
    num_batches_tracked are buffers, saved and loaded with the network.  Compiled, it is
    folded into the table lookup after it (see csrc/batchnorm.h for the float32 rule)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        self.num_features = _checks.positive_int(num_features, "num_features")
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.floating)) \
                or not (np.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        if momentum is not None and (isinstance(momentum, (bool, np.bool_)) or not isinstance(
                momentum, (int, float, np.floating)) or not 0 <= momentum <= 1):
            raise ValueError(f"momentum must be a number in [0, 1] or None, got {momentum!r}")
        for name, value in (("affine", affine), ("track_running_stats", track_running_stats)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)

    def _core_spec(self):
        return {"kind": _core.LAYER_BATCHNORM2D, "in_features": self.num_features,
                "eps": self.eps, "momentum": -1.0 if self.momentum is None else self.momentum,
                "affine": int(self.affine), "track_running_stats": int(self.track_running_stats)}

    def config(self):
        return {"type": "BatchNorm2d", "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine,
                "track_running_stats": self.track_running_stats}

    weight = property(lambda self: self._tensor("weight"),
                      lambda self, v: self._set_tensor("weight", v),
                      doc="float32 (num_features,) gamma, or None without affine")
    bias = property(lambda self: self._tensor("bias"),
                    lambda self, v: self._set_tensor("bias", v),
                    doc="float32 (num_features,) beta, or None without affine")
    running_mean = property(lambda self: self._tensor("running_mean"),
                            lambda self, v: self._set_tensor("running_mean", v))
    running_var = property(lambda self: self._tensor("running_var"),
                           lambda self, v: self._set_tensor("running_var", v))
    num_batches_tracked = property(lambda self: self._tensor("num_batches_tracked"),
                                   lambda self, v: self._set_tensor("num_batches_tracked", v),
                                   doc="float32 (1,) count of training batches")

    @property
    def weight_grad(self):
        return self.net._tensors[f"{self.index}.weight"]["grad"] if self.affine else None

    @property
    def bias_grad(self):
        return self.net._tensors[f"{self.index}.bias"]["grad"] if self.affine else None


class Flatten(Module):
    """torch.nn.Flatten(): each sample (C, H, W) becomes (C * H * W,)."""

    def __init__(self, start_dim=1, end_dim=-1):
        if start_dim != 1 or end_dim != -1:
            raise ValueError("Flatten supports start_dim=1, end_dim=-1 (whole samples) only")

    def _core_spec(self):
        return {"kind": _core.LAYER_RESHAPE, "shape": (0, 0, 0)}

    def config(self):
        return {"type": "Flatten"}


class Reshape(Module):
    """x.reshape(n, *shape): a new per-sample shape of 1 to 3 dims with the same size."""

    def __init__(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"Reshape takes 1 to 3 per-sample dims, got {shape!r}")
        self.shape = tuple(_checks.positive_int(s, "shape") for s in shape)

    def _core_spec(self):
        full = self.shape + (1,) * (3 - len(self.shape))
        return {"kind": _core.LAYER_RESHAPE, "shape": full}

    def config(self):
        return {"type": "Reshape", "shape": list(self.shape)}


class Transpose(Module):
    """torch.transpose(x, dim0, dim1) on NCHW batches: dims 1..3 (0 is the batch)."""

    def __init__(self, dim0, dim1):
        self.dim0 = _checks.positive_int(dim0, "dim0")
        self.dim1 = _checks.positive_int(dim1, "dim1")
        if self.dim0 > 3 or self.dim1 > 3:
            raise ValueError(f"Transpose dims must be in 1..3 (dim 0 is the batch), got "
                             f"({dim0}, {dim1})")

    def _core_spec(self):
        return {"kind": _core.LAYER_TRANSPOSE, "dims": (self.dim0, self.dim1)}

    def config(self):
        return {"type": "Transpose", "dim0": self.dim0, "dim1": self.dim1}


class Residual(Module):
    """y = Q(x) + Q(block(Q(x))): a residual block whose add is FHE-friendly.

    Both operands of the add pass through one activation quantizer `quant` (a
    QuantIdentity, default Int8ActPerTensorFloat at 8 bits), as Concrete-ML requires, so
    the add is an exact sum of integer codes with one scale.  The block sees Q(x)."""

    def __init__(self, *block, quant=None):
        if len(block) == 1 and isinstance(block[0], (list, tuple)):
            block = tuple(block[0])
        for i, layer in enumerate(block):
            if not isinstance(layer, Module) or isinstance(layer, (Sequential, Residual)):
                raise TypeError(f"block layer {i} must be a qatfhe.nn layer, got {layer!r}")
        quant = QuantIdentity() if quant is None else quant
        if not isinstance(quant, QuantIdentity):
            raise TypeError(f"quant must be a QuantIdentity shared by both operands, got {quant!r}")
        self.quant = quant
        self.block = list(block)

    def __getitem__(self, i):
        return self.block[i]

    def __len__(self):
        return len(self.block)

    def _core_specs(self, start):
        specs = [self.quant._core_spec()]
        for layer in self.block:
            specs.extend(layer._core_specs(start + len(specs)))
        specs.append({"kind": _core.LAYER_RESIDUAL_ADD, "begin": start})
        return specs

    def _attach_all(self, net, start):
        index = self.quant._attach_all(net, start)
        for layer in self.block:
            index = layer._attach_all(net, index)
        self._attach(net, index)
        return index + 1

    def config(self):
        return {"type": "Residual", "quant": self.quant.config(),
                "block": [layer.config() for layer in self.block]}

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.block)
        return f"Residual({inner}, quant={self.quant!r})"


_LAYER_TYPES = {"Linear": Linear, "QuantLinear": QuantLinear, "ReLU": ReLU,
                "QuantIdentity": QuantIdentity, "QuantReLU": QuantReLU, "Conv2d": Conv2d,
                "QuantConv2d": QuantConv2d, "AvgPool2d": AvgPool2d, "Flatten": Flatten,
                "Reshape": Reshape, "Transpose": Transpose, "MaxPool2d": MaxPool2d,
                "BatchNorm2d": BatchNorm2d}


def layer_from_config(config):
    """Rebuild a layer from Module.config()."""
    if not isinstance(config, dict):
        raise ValueError(f"unknown layer description {config!r}")
    if config.get("type") == "Residual":
        return Residual(*[layer_from_config(c) for c in config["block"]],
                        quant=layer_from_config(config["quant"]))
    if not isinstance(config, dict) or config.get("type") not in _LAYER_TYPES:
        raise ValueError(f"unknown layer description {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    if config["type"] == "Reshape":
        return Reshape(*kwargs["shape"])
    if "weight_quant" in kwargs:
        kwargs["weight_quant"] = QuantSpec(**kwargs["weight_quant"])
    if "act_quant" in kwargs:
        kwargs["act_quant"] = QuantSpec(**kwargs["act_quant"])
    return _LAYER_TYPES[config["type"]](**kwargs)


class _NetOutput(np.ndarray):
    """Logits that remember the network whose training forward made them."""
    _qatfhe_net = None


class CrossEntropyLoss:
    """torch.nn.CrossEntropyLoss (mean over the batch) for logits from a network.

    `loss = CrossEntropyLoss()(net(X), y)` gives a float; `loss.backward()` then adds
    the gradients of that training forward into the network's parameters."""

    def __call__(self, logits, y):
        net = getattr(logits, "_qatfhe_net", None)
        forward_id = getattr(logits, "_qatfhe_forward", None)
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2:
            raise ValueError(f"logits must be 2-dimensional (n, classes), got shape {logits.shape}")
        y = _checks.labels(y, len(logits), logits.shape[1])
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return Loss(-log_probs[np.arange(len(y)), y].mean(), net, y, forward_id)


class Loss(float):
    """A loss value whose backward() runs the network's backward pass.

    It remembers the forward it came from: backward() raises RuntimeError when another
    forward (or fit, or an eval-mode predict) has replaced that forward's activations, or
    when it already ran once."""

    def __new__(cls, value, net, labels, forward_id=None):
        obj = super().__new__(cls, value)
        obj._net, obj._labels, obj._forward = net, labels, forward_id
        return obj

    def backward(self, input_grad=False):
        """Add the gradients of this loss into the network's parameters.  input_grad=True
        also returns d loss / d X, shaped as the X of the forward (straight through the
        quantizers, as autograd with Brevitas gives X.grad)."""
        if self._net is None:
            raise RuntimeError("these logits did not come from a network's training forward; "
                               "call net.train() and net(X) first")
        net = self._net
        net._check_current(self._forward)
        if input_grad:
            dx = net._core.backward_ce_dx(self._labels)[2]
        else:
            net._core.backward_ce(self._labels)
        net._backward_of = self._forward
        return dx.reshape(net._last_x_shape) if input_grad else None


class _Init:
    """nn.init: initialisers drawing from the owning network's seeded stream."""

    @staticmethod
    def uniform_(tensor, a=0.0, b=1.0):
        """Fill a network parameter (e.g. net[1].weight) with U[a, b) from the network's
        initialisation stream, so the network's seed fixes the result."""
        for net in list(_live_networks):
            for name, entry in net._tensors.items():
                if entry["data"] is tensor or (np.shares_memory(entry["data"], tensor)
                                              and entry["data"].shape == tensor.shape):
                    net._core.init_uniform(name, float(a), float(b))
                    return tensor
        raise ValueError("uniform_ takes a parameter of a network (such as net[1].weight)")


init = _Init()


def _first_weighted(layers):
    for layer in layers:
        if isinstance(layer, Residual):
            inner = _first_weighted([layer.quant] + layer.block)
            if inner is not None:
                return inner
        elif isinstance(layer, (_WeightLayer, Conv2d)):
            return layer
    return None


def _input_shape(layers, input_shape):
    """(C, H, W) to create the network with; H = W = 0 means: set by the first input."""
    if input_shape is not None:
        if isinstance(input_shape, (int, np.integer)):
            input_shape = (input_shape,)
        shape = tuple(_checks.positive_int(s, "input_shape") for s in input_shape)
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"input_shape must have 1 to 3 dims, got {input_shape!r}")
        return shape + (1,) * (3 - len(shape)) if len(shape) < 3 else shape
    first = _first_weighted(layers)
    if first is None:
        raise ValueError("Sequential needs a Linear or Conv2d layer to know its input size, "
                         "or input_shape=")
    if isinstance(first, Conv2d):
        return (first.in_channels, 0, 0)
    return (first.in_features, 1, 1)


class Sequential(Module):
    """torch.nn.Sequential of qatfhe layers, one C network underneath.

    `seed` fixes the initial parameters and, unless fit() gets its own seed, the
    shuffling of every epoch: one seed fixes the whole run."""

    def __init__(self, *layers, seed=0, input_shape=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module) or isinstance(layer, Sequential):
                raise TypeError(f"layer {i} must be a qatfhe.nn layer, got {layer!r}")
        self.seed = _checks.seed(seed)
        specs = []
        for layer in layers:
            specs.extend(layer._core_specs(len(specs)))
        shape = _input_shape(layers, input_shape)
        self._core = _core.Net(specs, shape, self.seed)
        # an MLP's expected feature count, for a plain error message on wrong X
        self._features = shape[0] if shape[1:] == (1, 1) and input_shape is None else None
        self._c_layers = []          # every layer object in C order (Residuals expanded)
        index = 0
        for layer in layers:
            index = layer._attach_all(self, index)
        self._layers = list(layers)
        self._tensors = {t["name"]: t for t in self._core.tensors()}
        self.optimizer = None
        self._forwards = 0            # training forwards run so far (fit epochs included)
        self._mode_set_at = 0         # the last one before a train()/eval() call
        self._backward_of = 0         # number of the forward whose backward ran
        _live_networks.add(self)

    # --- container protocol
    def __getitem__(self, i):
        return self._layers[i]

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def __repr__(self):
        body = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self._layers))
        return f"Sequential(\n{body}\n)"

    def config(self):
        return {"type": "Sequential", "seed": self.seed, "input_shape": list(self._core.in_shape),
                "layers": [layer.config() for layer in self._layers]}

    @property
    def in_features(self):
        return self._core.in_size

    @property
    def input_shape(self):
        """Per-sample (C, H, W) of the current input (H = W = 0 before a first conv input)."""
        return self._core.in_shape

    @property
    def out_features(self):
        return self._core.out_size

    # --- modes
    @property
    def training(self):
        return self._core.training

    def train(self, mode=True):
        self._core.training = bool(mode)
        self._mode_set_at = self._forwards     # setting the mode drops the kept forward
        return self

    def eval(self):
        return self.train(False)

    # --- parameters
    def named_parameters(self):
        return [(name, t["data"]) for name, t in self._tensors.items() if t["kind"] == "param"]

    def parameters(self):
        return _ParameterList(self, [data for _, data in self.named_parameters()])

    def state_dict(self):
        """Copies of every parameter and buffer, keyed by name ("1.weight" ...), taken at
        one moment (a fit running in another thread is waited for, between epochs)."""
        return {name: t["data"] for name, t in self._core.snapshot()["tensors"].items()}

    def load_state_dict(self, state):
        missing = sorted(set(self._tensors) - set(state))
        unknown = sorted(set(state) - set(self._tensors))
        if missing or unknown:
            raise ValueError(f"state_dict does not match this network: missing {missing}, "
                             f"unexpected {unknown}")
        for name, value in state.items():
            target = self._tensors[name]["data"]
            value = _checks.float_array(value, name)
            if value.shape != target.shape:
                raise ValueError(f"{name} must have shape {target.shape}, got {value.shape}")
            self._core.write_tensor(name, value)

    def zero_grad(self):
        self._core.zero_grad()

    # --- compute
    def _samples(self, X, name="X"):
        X = _checks.samples(X, name)
        if X.ndim == 2 and self._features is not None and X.shape[1] != self._features:
            raise ValueError(f"{name} must have {self._features} features per sample, got "
                             f"{X.shape[1]}")
        try:
            self._core.set_input_shape(tuple(X.shape[1:]))
        except ValueError as exc:
            raise ValueError(f"{name} of per-sample shape {tuple(X.shape[1:])}: "
                             f"{self._name_layers(str(exc))}") from None
        return X

    def layer_path(self, c_index):
        """Where the layer with C index c_index sits: "2" for net[2], "3.block.0" for the
        first layer of the Residual net[3], "3.quant" for its quantizer."""
        target = self._c_layers[c_index]
        for i, layer in enumerate(self._layers):
            if layer is target:
                return str(i)
            if isinstance(layer, Residual):
                if layer.quant is target:
                    return f"{i}.quant"
                for j, inner in enumerate(layer.block):
                    if inner is target:
                        return f"{i}.block.{j}"
        return str(c_index)

    def _name_layers(self, message):
        """Replace the core's "layer N (Kind)" by the Python position and class name."""
        import re

        def name(match):
            index = int(match.group(1))
            if index >= len(self._c_layers):
                return match.group(0)
            layer = self._c_layers[index]
            return f"layer {self.layer_path(index)} ({type(layer).__name__})"
        return re.sub(r"layer (\d+) \([^)]*\)", name, message)

    def _next_forward(self, training):
        """Number the forward about to run.  A training forward (or a fit epoch) replaces
        the kept activations; an eval-mode one runs in its own workspace and keeps them."""
        if training:
            self._forwards += 1
        return self._forwards

    def _check_current(self, forward_id):
        """RuntimeError unless the kept activations are those of forward forward_id and its
        backward has not run."""
        if forward_id != self._forwards:
            raise RuntimeError("another training forward (net(X) in training mode, or fit) "
                               "ran after the forward this loss came from and replaced its "
                               "activations; backward applies to the latest training forward "
                               "only: compute the loss from it")
        if self._backward_of == forward_id:
            raise RuntimeError("backward already ran for this loss: a forward's activations "
                               "serve one backward; run net(X) again for another")
        if self._mode_set_at == forward_id:
            raise RuntimeError("net.train() or net.eval() was called after the training "
                               "forward this loss came from, which drops its kept "
                               "activations (eval-mode forwards such as net.predict() do not "
                               "need the mode switch and keep them); compute the loss again "
                               "from a new training forward")

    def forward(self, X):
        X = self._samples(X)
        training = self._core.training
        forward_id = self._next_forward(training)
        out = self._core.forward(X)
        if training:
            self._last_n, self._last_x_shape = len(X), X.shape
            out = out.view(_NetOutput)
            out._qatfhe_net = self
            out._qatfhe_forward = forward_id
        return out

    __call__ = forward

    def predict(self, X):
        """Class indices (int64) of X, computed in eval mode without changing the network's
        mode or its kept training forward; several threads may predict at once."""
        X = self._samples(X)
        return self._core.infer(X).argmax(axis=1)

    def score(self, X, y):
        """Eval-mode accuracy on (X, y)."""
        predicted = self.predict(X)
        y = _checks.labels(y, len(predicted), self._core.out_size)
        return float(np.mean(predicted == y))

    def backward(self, grad_output, input_grad=False):
        """Backward of the last training forward from d loss / d output (n, out): adds the
        parameters' gradients.  input_grad=True also returns d loss / d X, shaped as that
        forward's X (straight through the quantizers; for saliency and adversarial
        examples)."""
        grad_output = _checks.float_array(grad_output, "grad_output")
        if input_grad:
            dx = self._core.backward_dx(grad_output)
        else:
            self._core.backward(grad_output)
        self._backward_of = self._forwards
        return dx.reshape(self._last_x_shape) if input_grad else None

    def loss_backward(self, y):
        """Mean cross-entropy of the last training forward against y, and its backward."""
        y = _checks.labels(y, getattr(self, "_last_n", None), self._core.out_size)
        loss, _ = self._core.backward_ce(y)
        self._backward_of = self._forwards
        return loss

    def fit(self, X, y, epochs=1, batch_size=1, optimizer=None, seed=None, progress=True):
        """Train in C: per epoch shuffle, mini-batches, forward, cross-entropy, backward, step.

        optimizer: a qatfhe.optim optimizer of this network; None keeps the one already
        set, or creates AdamW(lr=1e-3) (PyTorch's defaults).  seed: shuffling seed (epoch e
        uses seed + e); None draws from the network's own stream.  Returns
        {"loss": [...], "accuracy": [...]} per epoch (training-mode values)."""
        from .train import fit
        return fit(self, X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                   seed=seed, progress=progress)

    def save(self, path):
        from .io import save
        save(self, path)

    def prune(self, max_non_zero):
        """The tutorial's PrunedQuantNet rule (REFERENCE.md section 4): in every
        Linear/QuantLinear, mask the (in_features - max_non_zero) * out_features
        smallest |w| of the whole tensor, fixed from now on.  See qatfhe.prune."""
        from .prune import prune_net
        return prune_net(self, max_non_zero)

    def unprune(self):
        """Make the pruning permanent: drop the masks, keep the (zero) values."""
        from .prune import unprune_net
        return unprune_net(self)


class _ParameterList(list):
    """net.parameters(): the parameter views, remembering their network."""

    def __init__(self, net, items):
        super().__init__(items)
        self.net = net
