"""Quantizers with Brevitas names and semantics (REFERENCE.md section 2).

A quantizer is described by a class, as in Brevitas: pass the class itself as
`weight_quant=` or `act_quant=`, and override attributes by subclassing or with
layer keywords (`bit_width=`, `weight_bit_width=`, `narrow_range=` ...).  Each layer
resolves it into a `QuantSpec`, the plain record the C core receives.

Class attributes understood:
    scaling_impl_type  "const" (fixed threshold), "stats" (abs-max of the weights,
                       recomputed every forward) or "parameter_from_stats" (runtime
                       percentile statistics, then a learned threshold)
    bit_width, signed, narrow_range
    scaling_const      the threshold T of a constant quantizer (or max_val/min_val:
                       T = max(|min_val|, |max_val|))
    collect_stats_steps, scaling_stats_momentum, high_percentile_q   (learned)
The scale is T / int_threshold (int_threshold = 2^(b-1) - narrow for signed,
2^b - 1 - narrow for unsigned)."""

import math
import numbers

import numpy as np

_KINDS = {"const": 1, "stats": 2, "parameter_from_stats": 3}
_KIND_NAMES = {"const": "const", "stats": "absmax", "parameter_from_stats": "learned"}


class QuantSpec:
    """A resolved quantizer: what one layer's quantizer does, in plain values."""

    FIELDS = ("scaling_impl_type", "bit_width", "signed", "narrow_range", "scaling_const",
              "collect_stats_steps", "scaling_stats_momentum", "high_percentile_q")

    def __init__(self, scaling_impl_type, bit_width, signed, narrow_range, scaling_const=1.0,
                 collect_stats_steps=300, scaling_stats_momentum=0.1, high_percentile_q=99.999,
                 name=None):
        self.name = name or "QuantSpec"
        self.scaling_impl_type = scaling_impl_type
        self.bit_width = bit_width
        self.signed = signed
        self.narrow_range = narrow_range
        self.scaling_const = scaling_const
        self.collect_stats_steps = collect_stats_steps
        self.scaling_stats_momentum = scaling_stats_momentum
        self.high_percentile_q = high_percentile_q

    def __setattr__(self, key, value):
        """Every field passes its check, however the spec is made or changed (constructor,
        quantizer class, layer keywords, attribute writes, a saved file)."""
        if key == "name":
            if not isinstance(value, str):
                raise TypeError(f"quantizer name must be a string, got {value!r}")
        elif key in _FIELD_CHECKS:
            value = _FIELD_CHECKS[key](value, key)
        else:
            raise AttributeError(f"QuantSpec has no field {key!r}; fields: {', '.join(self.FIELDS)}")
        object.__setattr__(self, key, value)

    @property
    def kind(self):
        """'const', 'absmax' or 'learned'."""
        return _KIND_NAMES[self.scaling_impl_type]

    @property
    def qmin(self):
        if not self.signed:
            return 0
        half = 1 << (self.bit_width - 1)
        return -(half - 1) if self.narrow_range else -half

    @property
    def qmax(self):
        if not self.signed:
            return (1 << self.bit_width) - 1 - int(self.narrow_range)
        return (1 << (self.bit_width - 1)) - 1

    @property
    def int_threshold(self):
        return -self.qmin if self.signed else self.qmax

    def to_core(self):
        return {"kind": _KINDS[self.scaling_impl_type], "bits": self.bit_width,
                "signed": int(self.signed), "narrow": int(self.narrow_range),
                "threshold": self.scaling_const, "stats_steps": self.collect_stats_steps,
                "momentum": self.scaling_stats_momentum, "percentile": self.high_percentile_q}

    def to_dict(self):
        return {"name": self.name, **{f: getattr(self, f) for f in self.FIELDS}}

    def __eq__(self, other):
        return isinstance(other, QuantSpec) and all(
            getattr(self, f) == getattr(other, f) for f in self.FIELDS)

    def __repr__(self):
        return (f"{self.name}({self.kind}, bit_width={self.bit_width}, "
                f"{'signed' if self.signed else 'unsigned'}"
                f"{', narrow' if self.narrow_range else ''})")


def check_bit_width(value, name):
    if isinstance(value, bool) or not isinstance(value, int) and not (
            hasattr(value, "__index__") and not isinstance(value, float)):
        raise TypeError(f"{name} must be an integer in [2, 16], got {value!r}")
    value = int(value)
    if not 2 <= value <= 16:
        raise ValueError(f"{name} must be an integer in [2, 16], got {value}")
    return value


