"""Hostile and broken files, and safe saving (issue 11, item 7).

Every malformed file raises qatfhe.io.FileFormatError (a ValueError) before anything
large is read or allocated; saving is durable and atomic, keeps permissions, writes
through symlinks and leaves no temporary file behind."""
import io as pyio
import json
import os
import resource
import stat
import zipfile

import numpy as np
import pytest

import qatfhe
from qatfhe import io, nn, optim
from qatfhe.io import FileFormatError


def trained_net(seed=0):
    net = nn.Sequential(nn.QuantIdentity(bit_width=3), nn.QuantLinear(2, 6, weight_bit_width=3),
                        nn.QuantReLU(bit_width=3), nn.QuantLinear(6, 2, weight_bit_width=3),
                        seed=seed)
    net.prune(1)
    optim.AdamW(net.parameters(), lr=1e-2)
    X = np.random.default_rng(seed).normal(size=(40, 2)).astype(np.float32)
    net.fit(X, (X[:, 0] > 0).astype(int), epochs=2, batch_size=4, progress=False)
    return net, X


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    net, X = trained_net()
    net.save(folder / "net.npz")
    module = qatfhe.compile_qat_model(net.eval(), X)
    module.save(folder / "module.npz")
    return folder, net, module, X


def zip_bytes(entries, compression=zipfile.ZIP_STORED):
    """A zip archive of .npy entries {name: bytes} built here."""
    buffer = pyio.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name + ".npy", data)
    return buffer.getvalue()


def npy_bytes(array):
    buffer = pyio.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def header_npy(header):
    return npy_bytes(np.frombuffer(json.dumps(header).encode(), np.uint8))


def load_any(path, kind):
    return qatfhe.load(path) if kind == "net" else qatfhe.QuantizedModule.load(path)


@pytest.mark.parametrize("kind", ["net", "module"])
def test_byte_flips_give_file_format_errors(files, tmp_path, kind):
    folder, net, module, X = files
    original = (folder / f"{kind}.npz").read_bytes()
    rng = np.random.default_rng(11 if kind == "net" else 12)
    path = tmp_path / "flipped.npz"
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(150):
        data = bytearray(original)
        at = int(rng.integers(len(data)))
        data[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        try:
            loaded = load_any(path, kind)
        except FileFormatError as exc:
            assert "flipped.npz" in str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1              # a flip in bytes nobody reads: same contents
        if kind == "net":
            for name, value in net.state_dict().items():
                assert np.array_equal(loaded.state_dict()[name], value), (at, name)
        else:
            assert np.array_equal(loaded.forward(X, fhe="simulate"),
                                  module.forward(X, fhe="simulate"))
    assert outcomes["refused"] > 100


def test_deeply_nested_header(tmp_path):
    path = tmp_path / "nested.npz"
    text = ('{"format": "qatfhe-network", "version": 1, "network": ' + "[" * 100000
            + "]" * 100000 + "}").encode()
    path.write_bytes(zip_bytes({"__header__": npy_bytes(np.frombuffer(text, np.uint8))}))
    with pytest.raises(FileFormatError, match="nested.npz"):
        qatfhe.load(path)


def test_array_declaring_terabytes(files, tmp_path):
    folder = files[0]
    with zipfile.ZipFile(folder / "net.npz") as archive:
        entries = {info.filename[:-4]: archive.read(info) for info in archive.infolist()}
    buffer = pyio.BytesIO()   # an npy header declaring 4 TiB of float32, then 16 bytes
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 40,)})
    huge = buffer.getvalue() + bytes(16)
    entries["data/1.weight"] = bytes(huge)
    path = tmp_path / "huge.npz"
    path.write_bytes(zip_bytes(entries))
    with pytest.raises(FileFormatError, match="huge.npz"):
        qatfhe.load(path)


def test_small_file_describing_a_huge_network(tmp_path):
    header = {"format": "qatfhe-network", "version": 1,
              "network": {"type": "Sequential", "seed": 0, "input_shape": [30000, 1, 1],
                          "layers": [{"type": "Linear", "in_features": 30000,
                                      "out_features": 30000, "bias": True}]}}
    path = tmp_path / "bighead.npz"
    path.write_bytes(zip_bytes({"__header__": header_npy(header)}))
    assert path.stat().st_size < 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FileFormatError, match="bighead.npz.*30000|bighead.npz.*parameters"):
        qatfhe.load(path)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kb < 1 << 20                  # not the 3.4 GB such a network takes


def test_header_is_checked_before_arrays_are_read(files, tmp_path, monkeypatch):
    header = {"format": "something-else", "version": 1}
    path = tmp_path / "foreign.npz"
    path.write_bytes(zip_bytes({"__header__": header_npy(header),
                                "data/0.weight": npy_bytes(np.zeros(1 << 20, np.float32))}))
    reads = []
    real = io._read_array
    monkeypatch.setattr(io, "_read_array", lambda a, info, *rest: (reads.append(info.filename),
                                                                   real(a, info, *rest))[1])
    with pytest.raises(FileFormatError, match="foreign.npz.*not a qatfhe-network"):
        qatfhe.load(path)
    assert reads == ["__header__.npy"]


