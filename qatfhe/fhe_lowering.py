"""Lower a compiled integer circuit (qatfhe.compile's op list) to a concrete-python function.

One function per op kind, the same table as the circuit's C ops (csrc/circuit.h) and the
NumPy twin (compile._Op.run); every node value keeps the twin's layout (1, C, H, W), one
sample, so a reader can put the three side by side:

    dense      acc = x.reshape(1, -1) @ (W - Z_w).T              clear integer weights
    conv       acc = fhe.conv(pad(x, Z_x), W - Z_w, strides)      Concrete pads only with 0,
                                                                  so the padding is explicit
    pool_sum   S   = fhe.conv(pad(x, Z_x), ones, group=C)         integer window sums
    maxpool    window maxima, padded taps skipped: max(a, b) = b + relu(a - b), one table
               lookup per pair and channel (the circuit's pairwise_max_lookups)
    round      fhe.round_bit_pattern(acc, lsbs): acc rounded half up to a multiple of 2^lsbs
               (qatfhe's node holds acc >> lsbs; Concrete keeps the low zeros)
    lookup     fhe.univariate(f): one table lookup (one PBS) per element; f is qatfhe's own
               epilogue, op.quant.quantize(op.affine(v >> lsbs)), called by Concrete on each
               possible input value with per-element constants (per-channel scales, offsets
               and biases make one table per channel), so its tables equal the C circuit's
               float32 lookups bit for bit
    reshape / transpose / add   the codes re-indexed, or an encrypted sum
    decode     nothing: the circuit returns the integers of the decode op's source, which
               are decrypted and dequantised in the clear (as Concrete-ML does)

Concrete takes every value's bit width from the bounds it measures on the inputset;
`inputset` picks from the calibration samples one sample reaching each node's minimum and
one reaching its maximum, so those bounds equal qatfhe's calibrated ranges exactly."""
import warnings

import numpy as np

INSTALL = ('pip install torch==2.13.0 && pip install "qatfhe[fhe]"   (concrete-python; '
           'install torch 2.13.0 first, from its CPU wheel)')


def concrete():
    """The `concrete.fhe` module, or ImportError with the install line."""
    try:
        with warnings.catch_warnings():       # concrete imports pkg_resources (deprecated)
            warnings.simplefilter("ignore")
            from concrete import fhe
    except ImportError as exc:
        raise ImportError(f"encrypted execution needs concrete-python, which is not "
                          f"installed ({exc}); install it with: {INSTALL}") from None
    return fhe


# ------------------------------------------------------------------ one function per op kind

def _weights(op):
    return op.weight.astype(np.int64) - op.weight_zero_point


def _padded(fhe, x, op):
    """x (1, C, H, W) surrounded by the padding code op.pad_code."""
    _, _, (ph, pw) = op.window
    if not (ph or pw):
        return x
    n, c, h, w = x.shape
    out = fhe.zeros((n, c, h + 2 * ph, w + 2 * pw))
    if op.pad_code:
        out = out + op.pad_code
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _dense(fhe, op, values):
    x = values[op.src]
    return (x.reshape((1, -1)) @ _weights(op).T).reshape((1, -1, 1, 1))


def _conv(fhe, op, values):
    return fhe.conv(_padded(fhe, values[op.src], op), _weights(op), strides=op.stride)


def _pool_sum(fhe, op, values):
    x = values[op.src]
    channels = x.shape[1]
    ones = np.ones((channels, 1) + tuple(op.kernel), np.int64)
    return fhe.conv(_padded(fhe, x, op), ones, strides=op.stride, group=channels)


def _relu(v):
    return np.maximum(v, 0)


def _maxpool(fhe, op, values):
    x = values[op.src]
    (kh, kw), (sh, sw), (ph, pw) = op.window
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    relu = fhe.univariate(_relu)
    out = fhe.zeros((n, c, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            best = None
            for iy in range(oy * sh - ph, oy * sh - ph + kh):
                for ix in range(ox * sw - pw, ox * sw - pw + kw):
                    if not (0 <= iy < h and 0 <= ix < w):
                        continue                      # a padded tap never wins
                    tap = x[:, :, iy, ix]
                    best = tap if best is None else best + relu(tap - best)
            out[:, :, oy, ox] = best
    return out


def _round(fhe, op, values):
    return fhe.round_bit_pattern(values[op.src], lsbs_to_remove=op.lsbs)


def _lookup(fhe, op, values):
    def epilogue(v):
        """qatfhe's lookup: the codes of relu?(float32(v 2^-l 2^l + offset) scale + bias)."""
        return op.quant.quantize(op.affine(np.asarray(v, np.int64) >> op.lsbs))
    epilogue.__name__ = "lookup"
    return fhe.univariate(epilogue)(values[op.src])


def _reshape(fhe, op, values):
    return values[op.src].reshape((1,) + op.shape)


def _transpose(fhe, op, values):
    axes = [0, 1, 2, 3]
    a, b = op.dims[0] + 1, op.dims[1] + 1
    axes[a], axes[b] = b, a
    return np.transpose(values[op.src], axes)


def _add(fhe, op, values):
    return values[op.src] + values[op.src2]


LOWER = {"dense": _dense, "conv": _conv, "pool_sum": _pool_sum, "maxpool": _maxpool,
         "round": _round,
         "lookup": _lookup, "reshape": _reshape, "transpose": _transpose, "add": _add}


def tag(k):
    """Concrete tag of op k (its PBS count appears under it in the statistics)."""
    return f"op{k}"


def lower(ops):
    """A function of the input codes x (1, C, H, W) returning the integers of the decode
    op's source, built op by op; each op's Concrete nodes carry the tag op<k>."""
    fhe = concrete()

    def circuit(x):
        values = [x]
        for k, op in enumerate(ops):
            if op.kind == "decode":
                return values[op.src]
            with fhe.tag(tag(k)):
                values.append(LOWER[op.kind](fhe, op, values))
        raise ValueError("the ops do not end with a decode op")
    return circuit


# ------------------------------------------------------------------ the inputset

def inputset(ops, codes):
    """Input codes (m, C, H, W) of at most 2 (nodes) samples of codes (n, C, H, W): for every
    node, one sample reaching its minimum and one reaching its maximum over codes, so the
    node ranges over the subset equal those over codes.  Also returns the ranges
    [(min, max)] per node."""
    n = len(codes)
    chosen, ranges = set(), []
    last_use = {}
    for k, op in enumerate(ops):
        last_use[op.src] = k
        if op.kind == "add":
            last_use[op.src2] = k
    values = [codes]

    def note(value):
        flat = value.reshape(n, -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        chosen.update((int(lo.argmin()), int(hi.argmax())))
        ranges.append((int(lo.min()), int(hi.max())))

    note(codes)
    for k, op in enumerate(ops):
        if op.kind == "decode":
            break
        values.append(op.run(values))
        note(values[-1])
        for j, last in last_use.items():
            if last == k:
                values[j] = None
    return codes[sorted(chosen)], ranges
