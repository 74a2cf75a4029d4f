"""Bad input never crashes: each case of issue 2's list raises ValueError / TypeError whose
message names the argument (RuntimeError for calls out of order), and leaves the network
as it was. Non-contiguous, integer and float64 inputs are converted and give the same
result as C-contiguous float32. Repeating fit / forward does not grow memory."""
import gc
import os
import tracemalloc

import numpy as np
import pytest

import qatfhe
from qatfhe import nn, optim

F32 = np.float32


def small_net(seed=0):
    return nn.Sequential(nn.QuantIdentity(bit_width=4), nn.QuantLinear(3, 5),
                         nn.QuantReLU(bit_width=4), nn.Linear(5, 3), seed=seed)


def snapshot(net):
    return {n: (t["data"].copy(), None if t["opt_m"] is None else t["opt_m"].copy())
            for n, t in net._tensors.items()}


def assert_unchanged(net, before):
    for name, (data, m) in before.items():
        np.testing.assert_array_equal(net._tensors[name]["data"], data, err_msg=name)
        if m is not None:
            np.testing.assert_array_equal(net._tensors[name]["opt_m"], m, err_msg=name)


@pytest.fixture
def net():
    n = small_net()
    optim.AdamW(n.parameters())
    return n


@pytest.fixture
def Xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 3)).astype(F32), rng.integers(0, 3, 8)


# ---------------------------------------------------------------- X
BAD_X = [
    ("1-d", np.zeros(3), ValueError, "X must be 2-dimensional"),
    ("3-d", np.zeros((2, 3, 1)), ValueError, "X must be 2-dimensional"),
    ("0-d", np.float32(1), ValueError, "X must be 2-dimensional"),
    ("feature count", np.zeros((4, 2)), ValueError, "X must have 3 features"),
    ("strings", np.array([["a", "b", "c"]]), TypeError, "X must hold real numbers"),
    ("object", np.array([[1, 2, 3]], dtype=object), TypeError, "X must hold real numbers"),
    ("complex", np.zeros((2, 3), complex), TypeError, "X must hold real numbers"),
    ("ragged list", [[1, 2, 3], [1]], TypeError, "X must be a numeric array"),
    ("NaN", np.array([[0.0, np.nan, 1.0]]), ValueError, "X contains NaN or infinity"),
    ("inf", np.array([[0.0, 1.0, 2.0], [np.inf, 0, 0]]), ValueError, "X contains NaN or infinity"),
    ("-inf float32", np.array([[-np.inf, 0, 0]], F32), ValueError, "X contains NaN or infinity"),
    ("empty", np.zeros((0, 3)), ValueError, "X is empty"),
    ("overflow to inf in float32", np.array([[1e39, 0, 0]]), ValueError, "X has values beyond the float32 range"),
]


@pytest.mark.parametrize("X,error,message", [c[1:] for c in BAD_X], ids=[c[0] for c in BAD_X])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_bad_X_forward_predict_fit(net, X, error, message):
    before = snapshot(net)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        with pytest.raises(error, match=message):
            net(X)
    with pytest.raises(error, match=message):
        net.predict(X)
    for y in (np.zeros(1, int), np.zeros(2, int)):
        with pytest.raises(error, match=message):
            net.fit(X, y, epochs=1, progress=False)
    assert_unchanged(net, before)
    assert net._core.optimizer_step == 0


@pytest.mark.parametrize("X,error,message", [c[1:] for c in BAD_X if c[0] != "empty"],
                         ids=[c[0] for c in BAD_X if c[0] != "empty"])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_bad_X_score(net, X, error, message):
    n = len(X) if np.ndim(np.asarray(X, dtype=object)) else 1
    with pytest.raises(error, match=message):
        net.score(X, np.zeros(n, int))


