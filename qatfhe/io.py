"""Saving and loading networks: one .npz file (no pickle) holding a JSON header with a
format version, every parameter and buffer, the optimizer state, pruning masks and the
random streams, so that training resumes bit for bit."""
import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "qatfhe-network"
VERSION = 2          # 2: per-parameter optimizer step counts ("optimizer_steps")
READ_VERSIONS = (1, 2)


def write_npz(path, header, arrays):
    """Write header (JSON) + arrays to path atomically: a failure leaves nothing behind."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a directory; expected a file "
                                f"name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot save to {path!r}: directory {directory!r} does not exist")
    payload = dict(arrays)
    header = dict(header, checksum=_checksum(arrays))
    payload["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path, expected_format, version=VERSION):
    """(header, arrays) from a file written by write_npz with that format name and
    version, or ValueError saying what is wrong."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; expected a file written by save()")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not a qatfhe archive")
        with data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path!r} is not a readable qatfhe file (truncated or foreign?): "
                         f"{exc}") from None
    if "__header__" not in arrays:
        raise ValueError(f"{path!r} is not a qatfhe file: it has no header")
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r} has a corrupt header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != expected_format:
        raise ValueError(f"{path!r} is not a {expected_format} file (format "
                         f"{header.get('format') if isinstance(header, dict) else None!r})")
    versions = version if isinstance(version, tuple) else (version,)
    if header.get("version") not in versions:
        raise ValueError(f"{path!r} has format version {header.get('version')!r}; this qatfhe "
                         f"reads version {' or '.join(map(str, versions))}")
    return header, arrays


def verify_checksum(path, header, arrays):
    """ValueError unless the arrays match the checksum stored at save time (call it after
    the structural checks, which name what is missing or misshapen)."""
    if header.get("checksum") != _checksum(arrays):
        raise ValueError(f"{os.fspath(path)!r} is corrupt: its arrays do not match the checksum "
                         f"in its header")


def _checksum(arrays):
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save(net, path):
    """Refuses (ValueError naming the tensor) a network holding NaN or infinity, which load
    would reject: a saved file always loads."""
    from ._finite import check_finite_state
    check_finite_state(net, f"cannot save to {os.fspath(path)!r}", optimizer_state=True)
    arrays = {}
    for name, t in net._tensors.items():
        arrays[f"data/{name}"] = t["data"]
        if t["kind"] == "param":
            arrays[f"opt_m/{name}"] = t["opt_m"]
            arrays[f"opt_v/{name}"] = t["opt_v"]
            mask = net._core.get_mask(name)
            if mask is not None:
                arrays[f"mask/{name}"] = mask
    init_state, shuffle_state = net._core.rng_state()
    arrays["rng/init"] = np.array(init_state, dtype=np.uint64)
    arrays["rng/shuffle"] = np.array(shuffle_state, dtype=np.uint64)
    header = {"format": FORMAT, "version": VERSION, "network": net.config(),
              "training": net.training,
              "optimizer": None if net.optimizer is None else net.optimizer.config(),
              "optimizer_step": net._core.optimizer_step,
              "optimizer_steps": net._core.tensor_steps()}
    write_npz(path, header, arrays)


def load(path):
    """A network saved by net.save(path), with its optimizer state and masks."""
    from . import nn, optim
    header, arrays = read_npz(path, FORMAT, READ_VERSIONS)
    try:
        config = header["network"]
        layers = [nn.layer_from_config(c) for c in config["layers"]]
        net = nn.Sequential(*layers, seed=config["seed"],
                            input_shape=_stored_shape(config.get("input_shape")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path!r} describes an invalid network: {exc}") from None
    for name, t in net._tensors.items():
        if f"data/{name}" not in arrays:
            raise ValueError(f"{path!r} lacks tensor {name!r}")
        _copy(t["data"], arrays[f"data/{name}"], name, path)
        if t["kind"] == "param":
            if f"mask/{name}" in arrays:
                mask = arrays[f"mask/{name}"]
                if mask.shape != t["data"].shape:
                    raise ValueError(f"{path!r}: mask of {name!r} has the wrong shape")
                net._core.set_mask(name, mask)
    if header.get("optimizer"):
        optim.from_config(net, header["optimizer"])
        for name, t in net._tensors.items():
            if t["kind"] == "param":
                _copy(t["opt_m"], arrays.get(f"opt_m/{name}"), "opt_m/" + name, path)
                _copy(t["opt_v"], arrays.get(f"opt_v/{name}"), "opt_v/" + name, path)
        net._core.optimizer_step = int(header.get("optimizer_step", 0))
        _restore_steps(net, header, path)
    try:
        net._core.set_rng_state(tuple(int(v) for v in arrays["rng/init"]),
                                tuple(int(v) for v in arrays["rng/shuffle"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path!r} lacks the random state: {exc}") from None
    net.train(bool(header.get("training", True)))
    verify_checksum(path, header, arrays)
    return net


def _restore_steps(net, header, path):
    """Each parameter's optimizer step count.  Version 1 files kept one count for all:
    every parameter takes it, except a learned threshold still in its statistics phase,
    which has taken no step yet."""
    steps = header.get("optimizer_steps")
    if steps is None:
        count = int(header.get("optimizer_step", 0))
        steps = {name: count for name in net._core.tensor_steps()}
        for name in steps:
            if name.endswith(".act_quant.threshold"):
                layer = net._c_layers[int(name.split(".", 1)[0])]
                seen = net._tensors[name.replace("threshold", "stats_count")]["data"][0]
                if seen <= layer.act_quant.collect_stats_steps:
                    steps[name] = 0
    if not isinstance(steps, dict) or set(steps) != set(net._core.tensor_steps()):
        raise ValueError(f"{path!r}: the optimizer step counts do not match the network")
    for name, step in steps.items():
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{path!r}: optimizer step count of {name!r} must be an int >= 0, "
                             f"got {step!r}")
        net._core.set_tensor_step(name, step)


def _stored_shape(shape):
    """The saved input shape, or None when its spatial size was never set."""
    if shape is None or len(shape) != 3 or min(shape) < 1:
        return None
    return tuple(shape)


def _copy(target, value, name, path):
    if value is None or value.shape != target.shape or value.dtype != np.float32:
        raise ValueError(f"{path!r}: tensor {name!r} is missing or has the wrong shape/dtype")
    if not np.isfinite(value).all():
        raise ValueError(f"{path!r}: tensor {name!r} holds NaN or infinity")
    target[...] = value