def test_zip_tricks(files, tmp_path):
    folder = files[0]
    original = (folder / "net.npz").read_bytes()
    with zipfile.ZipFile(folder / "net.npz") as archive:
        entries = {info.filename[:-4]: archive.read(info) for info in archive.infolist()}
    # a deflate bomb: 8 MB of zeros in a few KB
    bomb = dict(entries)
    bomb["data/9.weight"] = npy_bytes(np.zeros(1 << 21, np.float32))
    path = tmp_path / "bomb.npz"
    path.write_bytes(zip_bytes(bomb, zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(FileFormatError, match="bomb.npz.*ratio"):
        qatfhe.load(path)
    # flags and methods zipfile itself would reject with other exceptions
    with zipfile.ZipFile(folder / "net.npz") as archive:
        first = archive.infolist()[0]
    offset = first.header_offset
    for what, patch in (("encrypted", (6, b"\x01\x00")), ("method", (8, b"\x63\x00"))):
        data = bytearray(original)
        data[offset + patch[0]:offset + patch[0] + 2] = patch[1]
        central = bytes(data).rfind(b"PK\x01\x02")
        while central >= 0:              # the same field in every central directory entry
            data[central + patch[0] + 2:central + patch[0] + 4] = patch[1]
            central = bytes(data).rfind(b"PK\x01\x02", 0, central)
        path = tmp_path / f"{what}.npz"
        path.write_bytes(bytes(data))
        with pytest.raises(FileFormatError, match=f"{what}.npz"):
            qatfhe.load(path)


def test_edited_op_kind_is_refused_at_load(files, tmp_path):
    folder, _, module, X = files
    with np.load(folder / "module.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["__header__"].tobytes())
    for k, op in enumerate(header["ops"]):
        for kind in ("dense", "lookup", "transpose", "reshape", "round", "add", "decode", "nope"):
            if kind == op["kind"]:
                continue
            edited = json.loads(json.dumps(header))
            edited["ops"][k]["kind"] = kind
            for keep_checksum in (True, False):   # also with a recomputed header checksum
                if not keep_checksum:
                    edited["header_checksum"] = io._header_checksum(edited)
                path = tmp_path / "edited.npz"
                np.savez(path, **{**arrays, "__header__": np.frombuffer(
                    json.dumps(edited).encode(), np.uint8)})
                with pytest.raises(FileFormatError, match="edited.npz"):
                    qatfhe.QuantizedModule.load(path)


# ------------------------------------------------------------------ saving

def test_new_files_follow_the_umask_and_existing_files_keep_their_mode(tmp_path):
    net, _ = trained_net(1)
    old = os.umask(0o022)
    try:
        net.save(tmp_path / "new.npz")
        assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o644
        os.umask(0o077)
        net.save(tmp_path / "private.npz")
        assert stat.S_IMODE((tmp_path / "private.npz").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    os.chmod(tmp_path / "new.npz", 0o640)
    net.save(tmp_path / "new.npz")
    assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o640


def test_save_writes_through_a_symlink(tmp_path):
    net, _ = trained_net(2)
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "model.npz"
    target.write_bytes(b"old contents")
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    net.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert qatfhe.load(target).config() == net.config()
    assert qatfhe.load(link).config() == net.config()
    assert not list(tmp_path.rglob("*.tmp"))


def test_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    net, X = trained_net(3)
    path = tmp_path / "model.npz"
    path.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    with pytest.raises(OSError, match="disk full"):
        qatfhe.compile_qat_model(net.eval(), X).save(path)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="directory"):
        net.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_save_syncs_before_it_renames(tmp_path, monkeypatch):
    net, _ = trained_net(4)
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"),
                                                     real_replace(a, b))[1])
    net.save(tmp_path / "synced.npz")
    assert events[:2] == ["fsync", "replace"]


def test_arrays_beyond_what_the_network_needs_are_not_read(files, tmp_path, monkeypatch):
    folder = files[0]
    with zipfile.ZipFile(folder / "net.npz") as archive:
        entries = {info.filename[:-4]: archive.read(info) for info in archive.infolist()}
    entries["data/extra"] = npy_bytes(np.zeros(1 << 21, np.float32))   # 8 MB nobody needs
    path = tmp_path / "padded.npz"
    path.write_bytes(zip_bytes(entries))
    reads = []
    real = io._read_array
    monkeypatch.setattr(io, "_read_array", lambda a, info, *rest: (reads.append(info.filename),
                                                                   real(a, info, *rest))[1])
    with pytest.raises(FileFormatError, match="padded.npz.*at most"):
        qatfhe.load(path)
    assert reads == ["__header__.npy"]