# ---------------------------------------------------------------- y
BAD_Y = [
    ("too large", [0, 1, 2, 3, 0, 1, 2, 0], ValueError, r"y must hold labels in \[0, 3\)"),
    ("negative", [0, 1, -1, 0, 0, 1, 2, 0], ValueError, r"y must hold labels in \[0, 3\)"),
    ("short", [0, 1, 2], ValueError, "y has 3 labels but X has 8 samples"),
    ("long", [0] * 9, ValueError, "y has 9 labels but X has 8 samples"),
    ("float non-integer", [0, 1, 0.5, 0, 0, 1, 2, 0], TypeError, "y must hold integer class labels"),
    ("NaN", [0, 1, np.nan, 0, 0, 1, 2, 0], TypeError, "y must hold integer class labels"),
    ("strings", ["a"] * 8, TypeError, "y must hold integer class labels"),
    ("complex", np.zeros(8, complex), TypeError, "y must hold integer class labels"),
    ("2-d", np.zeros((8, 1), int), ValueError, "y must be 1-dimensional"),
    ("huge", [0] * 7 + [2 ** 40], ValueError, r"y must hold labels in \[0, 3\)"),
]


@pytest.mark.parametrize("y,error,message", [c[1:] for c in BAD_Y], ids=[c[0] for c in BAD_Y])
def test_bad_labels(net, Xy, y, error, message):
    X, _ = Xy
    before = snapshot(net)
    with pytest.raises(error, match=message):
        net.fit(X, y, epochs=1, progress=False)
    with pytest.raises(error, match=message):
        net.score(X, y)
    assert_unchanged(net, before)
    net.train()
    net(X)
    if len(np.asarray(y, dtype=object)) == len(X) or np.ndim(y) != 1:
        with pytest.raises(error, match=message):
            net.loss_backward(y)
        with pytest.raises(error, match=message):
            nn.CrossEntropyLoss()(net(X), y)


def test_integer_valued_float_labels_are_accepted(net, Xy):
    X, y = Xy
    a, b = small_net(), small_net()
    a.fit(X, y, epochs=1, seed=1, progress=False)
    b.fit(X, y.astype(np.float64), epochs=1, seed=1, progress=False)
    np.testing.assert_array_equal(a[3].weight, b[3].weight)


def test_empty_labels(net):
    with pytest.raises(ValueError, match="X is empty"):
        net.fit(np.zeros((0, 3), F32), np.zeros(0, int), progress=False)
    with pytest.raises(ValueError, match="y"):
        net.fit(np.zeros((2, 3), F32), np.zeros(0, int), progress=False)


def test_loss_backward_label_count_names_y(net, Xy):
    X, y = Xy
    net(X)
    with pytest.raises(ValueError, match="y"):
        net.loss_backward(y[:2])


# ---------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize("bits,error", [(1, ValueError), (17, ValueError), (0, ValueError),
                                        (-3, ValueError), (3.5, TypeError), (True, TypeError),
                                        ("3", TypeError), (4.0, TypeError)])
def test_bit_width_outside_2_to_16(bits, error):
    for make in (lambda: nn.QuantIdentity(bit_width=bits), lambda: nn.QuantReLU(bit_width=bits),
                 lambda: nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=bits),
                 lambda: nn.QuantLinear(2, 2, weight_bit_width=bits),
                 lambda: nn.QuantLinear(2, 2, weight_quant=nn.CommonWeightQuant,
                                        weight_bit_width=bits)):
        with pytest.raises(error, match="bit_width must be an integer in \\[2, 16\\]"):
            make()

    class Custom(nn.CommonActQuant):
        bit_width = bits

    with pytest.raises(error, match="bit_width"):
        nn.QuantReLU(act_quant=Custom)


@pytest.mark.parametrize("bits", [2, 16, np.int64(5)])
def test_bit_width_limits_are_accepted(bits):
    net = nn.Sequential(nn.QuantIdentity(bit_width=bits), nn.QuantLinear(2, 2, weight_bit_width=bits))
    assert net[0].act_quant.bit_width == net[1].weight_quant.bit_width == int(bits)
    assert np.isfinite(net(np.ones((1, 2), F32))).all()


@pytest.mark.parametrize("lr,error", [(0, ValueError), (-1e-3, ValueError), (float("nan"), ValueError),
                                      (float("inf"), ValueError), ("0.1", TypeError),
                                      (None, TypeError), (True, TypeError)])
@pytest.mark.parametrize("cls", [optim.AdamW, optim.SGD])
def test_non_positive_lr(net, cls, lr, error):
    with pytest.raises(error, match="lr"):
        cls(net.parameters(), lr=lr)
    assert isinstance(net.optimizer, optim.AdamW)  # the failed call did not replace it