def _check_kind(value, name):
    if not isinstance(value, str) or value not in _KINDS:
        raise ValueError(f"{name} must be one of {sorted(_KINDS)}, got {value!r}")
    return value


def _check_flag(value, name):
    """True/False (or the integers 0 and 1): the C core reads 0 or 1, nothing else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise (TypeError if not isinstance(value, numbers.Integral) else ValueError)(
        f"{name} must be True or False, got {value!r}")


def _real(value, name, expected):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def _check_threshold(value, name):
    expected = "a positive finite number (representable in float32)"
    value = _real(value, name, expected)
    as_f32 = np.float32(value) if abs(value) < 3.4e38 else np.float32(np.inf)
    if not value > 0 or not (np.isfinite(as_f32) and as_f32 > 0):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def _check_steps(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer in [1, 2**31 - 1], got {value!r}")
    if not 1 <= value <= 2 ** 31 - 1:
        raise ValueError(f"{name} must be an integer in [1, 2**31 - 1], got {value}")
    return int(value)


def _check_momentum(value, name):
    value = _real(value, name, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value}")
    return value


def _check_percentile(value, name):
    value = _real(value, name, "a number in (0, 100]")
    if not 0 < value <= 100:
        raise ValueError(f"{name} must be a number in (0, 100], got {value}")
    return value


_FIELD_CHECKS = {"scaling_impl_type": _check_kind, "bit_width": check_bit_width,
                 "signed": _check_flag, "narrow_range": _check_flag,
                 "scaling_const": _check_threshold, "collect_stats_steps": _check_steps,
                 "scaling_stats_momentum": _check_momentum,
                 "high_percentile_q": _check_percentile}


class Quantizer:
    """Base of the quantizer classes; subclass and set attributes to customise."""
    scaling_impl_type = "const"
    bit_width = 8
    signed = True
    narrow_range = False
    scaling_const = 1.0
    min_val = None
    max_val = None
    collect_stats_steps = 300
    scaling_stats_momentum = 0.1
    high_percentile_q = 99.999

    @classmethod
    def resolve(cls, **overrides):
        values = {}
        for field in QuantSpec.FIELDS:
            values[field] = getattr(cls, field)
        if cls.min_val is not None or cls.max_val is not None:
            values["scaling_const"] = max(abs(cls.min_val or 0.0), abs(cls.max_val or 0.0))
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        return QuantSpec(name=cls.__name__, **values)


class CommonWeightQuant(Quantizer):
    """The tutorial's weight quantizer: constant threshold 1.0, signed, narrow, per tensor."""
    scaling_impl_type = "const"
    scaling_const = 1.0
    signed = True
    narrow_range = True
    bit_width = 8


class CommonActQuant(Quantizer):
    """The tutorial's activation quantizer: constant range [-1, 1], signed, narrow."""
    scaling_impl_type = "const"
    min_val = -1.0
    max_val = 1.0
    signed = True
    narrow_range = True
    bit_width = 8


class Int8WeightPerTensorFloat(Quantizer):
    """Brevitas's default weight quantizer: scale max|W| / (2^(b-1) - 1) every forward."""
    scaling_impl_type = "stats"
    signed = True
    narrow_range = True
    bit_width = 8


class Int8ActPerTensorFloat(Quantizer):
    """Brevitas's default QuantIdentity quantizer: signed, learned threshold T, scale T / 2^(b-1)."""
    scaling_impl_type = "parameter_from_stats"
    signed = True
    narrow_range = False
    bit_width = 8


class Uint8ActPerTensorFloat(Quantizer):
    """Brevitas's default QuantReLU quantizer: unsigned, learned threshold T, scale T / (2^b - 1)."""
    scaling_impl_type = "parameter_from_stats"
    signed = False
    narrow_range = False
    bit_width = 8


def resolve(quant, role, **overrides):
    """A QuantSpec from a quantizer class, a QuantSpec, or a dict of QuantSpec fields."""
    if isinstance(quant, QuantSpec):
        fields = quant.to_dict()
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return QuantSpec(**fields)
    if isinstance(quant, dict):
        try:
            spec = QuantSpec(**quant)
        except TypeError as exc:
            if "argument" not in str(exc):
                raise
            raise TypeError(f"{role}: {exc}") from None
        return resolve(spec, role, **overrides)
    if isinstance(quant, type) and issubclass(quant, Quantizer):
        return quant.resolve(**overrides)
    raise TypeError(f"{role} must be a quantizer class such as CommonWeightQuant or "
                    f"Int8ActPerTensorFloat (or a QuantSpec), got {quant!r}")
