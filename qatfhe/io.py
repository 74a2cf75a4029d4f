"""Saving and loading networks: one .npz file (no pickle) holding a JSON header with a
format version, every parameter and buffer, the optimizer state, pruning masks and the
random streams, so that training resumes bit for bit.

Reading trusts nothing in the file: the zip directory, the header and every array's
declared size are checked against the file's real size before anything is read or
allocated (an entry must be stored, or deflated within a bounded ratio, never encrypted),
arrays are read one at a time to exactly their declared size, and every malformed file
raises FileFormatError (a ValueError) naming the file.  Writing goes to a temporary file
in the target's directory, flushed to disk (fsync) before it atomically replaces the
target; a failure leaves neither the temporary file nor a changed target.  The target
keeps its permissions (a new file gets the umask's), and a symlink is written through:
the file it points to is replaced, the link stays."""
import hashlib
import json
import os
import stat
import struct
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "qatfhe-network"
VERSION = 2          # 2: per-parameter optimizer step counts ("optimizer_steps")
READ_VERSIONS = (1, 2)

MAX_HEADER_BYTES = 16 << 20          # a header is JSON text: a few KB in practice
MAX_DEFLATE_RATIO = 64               # declared / compressed size of a deflated entry
_DTYPES = {np.dtype(t).str for t in (np.float32, np.uint8, np.int32, np.int64, np.uint64)}


class FileFormatError(ValueError):
    """A file that is truncated, corrupt, foreign or describes something invalid."""


# errors that reading a hostile file may raise from zipfile, zlib, json or NumPy
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
                KeyError, IndexError, NotImplementedError, RuntimeError, zlib.error, struct.error,
                OverflowError, UnicodeDecodeError, RecursionError, MemoryError, TypeError)