@pytest.mark.parametrize("kwargs,error,name", [
    ({"weight_decay": -0.1}, ValueError, "weight_decay"), ({"eps": -1.0}, ValueError, "eps"),
    ({"betas": (0.9, 1.0)}, ValueError, "betas"), ({"betas": 0.9}, TypeError, "betas")])
def test_bad_adamw_arguments(net, kwargs, error, name):
    with pytest.raises(error, match=name):
        optim.AdamW(net.parameters(), **kwargs)


def test_bad_sgd_arguments(net):
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(net.parameters(), lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(net.parameters(), lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="params"):
        optim.SGD([np.zeros(3)], lr=0.1)


@pytest.mark.parametrize("kwargs,error,name", [
    ({"epochs": -1}, ValueError, "epochs"), ({"epochs": 1.5}, TypeError, "epochs"),
    ({"epochs": None}, TypeError, "epochs"), ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": -2}, ValueError, "batch_size"), ({"batch_size": 2.0}, TypeError, "batch_size"),
    ({"seed": -1}, ValueError, "seed"), ({"seed": 2 ** 64}, ValueError, "seed"),
    ({"seed": 0.5}, TypeError, "seed")])
def test_bad_fit_arguments(net, Xy, kwargs, error, name):
    X, y = Xy
    before = snapshot(net)
    with pytest.raises(error, match=name):
        net.fit(X, y, progress=False, **kwargs)
    assert_unchanged(net, before)


def test_zero_epochs_and_oversized_batch_are_fine(net, Xy):
    X, y = Xy
    before = snapshot(net)
    assert net.fit(X, y, epochs=0, progress=False) == {"loss": [], "accuracy": []}
    assert_unchanged(net, before)
    net.fit(X, y, epochs=1, batch_size=1000, progress=False)    # one batch of 8
    assert net._core.optimizer_step == 1


def test_optimizer_of_another_network(net, Xy):
    X, y = Xy
    other = small_net()
    with pytest.raises(ValueError, match="optimizer"):
        net.fit(X, y, optimizer=optim.AdamW(other.parameters()), progress=False)


@pytest.mark.parametrize("make,error,name", [
    (lambda: nn.Linear(0, 2), ValueError, "in_features"),
    (lambda: nn.Linear(2, -1), ValueError, "out_features"),
    (lambda: nn.Linear(2.0, 2), TypeError, "in_features"),
    (lambda: nn.Linear(2, 2, bias="yes"), TypeError, "bias"),
    (lambda: nn.QuantLinear(2, 2, weight_quant="int8"), TypeError, "weight_quant"),
    (lambda: nn.QuantReLU(act_quant=3), TypeError, "act_quant"),
    (lambda: nn.QuantReLU(collect_stats_steps=0), ValueError, "collect_stats_steps"),
    (lambda: nn.Sequential(), ValueError, "at least one layer"),
    (lambda: nn.Sequential(nn.Linear(2, 3), "relu"), TypeError, "layer 1"),
    (lambda: nn.Sequential(nn.Linear(2, 3), nn.Linear(4, 2)), ValueError, "layer 1"),
    (lambda: nn.Sequential(nn.Linear(2, 3), seed=-1), ValueError, "seed"),
    (lambda: nn.Sequential(nn.Linear(2, 3), seed="0"), TypeError, "seed"),
    (lambda: nn.Sequential(nn.ReLU()), ValueError, "Linear"),
])
def test_bad_layers_and_networks(make, error, name):
    with pytest.raises(error, match=name):
        make()


def test_bad_parameter_assignment(net):
    before = snapshot(net)
    with pytest.raises(ValueError, match="weight must have shape"):
        net[1].weight = np.zeros((3, 3))
    with pytest.raises(ValueError, match="weight contains NaN"):
        net[1].weight = np.full((5, 3), np.nan)
    with pytest.raises(TypeError, match="bias"):
        net[1].bias = ["a"] * 5
    with pytest.raises(ValueError, match="missing"):
        net.load_state_dict({})
    assert_unchanged(net, before)


# ---------------------------------------------------------------- order of calls
def test_backward_before_forward_is_a_runtime_error(Xy):
    X, y = Xy
    net = small_net()
    with pytest.raises(RuntimeError, match="forward"):
        net.loss_backward(y)
    with pytest.raises(RuntimeError, match="forward"):
        net.backward(np.zeros((8, 3), F32))
    net.eval()
    net(X)
    with pytest.raises(RuntimeError, match="forward"):
        net.loss_backward(y)                                     # eval forwards keep nothing
    net.train()
    net(X)
    net.loss_backward(y)
    with pytest.raises(RuntimeError, match="forward"):
        net.loss_backward(y)                                     # one backward per forward
    with pytest.raises(RuntimeError):
        net._core.step()                                         # no optimizer set
    with pytest.raises(RuntimeError, match="forward"):
        nn.CrossEntropyLoss()(np.zeros((8, 3), F32), y).backward()


def test_backward_with_wrong_gradient_shape(net, Xy):
    X, _ = Xy
    net(X)
    with pytest.raises(ValueError, match="grad_output"):
        net.backward(np.zeros((8, 4), F32))
    with pytest.raises(ValueError, match="grad_output"):
        net.backward(np.full((8, 3), np.nan, F32))


# ---------------------------------------------------------------- files
@pytest.fixture
def saved(tmp_path, Xy):
    net = small_net()
    optim.AdamW(net.parameters())
    net.fit(*Xy, epochs=1, batch_size=3, progress=False)
    path = tmp_path / "net.npz"
    net.save(path)
    return path


def write(path, content):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.9, 0.999])
def test_truncated_file(saved, fraction):
    data = saved.read_bytes()
    cut = write(saved.parent / "cut.npz", data[:int(len(data) * fraction)])
    with pytest.raises(ValueError, match="cut.npz"):
        qatfhe.load(cut)


