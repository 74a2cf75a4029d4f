"""export_onnx: a quantization-aware network as ONNX, in the form Concrete-ML imports.

The file is what Brevitas's QONNX export of the same network gives Concrete-ML
(`compile_onnx_model(model, X, import_qat=True)`, or `compile_brevitas_qat_model`'s path):

    opset 14 (listed first), custom domain "onnx.brevitas" version 1, IR version 8
    QuantIdentity  ->  Quant(x, scale, zero_point, bit_width)
    QuantReLU      ->  Relu -> Quant
    QuantLinear    ->  Quant(W, s_w, 0, b_w) -> Gemm(x, ., bias, transB=1)
    QuantConv2d    ->  Quant(W, s_w, 0, b_w) -> Conv(x, ., bias) (explicit kernel_shape,
                       strides, pads, dilations, group)
    AvgPool2d      ->  AveragePool (count_include_pad=1, ceil_mode=0)
    Flatten        ->  Flatten(axis=1);  Reshape -> Reshape(x, [-1, *shape]);
    Transpose      ->  Transpose(perm);  Residual -> Quant, block, Quant, Add
Quant (domain "onnx.brevitas") takes float32 scalars scale, zero_point (0) and bit_width and
the attributes signed, narrow (int 0/1) and rounding_mode = "ROUND" (half to even):
    y = scale * (clip(x / scale + zero_point, qmin, qmax) rounded - zero_point)
Scales are those the network uses in eval mode now (a learned threshold T gives |T| / int
threshold).  Weights are stored already fake-quantized (s_w * q_w, float32), so the Quant
node on them returns them unchanged and carries their scale and bit width; per-channel
scales have shape (out, 1) (Gemm) or (out, 1, 1, 1) (Conv).  Biases stay float (bias_quant
None).  The graph input is (batch, features) or (batch, C, H, W) with a symbolic batch.

onnx is optional: imported inside export_onnx."""
import os
import tempfile

import numpy as np

from . import nn

__all__ = ["export_onnx", "OPSET", "QUANT_DOMAIN"]

OPSET = 14
QUANT_DOMAIN = "onnx.brevitas"
IR_VERSION = 8   # opset 14's generation; read by every onnx release Concrete-ML pins
_WEIGHTED = (nn.QuantLinear, nn.QuantConv2d)


def export_onnx(net, path, input_shape=None):
    """Write the quantization-aware network `net` to `path` as ONNX; returns the ModelProto.

    input_shape: per-sample input shape, (features,) or (C, H, W); needed only when the
    network does not know it yet (a convolutional network never run on data).
    Refused with ValueError, before anything is written: a float network or float layers in
    it (convert it first with qatfhe.convert), a layer that would receive a tensor no
    quantizer produced, non-finite weights or scales, an unsigned narrow-range activation
    quantizer (Concrete-ML reads it as signed).  The file is written atomically: on any
    error the path is left as it was.

    Per-channel weight scales (weight_scaling_per_output_channel=True) are written as
    (out, 1[, 1, 1]) scale tensors, valid ONNX, but Concrete-ML 1.9 cannot import them
    (its compile fails with "operands could not be broadcast together"; so does Brevitas'
    own export of such layers): export_onnx then warns (UserWarning) naming the layers.
    qatfhe's own QuantizedModule.compile_fhe runs them under FHE."""
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"net must be a qatfhe nn.Sequential, got {type(net).__name__}")
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got "
                        f"{type(path).__name__}")
    try:
        import onnx
    except ImportError:
        raise ImportError("qatfhe.export_onnx needs onnx: pip install onnx") from None
    path = os.fsdecode(os.fspath(path))
    target = _check_target(path)
    _check_quantization_aware(list(net))
    shape = _input_shape(net, input_shape)
    model = _Builder(onnx, net, shape).model()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:  # a bug here, not the user's
        raise RuntimeError(f"export_onnx built an invalid ONNX model: {exc}") from None
    _write_atomic(target, model.SerializeToString())
    _warn_per_channel(net, path)
    return model


