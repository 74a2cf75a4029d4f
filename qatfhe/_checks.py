"""Argument checks shared by the package: each raises TypeError/ValueError that names
the argument, says what was wrong and what was expected."""
import numbers

import numpy as np


INT64_MAX = 2 ** 63 - 1


def positive_int(value, name, minimum=1, maximum=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {value}")
    return int(value)


def flag(value, name):
    """True or False (a NumPy bool too); strings, numbers and None are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def positive_float(value, name, allow_zero=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, "
                         f"got {value}")
    return value


def seed(value, name="seed"):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative integer, got {value!r}")
    if not 0 <= value < 2 ** 64:
        raise ValueError(f"{name} must be a non-negative integer below 2**64, got {value}")
    return int(value)


def _numeric(value, name):
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be a numeric array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)
                                   or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def float_array(value, name):
    arr = _to_float32(_numeric(value, name), name)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity; expected finite values")
    return np.ascontiguousarray(arr)


def features(X, n_features, name="X"):
    """X as a C-contiguous float32 (n, n_features) array of finite values."""
    arr = _numeric(X, name)
    if arr.ndim == 1 and n_features == arr.shape[0]:
        raise ValueError(f"{name} must be 2-dimensional (n_samples, {n_features}); for one "
                         f"sample use X.reshape(1, -1)")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional (n_samples, {n_features}), got shape "
                         f"{arr.shape}")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} must have {n_features} features per sample, got {arr.shape[1]}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; expected at least one sample")
    arr = _to_float32(arr, name)
    if not np.isfinite(arr).all():
        bad = int(np.argmin(np.isfinite(arr).all(axis=1)))
        raise ValueError(f"{name} contains NaN or infinity (first in sample {bad}); expected "
                         f"finite values")
    return arr


def _to_float32(arr, name):
    """arr as float32, refusing finite values that float32 cannot hold."""
    if arr.dtype.itemsize > 4 and np.issubdtype(arr.dtype, np.floating) and arr.size:
        with np.errstate(invalid="ignore"):
            big = np.abs(arr) > np.finfo(np.float32).max
        if np.any(big & np.isfinite(arr)):
            raise ValueError(f"{name} has values beyond the float32 range (|x| > 3.4e38); "
                             f"expected values the network's float32 arithmetic can hold")
    return np.ascontiguousarray(arr, dtype=np.float32)


def samples(X, name="X"):
    """X as C-contiguous float32 (n, features) or (n, C, H, W) of finite values; the
    network checks the sizes against its layers."""
    arr = _numeric(X, name)
    if arr.ndim not in (2, 4):
        raise ValueError(f"{name} must be 2-dimensional (n_samples, features) or 4-dimensional "
                         f"(n_samples, channels, height, width), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; expected at least one sample")
    arr = _to_float32(arr, name)
    finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} contains NaN or infinity (first in sample "
                         f"{int(np.argmin(finite))}); expected finite values")
    return arr


def labels(y, n, n_classes, name="y"):
    """y as an int32 (n,) array of class indices in [0, n_classes)."""
    arr = np.asarray(y)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)
                                   or arr.dtype == np.bool_):
        if np.issubdtype(arr.dtype, np.floating) and arr.size and np.all(np.isfinite(arr)) \
                and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional (n_samples,), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} labels but X has {n} samples")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; expected at least one label")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"{name} must hold labels in [0, {n_classes}) for a network with "
                         f"{n_classes} outputs, got values in [{lo}, {hi}]")
    return np.ascontiguousarray(arr, dtype=np.int32)