def test_corrupted_byte(saved):
    """One flipped bit inside a stored parameter's bytes (the zip CRC must catch it)."""
    data = bytearray(saved.read_bytes())
    payload = qatfhe.load(saved)[1].weight.tobytes()
    at = bytes(data).find(payload)
    assert at > 0
    data[at + len(payload) // 2] ^= 0x01
    with pytest.raises(ValueError, match="bad.npz"):
        qatfhe.load(write(saved.parent / "bad.npz", bytes(data)))


@pytest.mark.parametrize("kind", ["random bytes", "empty", "text", "plain npz", "wrong format",
                                  "wrong version", "garbage header"])
def test_foreign_files(tmp_path, kind):
    path = tmp_path / "foreign.npz"
    if kind == "random bytes":
        write(path, np.random.default_rng(0).bytes(4000))
    elif kind == "empty":
        write(path, b"")
    elif kind == "text":
        path.write_text("layer,weight\n1,0.5\n")
    elif kind == "plain npz":
        np.savez(path, weight=np.zeros((2, 2)))
    else:
        header = {"wrong format": b'{"format": "something-else", "version": 1}',
                  "wrong version": b'{"format": "qatfhe-network", "version": 999}',
                  "garbage header": b"\xff\x00{not json"}[kind]
        np.savez(path, __header__=np.frombuffer(header, np.uint8))
    with pytest.raises(ValueError, match="foreign.npz"):
        qatfhe.load(path)


def test_foreign_npy_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="array.npy"):
        qatfhe.load(path)


def test_file_with_broken_contents(saved):
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    broken = dict(arrays)
    del broken["data/1.weight"]
    path = saved.parent / "broken.npz"
    np.savez(path, **broken)
    with pytest.raises(ValueError, match=r"broken.npz.*(1\.weight|corrupt)"):
        qatfhe.load(path)
    broken = {**arrays, "data/1.weight": np.zeros((2, 2), F32)}
    np.savez(path, **broken)
    with pytest.raises(ValueError, match=r"broken.npz.*(1\.weight|corrupt)"):
        qatfhe.load(path)
    header = arrays["__header__"].tobytes().replace(b'"bit_width": 8', b'"bit_width": 40')
    np.savez(path, **{**arrays, "__header__": np.frombuffer(header, np.uint8)})
    with pytest.raises(ValueError, match=r"broken.npz.*(bit_width|corrupt)"):
        qatfhe.load(path)