def _warn_per_channel(net, path):
    names = []
    for i, layer in enumerate(net):
        inner = [(f"layer {i}.block[{j}]", l) for j, l in enumerate(layer.block)] \
            if isinstance(layer, nn.Residual) else [(f"layer {i}", layer)]
        names += [f"{name} ({type(l).__name__})" for name, l in inner
                  if isinstance(l, _WEIGHTED) and getattr(l, "per_channel", False)]
    if names:
        import warnings
        warnings.warn(f"{path!r} holds per-channel weight scales ({', '.join(names)}): "
                      f"Concrete-ML 1.9 cannot import them (compile_onnx_model fails with "
                      f"'operands could not be broadcast together'); use "
                      f"weight_scaling_per_output_channel=False for Concrete-ML, or run the "
                      f"network under FHE with qatfhe's own QuantizedModule.compile_fhe",
                      UserWarning, stacklevel=3)


# ------------------------------------------------------------------ checks

def _check_target(path):
    if not path:
        raise ValueError("path is empty; expected a file path such as 'model.onnx'")
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        raise ValueError(f"path {path!r} is a directory; expected a file path")
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"cannot write {path!r}: directory {directory!r} is not "
                              f"writable")
    return target


def _write_atomic(target, data):
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".qatfhe-", suffix=".onnx.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_quantization_aware(layers, quantized=False, where=""):
    """ValueError unless every layer is exportable and every integer op gets codes."""
    for i, layer in enumerate(layers):
        label = f"layer {where}{i} ({type(layer).__name__})"
        if isinstance(layer, (nn.BatchNorm2d, nn.MaxPool2d)):
            raise NotImplementedError(f"{label}: export_onnx does not write BatchNorm2d or "
                                      f"MaxPool2d yet; compile the network with "
                                      f"qatfhe.compile_qat_model instead")
        if isinstance(layer, nn.Residual):
            _check_act_quant(layer.quant, f"{label}'s quant")
            _check_quantization_aware(layer.block, True, f"{where}{i}.block.")
            quantized = True
            continue
        if isinstance(layer, (nn.QuantIdentity, nn.QuantReLU)):
            _check_act_quant(layer, label)
            quantized = True
            continue
        if isinstance(layer, nn.ReLU):
            raise ValueError(f"{label} is a float ReLU; export_onnx needs a quantization-aware "
                             f"network: use QuantReLU (qatfhe.convert(net) does the "
                             f"replacements)")
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and not isinstance(layer, _WEIGHTED):
            raise ValueError(f"{label} has float weights; export_onnx needs a "
                             f"quantization-aware network (QuantLinear / QuantConv2d): convert "
                             f"it with qatfhe.convert(net) and fine-tune")
        if not quantized:
            raise ValueError(f"{label} receives a tensor that no quantizer produced; Concrete-ML "
                             f"computes it on integers: put a QuantIdentity before it "
                             f"(qatfhe.convert inserts them)")
        if isinstance(layer, _WEIGHTED):
            for name in ("weight", "bias"):
                value = getattr(layer, name)
                if value is not None and not np.isfinite(value).all():
                    raise ValueError(f"{label} has NaN or infinite values in its {name}")
            quantized = False
        elif isinstance(layer, nn.AvgPool2d):
            quantized = False


def _check_act_quant(layer, label):
    q = layer.act_quant
    if not q.signed and q.narrow_range:
        raise ValueError(f"{label} uses an unsigned narrow-range quantizer, which Concrete-ML "
                         f"reads as signed; use narrow_range=False for unsigned activations")
    scale = float(layer.scale())
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{label} has scale {scale}; expected a positive finite scale (has "
                         f"the network been trained?)")


def _any_conv(layers):
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.AvgPool2d)):
            return True
        if isinstance(layer, nn.Residual) and _any_conv(layer.block):
            return True
    return False


def _input_shape(net, input_shape):
    if input_shape is not None:
        if isinstance(input_shape, (int, np.integer)):
            input_shape = (input_shape,)
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
        if len(shape) not in (1, 3) or min(shape) < 1:
            raise ValueError(f"input_shape must be (features,) or (C, H, W) of positive ints, "
                             f"got {input_shape!r}")
        return shape
    c, h, w = net.input_shape
    if _any_conv(list(net)) or (h, w) != (1, 1):
        if min(c, h, w) < 1:
            raise ValueError("the network's input height and width are not known yet: pass "
                             "input_shape=(C, H, W) (or run it on data once)")
        return (c, h, w)
    return (c,)