def _umask():
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_npz(path, header, arrays):
    """Write header (JSON) + arrays to path atomically (module docstring): fsync, then
    rename over the target; a failure leaves nothing behind."""
    path = os.fspath(path)
    target = os.path.realpath(path)            # a symlink: write the file it points to
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ValueError(f"cannot save to {path!r}: directory {directory!r} does not exist")
    if os.path.isdir(target):
        raise ValueError(f"cannot save to {path!r}: it is a directory")
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    payload = dict(arrays)
    header = dict(header, checksum=_checksum(arrays))
    header["header_checksum"] = _header_checksum(header)
    payload["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:   # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _entries(archive, file_size, where):
    """{array name: ZipInfo} of an archive whose directory passes the checks."""
    entries = {}
    total = 0
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy") or name[:-4] in entries:
            raise FileFormatError(f"{where}: unexpected entry {name!r} (not a qatfhe file?)")
        if info.flag_bits & 0x1:
            raise FileFormatError(f"{where}: entry {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise FileFormatError(f"{where}: entry {name!r} declares {info.file_size} "
                                      f"bytes but stores {info.compress_size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 4096:
                raise FileFormatError(f"{where}: entry {name!r} declares {info.file_size} bytes "
                                      f"from {info.compress_size} compressed (ratio above "
                                      f"{MAX_DEFLATE_RATIO})")
        else:
            raise FileFormatError(f"{where}: entry {name!r} uses compression method "
                                  f"{info.compress_type}; expected stored or deflated")
        total += info.compress_size
        if total > file_size:
            raise FileFormatError(f"{where}: its entries declare more bytes than the file's "
                                  f"{file_size} (truncated?)")
        entries[name[:-4]] = info
    return entries


def _read_array(archive, info, where, limit=None):
    """One .npy entry, its header checked against the entry's declared size before the
    data is read; the zip CRC is checked at the end of the entry."""
    name = info.filename[:-4]
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise FileFormatError(f"{where}: array {name!r} has npy version {version}")
        shape, fortran, dtype = np.lib.format._read_array_header(f, version,
                                                                 max_header_size=10000)
        if dtype.str not in _DTYPES or fortran:
            raise FileFormatError(f"{where}: array {name!r} has dtype {dtype} (order "
                                  f"{'F' if fortran else 'C'}); expected a C-ordered float32 "
                                  f"or integer array")
        count = 1
        for d in shape:
            if not isinstance(d, int) or d < 0:
                raise FileFormatError(f"{where}: array {name!r} has shape {shape}")
            count *= d
        nbytes = count * dtype.itemsize
        if nbytes != info.file_size - f.tell() or (limit is not None and nbytes > limit):
            raise FileFormatError(f"{where}: array {name!r} of shape {shape} needs {nbytes} "
                                  f"bytes but its entry holds {info.file_size - f.tell()}")
        data = f.read(nbytes)
        if len(data) != nbytes or f.read(1):
            raise FileFormatError(f"{where}: array {name!r} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def read_npz(path, expected_format, version=VERSION, check_sizes=None):
    """(header, arrays) from a file written by write_npz with that format name and
    version, or FileFormatError saying what is wrong.  check_sizes(header, sizes), with
    sizes {array name: declared bytes} and where (the quoted path), runs after the header is read and before any
    array is: it raises FileFormatError when the header promises more than the file
    holds (so a small file never makes the reader allocate a large network)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; expected a file written by save()")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    where = repr(path)
    try:
        file_size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            entries = _entries(archive, file_size, where)
            if "__header__" not in entries:
                raise FileFormatError(f"{where} is not a qatfhe file: it has no header")
            raw = _read_array(archive, entries.pop("__header__"), where, MAX_HEADER_BYTES)
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise FileFormatError(f"{where} has a corrupt header (not a byte string)")
            try:
                header = json.loads(raw.tobytes().decode())
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise FileFormatError(f"{where} has a corrupt header: "
                                      f"{type(exc).__name__}: {exc}") from None
            _check_header(header, expected_format, version, where)
            if check_sizes is not None:
                check_sizes(header, {name: info.file_size for name, info in entries.items()},
                            where)
            arrays = {name: _read_array(archive, info, where) for name, info in entries.items()}
    except FileFormatError:
        raise
    except _READ_ERRORS as exc:
        raise FileFormatError(f"{where} is not a readable qatfhe file (truncated or "
                              f"foreign?): {type(exc).__name__}: {exc}") from None
    return header, arrays


def _check_header(header, expected_format, version, where):
    if not isinstance(header, dict) or header.get("format") != expected_format:
        raise FileFormatError(f"{where} is not a {expected_format} file (format "
                              f"{header.get('format') if isinstance(header, dict) else None!r})")
    versions = version if isinstance(version, tuple) else (version,)
    if header.get("version") not in versions:
        raise FileFormatError(f"{where} has format version {header.get('version')!r}; this "
                              f"qatfhe reads version {' or '.join(map(str, versions))}")
    if "header_checksum" in header and header["header_checksum"] != _header_checksum(header):
        raise FileFormatError(f"{where} is corrupt: its header does not match the checksum "
                              f"stored with it")


def verify_checksum(path, header, arrays):
    """FileFormatError unless the arrays match the checksum stored at save time (call it
    after the structural checks, which name what is missing or misshapen)."""
    if header.get("checksum") != _checksum(arrays):
        raise FileFormatError(f"{os.fspath(path)!r} is corrupt: its arrays do not match the "
                              f"checksum in its header")


def _checksum(arrays):
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _header_checksum(header):
    """SHA-256 of the header's JSON (keys sorted) without this field itself."""
    rest = {k: v for k, v in header.items() if k != "header_checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def save(net, path):
    """Write net to path; the state is copied at one moment (a fit running in another
    thread is waited for, between epochs), so the file is never torn.  A state holding NaN
    or infinity, which load would reject, is refused (ValueError naming the tensor): a
    saved file always loads."""
    state = net._core.snapshot()
    _check_finite(net, state, path)
    arrays = {}
    for name, t in state["tensors"].items():
        arrays[f"data/{name}"] = t["data"]
        if t["kind"] == "param":
            arrays[f"opt_m/{name}"] = t["opt_m"]
            arrays[f"opt_v/{name}"] = t["opt_v"]
            if t["mask"] is not None:
                arrays[f"mask/{name}"] = t["mask"]
    init_state, shuffle_state = state["rng"]
    arrays["rng/init"] = np.array(init_state, dtype=np.uint64)
    arrays["rng/shuffle"] = np.array(shuffle_state, dtype=np.uint64)
    header = {"format": FORMAT, "version": VERSION, "network": net.config(),
              "training": state["training"],
              "optimizer": None if net.optimizer is None else net.optimizer.config(),
              "optimizer_step": state["optimizer_step"],
              "optimizer_steps": {name: t["opt_step"] for name, t in state["tensors"].items()
                                  if t["kind"] == "param"}}
    write_npz(path, header, arrays)


def load(path):
    """A network saved by net.save(path), with its optimizer state and masks;
    FileFormatError (a ValueError) naming the file for anything malformed."""
    header, arrays = read_npz(path, FORMAT, READ_VERSIONS, check_sizes=_check_network_sizes)
    try:
        return _network(path, header, arrays)
    except FileFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
            RecursionError, NotImplementedError) as exc:
        raise FileFormatError(f"{os.fspath(path)!r} describes an invalid network: "
                              f"{type(exc).__name__}: {exc}") from None


def _weight_count(config):
    """Parameters a layer description declares (weights and biases), without building it."""
    if not isinstance(config, dict):
        raise FileFormatError(f"unknown layer description {config!r}")
    kind = config.get("type")
    if kind == "Residual":
        return _weight_count(config["quant"]) + sum(_weight_count(c) for c in config["block"])
    if kind in ("Linear", "QuantLinear"):
        n_in, n_out, k = config["in_features"], config["out_features"], 1
    elif kind in ("Conv2d", "QuantConv2d"):
        n_in, n_out = config["in_channels"], config["out_channels"]
        kh, kw = config["kernel_size"]
        k = kh * kw
    else:
        return 0
    values = (n_in, n_out, k)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise FileFormatError(f"layer sizes must be positive integers, got {config!r}")
    return n_out * n_in * k + n_out


def _check_network_sizes(header, sizes, where):
    """The network the header describes must fit in the file's data arrays."""
    try:
        layers = header["network"]["layers"]
        declared = 4 * sum(_weight_count(c) for c in layers)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise FileFormatError(f"{where} describes an invalid network: "
                              f"{type(exc).__name__}: {exc}") from None
    held = sum(size for name, size in sizes.items() if name.startswith("data/"))
    if declared > held:
        raise FileFormatError(f"{where} describes a network of {declared // 4} parameters "
                              f"but holds only {held} bytes of tensors (corrupt?)")
    # data, two optimizer moments and a mask per weight, small buffers and npy headers
    bound = 4 * declared + (1 << 20) + 1024 * len(sizes)
    if sum(sizes.values()) > bound:
        raise FileFormatError(f"{where} declares {sum(sizes.values())} bytes of arrays for a "
                              f"network that needs at most {bound} (corrupt?)")


def _network(path, header, arrays):
    from . import nn, optim
    path = os.fspath(path)
    config = header["network"]
    layers = [nn.layer_from_config(c) for c in config["layers"]]
    net = nn.Sequential(*layers, seed=config["seed"],
                        input_shape=_stored_shape(config.get("input_shape")))
    for name, t in net._tensors.items():
        if f"data/{name}" not in arrays:
            raise FileFormatError(f"{path!r} lacks tensor {name!r}")
        _copy(t["data"], arrays[f"data/{name}"], name, path)
        if t["kind"] == "param":
            if f"mask/{name}" in arrays:
                mask = arrays[f"mask/{name}"]
                if mask.shape != t["data"].shape:
                    raise FileFormatError(f"{path!r}: mask of {name!r} has the wrong shape")
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
    except (KeyError, TypeError, ValueError) as exc:
        raise FileFormatError(f"{path!r} lacks the random state: {exc}") from None
    net.train(bool(header.get("training", True)))
    verify_checksum(path, header, arrays)
    return net


def _check_finite(net, state, path):
    from ._finite import tensor_label
    for name, t in state["tensors"].items():
        for what, values in (("", t["data"]), ("optimizer moment m of ", t["opt_m"]),
                             ("optimizer moment v of ", t["opt_v"])):
            if values is not None and not np.isfinite(values).all():
                bad = int(values.size - np.count_nonzero(np.isfinite(values)))
                raise ValueError(f"cannot save to {os.fspath(path)!r}: the {what}"
                                 f"{tensor_label(net, name)} holds NaN or infinity in {bad} of "
                                 f"{values.size} entries, e.g. after a diverged training or a "
                                 f"write through a parameter view; expected finite values")


def _restore_steps(net, header, path):
    """Each parameter's optimizer step count.  Version 1 files kept one count for all:
    every parameter takes it, except a learned threshold still in its statistics phase,
    which has taken no step yet."""
    names = set(net._core.tensor_steps())
    steps = header.get("optimizer_steps")
    if steps is None:
        count = int(header.get("optimizer_step", 0))
        steps = {name: count for name in names}
        for name in names:
            if name.endswith(".act_quant.threshold"):
                layer = net._c_layers[int(name.split(".", 1)[0])]
                seen = net._tensors[name.replace("threshold", "stats_count")]["data"][0]
                if seen <= layer.act_quant.collect_stats_steps:
                    steps[name] = 0
    if not isinstance(steps, dict) or set(steps) != names:
        raise FileFormatError(f"{path!r}: the optimizer step counts do not match the network")
    for name, step in steps.items():
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2 ** 63:
            raise FileFormatError(f"{path!r}: optimizer step count of {name!r} must be an "
                                  f"int >= 0, got {step!r}")
        net._core.set_tensor_step(name, step)


def _stored_shape(shape):
    """The saved input shape, or None when its spatial size was never set."""
    if shape is None:
        return None
    if not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
        raise FileFormatError(f"input_shape must be a list of integers, got {shape!r}")
    if len(shape) != 3 or min(shape) < 1:
        return None
    return tuple(shape)


def _copy(target, value, name, path):
    if value is None or value.shape != target.shape or value.dtype != np.float32:
        raise FileFormatError(f"{path!r}: tensor {name!r} is missing or has the wrong "
                              f"shape/dtype")
    if not np.isfinite(value).all():
        raise FileFormatError(f"{path!r}: tensor {name!r} holds NaN or infinity")
    target[...] = value