def test_missing_file_and_bad_paths(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        qatfhe.load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        qatfhe.load(tmp_path)                                    # a directory
    with pytest.raises(TypeError):
        qatfhe.load(None)
    with pytest.raises(ValueError, match="does not exist"):
        small_net().save(tmp_path / "no" / "such" / "dir.npz")
    assert qatfhe.load(saved).config() == small_net().config()   # the good file still loads


# ---------------------------------------------------------------- conversions
def test_non_contiguous_integer_and_float64_input_is_converted():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(9, 6))
    X = np.ascontiguousarray(base[:, ::2], dtype=F32)                # the reference input
    variants = {"strided": base.astype(F32)[:, ::2], "float64": base[:, ::2],
                "fortran": np.asfortranarray(X), "reversed rows": X[::-1][::-1],
                "list": X.tolist(), "transposed view": np.ascontiguousarray(X.T).T,
                "big-endian": X.astype(">f4")}
    net = small_net(3)
    ref_out = net.eval()(X).copy()
    for name, V in variants.items():
        np.testing.assert_array_equal(net(V), ref_out, err_msg=name)
        np.testing.assert_array_equal(net.predict(V), ref_out.argmax(1), err_msg=name)
    ints = rng.integers(-2, 3, (9, 3))
    np.testing.assert_array_equal(net(ints), net(ints.astype(F32)))
    y = rng.integers(0, 3, 18)[::2]
    runs = []
    for V, labels in ((X, np.ascontiguousarray(y)), (variants["strided"], y),
                      (variants["float64"], y.astype(np.int32)), (variants["fortran"], y.astype(np.uint8))):
        n = small_net(3)
        n.fit(V, labels, epochs=2, batch_size=2, progress=False)
        runs.append({k: t["data"].copy() for k, t in n._tensors.items()})
    for other in runs[1:]:
        for k in runs[0]:
            np.testing.assert_array_equal(other[k], runs[0][k], err_msg=k)
    assert base.flags.writeable and not np.shares_memory(net(X), X)


def test_inputs_are_not_modified(Xy):
    X, y = Xy
    X_copy, y_copy = X.copy(), y.copy()
    net = small_net()
    net.fit(X, y, epochs=1, progress=False)
    net(X)
    net.predict(X)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)


# ---------------------------------------------------------------- memory
def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_repeated_fit_and_forward_do_not_grow_memory():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 3)).astype(F32), rng.integers(0, 3, 64)
    X_big = rng.normal(size=(512, 3)).astype(F32)
    net = small_net()
    optim.AdamW(net.parameters())

    def work(i):
        net.fit(X, y, epochs=1, batch_size=16, progress=False)
        net.train()
        net(X)
        net.loss_backward(y)
        net.zero_grad()
        net.eval()
        net(X_big if i % 2 else X)
        net.predict(X)
        for bad in (np.full((2, 3), np.nan, F32), np.zeros((2, 4), F32)):
            try:
                net(bad)
            except ValueError:
                pass

    for i in range(50):  # warm up: batch buffers, NumPy caches
        work(i)
    gc.collect()
    tracemalloc.start()
    rss_before = rss_bytes()
    snap_before = tracemalloc.take_snapshot()
    for i in range(1000):
        work(i)
    gc.collect()
    snap_after = tracemalloc.take_snapshot()
    rss_after = rss_bytes()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in snap_after.compare_to(snap_before, "filename"))
    assert growth < 200_000, f"Python allocations grew by {growth} bytes"
    assert rss_after - rss_before < 4 * 2 ** 20, f"RSS grew by {(rss_after - rss_before) / 2**20:.1f} MB"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_creating_and_dropping_networks_does_not_leak(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)).astype(F32), rng.integers(0, 3, 16)
    path = tmp_path / "n.npz"

    def work():
        n = nn.Sequential(nn.QuantIdentity(bit_width=4), nn.QuantLinear(3, 64), nn.QuantReLU(),
                          nn.Linear(64, 3))
        n.fit(X, y, epochs=1, batch_size=8, progress=False)
        n.save(path)
        qatfhe.load(path)(X)

    for _ in range(30):
        work()
    gc.collect()
    before = rss_bytes()
    for _ in range(120):
        work()
    gc.collect()
    assert rss_bytes() - before < 4 * 2 ** 20