# ------------------------------------------------------------------ graph

class _Builder:
    """Builds the nodes and initializers layer by layer, tracking the per-sample shape."""

    def __init__(self, onnx, net, shape):
        self.onnx, self.net = onnx, net
        self.helper = onnx.helper
        self.nodes, self.initializers = [], []
        self.names = set()
        self.input_shape = shape

    def model(self):
        helper, TensorProto = self.helper, self.onnx.TensorProto
        x, shape = "input", self.input_shape
        for layer in self.net:
            x, shape = self.layer(layer, x, shape)
        for node in self.nodes:  # the last result is the graph output
            if node.output[0] == x:
                node.output[0] = "output"
        graph = helper.make_graph(
            self.nodes, "qatfhe_network",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                           ["batch", *self.input_shape])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *shape])],
            initializer=self.initializers)
        from . import __version__
        model = helper.make_model(
            graph, producer_name="qatfhe", producer_version=__version__,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(QUANT_DOMAIN, 1)])
        model.ir_version = IR_VERSION
        model.doc_string = ("Quantization-aware network exported by qatfhe for Concrete-ML "
                            "(compile_onnx_model(model, X, import_qat=True))")
        return model

    # --- helpers
    def const(self, name, value, dtype=np.float32):
        value = np.asarray(value, dtype=dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def node(self, op, inputs, name, domain="", **attrs):
        out = name
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=name, domain=domain,
                                                **attrs))
        return out

    def quant(self, x, prefix, name, scale, spec):
        """A Quant node with its scale / zero point / bit width initializers under prefix."""
        if prefix not in self.names:
            self.const(f"{prefix}.scale", scale)
            self.const(f"{prefix}.zero_point", 0.0)
            self.const(f"{prefix}.bit_width", float(spec.bit_width))
            self.names.add(prefix)
        return self.node("Quant", [x, f"{prefix}.scale", f"{prefix}.zero_point",
                                   f"{prefix}.bit_width"], name, domain=QUANT_DOMAIN,
                         signed=int(spec.signed), narrow=int(spec.narrow_range),
                         rounding_mode="ROUND")

    def act_quant(self, layer, x, name):
        if isinstance(layer, nn.QuantReLU):
            x = self.node("Relu", [x], f"{name}/Relu")
        return self.quant(x, f"{layer.index}.act_quant", f"{name}/Quant",
                          np.float32(layer.scale()), layer.act_quant)

    def quant_weight(self, layer):
        codes, scale = layer.quant_weight()
        shape = (-1,) + (1,) * (codes.ndim - 1)
        scale = np.asarray(scale, dtype=np.float32)
        weight = (codes.astype(np.float32) * scale.reshape(shape)).astype(np.float32)
        if scale.ndim:
            scale = scale.reshape(shape)
        w = self.const(f"{layer.index}.weight", weight)
        return self.quant(w, f"{layer.index}.weight_quant", f"/{layer.index}/weight_quant/Quant",
                          scale, layer.weight_quant)

    def reshape(self, x, name, shape):
        target = self.const(f"{name}.shape", [-1, *shape], np.int64)
        return self.node("Reshape", [x, target], f"{name}/Reshape")

    # --- layers: (tensor name, per-sample shape) -> (tensor name, per-sample shape)
    def layer(self, layer, x, shape):
        i = layer.index
        name = f"/{i}"
        if isinstance(layer, (nn.QuantIdentity, nn.QuantReLU)):
            return self.act_quant(layer, x, name), shape
        if isinstance(layer, nn.QuantLinear):
            if int(np.prod(shape)) != layer.in_features:
                raise ValueError(f"layer {i} (QuantLinear) expects {layer.in_features} inputs, "
                                 f"gets per-sample shape {shape}")
            if len(shape) != 1:
                x = self.node("Flatten", [x], f"{name}/Flatten", axis=1)
            w = self.quant_weight(layer)
            inputs = [x, w] + ([self.const(f"{i}.bias", layer.bias)] if layer.has_bias else [])
            y = self.node("Gemm", inputs, f"{name}/Gemm", alpha=1.0, beta=1.0, transA=0,
                          transB=1)
            return y, (layer.out_features,)
        if isinstance(layer, nn.QuantConv2d):
            c, h, w_ = self._spatial(layer, shape, layer.in_channels)
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
            weight = self.quant_weight(layer)
            inputs = [x, weight] + ([self.const(f"{i}.bias", layer.bias)] if layer.has_bias
                                    else [])
            y = self.node("Conv", inputs, f"{name}/Conv", kernel_shape=[kh, kw],
                          strides=[sh, sw], pads=[ph, pw, ph, pw], dilations=[1, 1],
                          group=layer.groups)
            return y, (layer.out_channels, (h + 2 * ph - kh) // sh + 1,
                       (w_ + 2 * pw - kw) // sw + 1)
        if isinstance(layer, nn.AvgPool2d):
            c, h, w_ = self._spatial(layer, shape, None)
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
            y = self.node("AveragePool", [x], f"{name}/AveragePool", kernel_shape=[kh, kw],
                          strides=[sh, sw], pads=[ph, pw, ph, pw], count_include_pad=1,
                          ceil_mode=0)
            return y, (c, (h + 2 * ph - kh) // sh + 1, (w_ + 2 * pw - kw) // sw + 1)
        if isinstance(layer, nn.Flatten):
            return self.node("Flatten", [x], f"{name}/Flatten", axis=1), (int(np.prod(shape)),)
        if isinstance(layer, nn.Reshape):
            if int(np.prod(layer.shape)) != int(np.prod(shape)):
                raise ValueError(f"layer {i} (Reshape) cannot reshape per-sample shape {shape} "
                                 f"into {layer.shape}")
            return self.reshape(x, name, layer.shape), tuple(layer.shape)
        if isinstance(layer, nn.Transpose):
            if len(shape) < max(layer.dim0, layer.dim1):  # samples are (C, H, W) to the net
                shape = _pad3(shape)
                x = self.reshape(x, f"{name}/as_chw", shape)
            perm = list(range(len(shape) + 1))
            perm[layer.dim0], perm[layer.dim1] = perm[layer.dim1], perm[layer.dim0]
            new_shape = [1] + list(shape)
            new_shape[layer.dim0], new_shape[layer.dim1] = new_shape[layer.dim1], \
                new_shape[layer.dim0]
            return self.node("Transpose", [x], f"{name}/Transpose", perm=perm), \
                tuple(new_shape[1:])
        if isinstance(layer, nn.Residual):
            begin = self.act_quant(layer.quant, x, f"/{layer.quant.index}")
            y, block_shape = begin, shape
            for inner in layer.block:
                y, block_shape = self.layer(inner, y, block_shape)
            if _pad3(block_shape) == _pad3(shape) and tuple(block_shape) != tuple(shape):
                y = self.reshape(y, f"{name}/block_out", shape)
            elif tuple(block_shape) != tuple(shape):
                raise ValueError(f"layer {i} (Residual): its block maps per-sample shape "
                                 f"{shape} to {block_shape}; the add needs equal shapes")
            end = self.act_quant(layer.quant, y, f"{name}/block_out")
            return self.node("Add", [begin, end], f"{name}/Add"), shape
        raise ValueError(f"layer {i} ({type(layer).__name__}) cannot be exported")

    @staticmethod
    def _spatial(layer, shape, channels):
        if len(shape) != 3 or (channels is not None and shape[0] != channels):
            raise ValueError(f"layer {layer.index} ({type(layer).__name__}) expects "
                             f"(C={channels or 'C'}, H, W) samples, gets per-sample shape "
                             f"{shape}")
        return shape


def _pad3(shape):
    """A per-sample shape as the network stores it: (C, H, W), missing dims 1."""
    return tuple(shape) + (1,) * (3 - len(shape))
