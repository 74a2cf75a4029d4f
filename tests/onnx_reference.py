"""A small NumPy evaluator of ONNX graphs, written from the operator definitions (ONNX
opset 14 and the Brevitas / QONNX Quant operator), independent of qatfhe's code.

Supported: Quant (domain onnx.brevitas), Gemm, Conv, AveragePool, Relu, Flatten, Reshape,
Transpose, Add, Identity.  Matrix products and convolutions accumulate in float64 and round
to float32 once (the exact sum, rounded), elementwise ops run in float32 as the tensors are
float32.

Quant (QONNX spec): y_int = x / scale + zero_point; clip to [min_int, max_int] with
    min_int = -2^(b-1) + narrow (signed) or 0;  max_int = 2^(b-1) - 1 (signed),
    2^b - 1 - narrow (unsigned); round with rounding_mode ("ROUND" = half to even);
    y = (y_int - zero_point) * scale."""
import numpy as np

F32 = np.float32


def attributes(node):
    import onnx
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def run(model, x):
    """Evaluate the single-input, single-output graph of `model` on x; returns float32."""
    from onnx import numpy_helper
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values[graph.input[0].name] = np.asarray(x, dtype=F32)
    for node in graph.node:
        op = (node.domain + "." if node.domain else "") + node.op_type
        inputs = [values[name] if name else None for name in node.input]
        values[node.output[0]] = OPS[op](*inputs, **attributes(node))
    return values[graph.output[0].name]


def quant(x, scale, zero_point, bit_width, signed=1, narrow=0, rounding_mode="ROUND"):
    b = int(bit_width)
    if signed:
        lo, hi = -(2 ** (b - 1)) + int(narrow), 2 ** (b - 1) - 1
    else:
        lo, hi = 0, 2 ** b - 1 - int(narrow)
    if rounding_mode.upper() != "ROUND":
        raise NotImplementedError(rounding_mode)
    scale = scale.astype(F32)
    y = x.astype(F32) / scale + zero_point.astype(F32)
    y = np.round(np.clip(y, F32(lo), F32(hi)))        # np.round: half to even
    return ((y - zero_point.astype(F32)) * scale).astype(F32)


def gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = a.T if transA else a
    b = b.T if transB else b
    y = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    if c is not None:
        y = y + beta * c.astype(np.float64)
    return y.astype(F32)


def _pad2d(x, pads):
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def _windows(x, kh, kw, sh, sw):
    """(n, C, OH, OW, kh, kw) view of the windows of x (n, C, H, W)."""
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]))


def conv(x, w, b=None, kernel_shape=None, strides=(1, 1), pads=(0, 0, 0, 0),
         dilations=(1, 1), group=1, auto_pad="NOTSET"):
    if group != 1 or tuple(dilations) != (1, 1) or auto_pad != "NOTSET":
        raise NotImplementedError("conv: group 1, dilation 1, explicit pads only")
    kh, kw = w.shape[2:]
    win = _windows(np.ascontiguousarray(_pad2d(x.astype(np.float64), pads)), kh, kw, *strides)
    y = np.einsum("ncijkl,ockl->noij", win, w.astype(np.float64))
    if b is not None:
        y = y + b.astype(np.float64)[None, :, None, None]
    return y.astype(F32)


def average_pool(x, kernel_shape, strides=None, pads=(0, 0, 0, 0), count_include_pad=0,
                 ceil_mode=0, auto_pad="NOTSET"):
    if ceil_mode or auto_pad != "NOTSET":
        raise NotImplementedError("average_pool: floor mode, explicit pads only")
    kh, kw = kernel_shape
    strides = strides or (1, 1)
    padded = np.ascontiguousarray(_pad2d(x.astype(np.float64), pads))
    sums = _windows(padded, kh, kw, *strides).sum(axis=(4, 5))
    if count_include_pad:
        counts = kh * kw
    else:
        ones = np.ascontiguousarray(_pad2d(np.ones((1, 1) + x.shape[2:]), pads))
        counts = _windows(ones, kh, kw, *strides).sum(axis=(4, 5))
    return (sums / counts).astype(F32)


def reshape(x, shape, allowzero=0):
    shape = [int(s) for s in shape]
    shape = [x.shape[i] if s == 0 and not allowzero else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def flatten(x, axis=1):
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


OPS = {
    "onnx.brevitas.Quant": quant,
    "Gemm": gemm,
    "Conv": conv,
    "AveragePool": average_pool,
    "Relu": lambda x: np.maximum(x, F32(0)),
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": lambda x, perm=None: np.transpose(x, perm),
    "Add": lambda a, b: (a + b).astype(F32),
    "Identity": lambda x: x,
}
