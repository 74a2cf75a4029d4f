"""One validation path for quantizer specs (issue 11, item 6): every way of making a
quantizer refuses bad values, and Python and C agree on the integer range."""
import itertools

import numpy as np
import pytest

import qatfhe
from qatfhe import nn, optim
from qatfhe.quant import QuantSpec, Quantizer


def reference_range(bits, signed, narrow):
    """REFERENCE.md section 2 (and csrc/quant.h): (qmin, qmax, int_threshold)."""
    if signed:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax if narrow else -2 ** (bits - 1)
        return qmin, qmax, -qmin
    qmax = 2 ** bits - 1 - int(narrow)
    return 0, qmax, qmax


BAD_FIELDS = [
    ("narrow_range", 2, ValueError), ("narrow_range", "yes", TypeError),
    ("signed", 2, ValueError), ("signed", None, None),   # None: "use the default"
    ("scaling_const", float("inf"), ValueError), ("scaling_const", float("nan"), ValueError),
    ("scaling_const", "1", TypeError), ("scaling_const", 0.0, ValueError),
    ("scaling_const", 1e39, ValueError), ("scaling_const", 1e-50, ValueError),
    ("collect_stats_steps", 1.7, TypeError), ("collect_stats_steps", 0, ValueError),
    ("collect_stats_steps", 2 ** 40, ValueError),
    ("bit_width", 17, ValueError), ("bit_width", 3.0, TypeError),
]


@pytest.mark.parametrize("field,value,error", BAD_FIELDS)
def test_layer_keywords_and_specs_refuse_bad_values(field, value, error):
    if error is None:
        nn.QuantReLU(**{field: value})
        return
    spec = QuantSpec("const", 3, False, False)
    with pytest.raises(error, match=field):
        nn.QuantReLU(**{field: value})
    with pytest.raises(error, match=field):
        nn.QuantReLU(act_quant=spec, **{field: value})
    with pytest.raises(error, match=field):
        QuantSpec(**dict(spec.to_dict(), **{field: value}))
    with pytest.raises(error, match=field):
        nn.QuantReLU(act_quant=dict(spec.to_dict(), **{field: value}))
    with pytest.raises(error, match=field):
        setattr(spec, field, value)

    class Custom(Quantizer):
        scaling_impl_type = "const"
    setattr(Custom, field, value)
    with pytest.raises(error, match=field):
        nn.QuantReLU(act_quant=Custom)


def test_other_fields_are_checked():
    with pytest.raises(ValueError, match="scaling_stats_momentum"):
        QuantSpec("parameter_from_stats", 8, True, False, scaling_stats_momentum=1.5)
    with pytest.raises(ValueError, match="high_percentile_q"):
        QuantSpec("parameter_from_stats", 8, True, False, high_percentile_q=float("nan"))
    with pytest.raises(ValueError, match="scaling_impl_type"):
        QuantSpec("max", 8, True, False)
    with pytest.raises(AttributeError, match="no field"):
        QuantSpec("const", 8, True, False).narrow = True


def test_sgd_nesterov_must_be_a_bool():
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nesterov"):
        optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov="yes")
    with pytest.raises(TypeError, match="nesterov"):
        optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=1)


@pytest.mark.parametrize("bits,signed,narrow",
                         list(itertools.product((2, 3, 8), (False, True), (False, True))))
def test_python_c_and_circuit_share_the_reference_range(bits, signed, narrow):
    qmin, qmax, int_threshold = reference_range(bits, signed, narrow)
    threshold = 1.5
    spec = QuantSpec("const", 3, False, False, scaling_const=threshold)
    # the override path that used to disagree: narrow_range given as a layer keyword
    layer = nn.QuantIdentity(act_quant=spec, bit_width=bits, signed=signed, narrow_range=narrow)
    assert (layer.act_quant.qmin, layer.act_quant.qmax) == (qmin, qmax)
    assert layer.act_quant.int_threshold == int_threshold
    net = nn.Sequential(layer, input_shape=3)
    net.eval()
    scale = np.float32(threshold) / np.float32(int_threshold)
    assert layer.scale() == pytest.approx(float(scale), rel=1e-7)
    X = np.linspace(-4 * threshold, 4 * threshold, 3 * 101, dtype=np.float32).reshape(-1, 3)
    codes = np.rint(net(X) / scale)
    assert codes.min() == qmin and codes.max() == qmax   # the C forward's range
    module = qatfhe.compile_qat_model(net, X)
    assert (module.input_quant.qmin, module.input_quant.qmax) == (qmin, qmax)
    assert np.array_equal(module.quantize_input(X).min(), qmin)
    assert np.array_equal(module.quantize_input(X).max(), qmax)
    assert np.array_equal(module.forward(X, fhe="simulate"), net(X))
