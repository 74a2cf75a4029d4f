"""Pruning (qatfhe.prune) against a NumPy argsort reference and torch.nn.utils.prune.

The reference ranks the kept entries with a stable argsort of |w| (ties: lower flat
index first, the documented rule) and masks the first `amount`; fan_in does the same
per row. Engine tests check the masks the net holds, exact zero counts, zeros that
survive AdamW training, remove, save/load and the tutorial's PrunedQuantNet rule."""
import numpy as np
import pytest

from qatfhe import _core, prune


# ---------------------------------------------------------------- references
def reference_l1(w, mask, amount):
    """Mask the `amount` smallest |w| among the kept entries of mask (None: all)."""
    flat = np.abs(np.asarray(w, np.float32).ravel())
    keep = np.ones(flat.size, bool) if mask is None else np.asarray(mask).ravel().astype(bool)
    kept_index = np.flatnonzero(keep)
    ranked = kept_index[np.argsort(flat[kept_index], kind="stable")]
    out = keep.copy()
    out[ranked[:amount]] = False
    return out.reshape(np.shape(w)).astype(np.uint8)


def reference_fan_in(w, mask, max_non_zero):
    """Per row (first axis): keep the max_non_zero largest |w| among the kept entries."""
    rows = np.asarray(w, np.float32).reshape(len(w), int(np.prod(np.shape(w)[1:])))
    keep = np.ones(rows.shape, np.uint8) if mask is None else np.asarray(mask).reshape(rows.shape)
    out = np.stack([reference_l1(r, k, max(0, int(k.sum()) - max_non_zero))
                    for r, k in zip(rows, keep)]) if len(rows) else keep
    return out.reshape(np.shape(w))


def random_weights(rng, shape, kind):
    """kind 0: U(-1, 1); 1: small integers, many ties and signed zeros; 2: a float32
    tensor as a trained net would hold it after pruning (some exact zeros)."""
    if kind == 0:
        return rng.uniform(-1, 1, shape).astype(np.float32)
    if kind == 1:
        return (rng.integers(-2, 3, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)
    w = rng.normal(0, 0.1, shape).astype(np.float32)
    w[rng.random(shape) < 0.3] = 0.0
    return w


# ---------------------------------------------------------------- the C kernels
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_l1_mask_equals_argsort_reference(kind):
    rng = np.random.default_rng(kind)
    for shape in [(0,), (1,), (7,), (5, 13), (100, 100), (3, 4, 5)]:
        w = random_weights(rng, shape, kind)
        for with_mask in (False, True):
            mask = (rng.random(shape) < 0.6).astype(np.uint8) if with_mask else None
            kept = w.size if mask is None else int(mask.sum())
            for amount in sorted({a for a in (0, 1, kept // 3, kept - 1, kept) if 0 <= a <= kept}):
                got = _core.l1_unstructured_mask(w, mask, amount)
                want = reference_l1(w, mask, amount)
                assert got.dtype == np.uint8 and got.shape == w.shape
                np.testing.assert_array_equal(got, want)
                assert int(got.sum()) == kept - amount


def test_l1_mask_ties_lower_index_first():
    w = np.array([1.0, -0.0, -1.0, 0.0, 1.0, -0.0], np.float32)
    np.testing.assert_array_equal(_core.l1_unstructured_mask(w, None, 4), [0, 0, 1, 0, 1, 0])


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_fan_in_mask_equals_reference(kind):
    rng = np.random.default_rng(10 + kind)
    for shape in [(1, 1), (4, 9), (30, 100), (6, 3, 2, 2), (0, 4)]:
        w = random_weights(rng, shape, kind)
        for with_mask in (False, True):
            mask = (rng.random(shape) < 0.6).astype(np.uint8) if with_mask else None
            for max_non_zero in (1, 2, 5, 20, 1000):
                got = _core.fan_in_mask(w, mask, max_non_zero)
                np.testing.assert_array_equal(got, reference_fan_in(w, mask, max_non_zero))
                per_row = got.reshape(len(w), int(np.prod(shape[1:]))).sum(axis=1)
                assert (per_row <= max_non_zero).all()


def test_kernels_leave_inputs_unchanged():
    rng = np.random.default_rng(3)
    w = random_weights(rng, (8, 8), 0)
    mask = (rng.random((8, 8)) < 0.5).astype(np.uint8)
    w0, mask0 = w.copy(), mask.copy()
    _core.l1_unstructured_mask(w, mask, 3)
    _core.fan_in_mask(w, mask, 2)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(mask, mask0)


def test_kernel_bad_input():
    w = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="amount"):
        _core.l1_unstructured_mask(w, None, -1)
    with pytest.raises(ValueError, match="amount"):
        _core.l1_unstructured_mask(w, np.array([[1, 0, 0], [0, 0, 1]], np.uint8), 3)
    with pytest.raises(ValueError, match="0 .pruned. and 1"):
        _core.l1_unstructured_mask(w, np.full((2, 3), 2, np.uint8), 1)
    with pytest.raises(ValueError, match="shape"):
        _core.l1_unstructured_mask(w, np.ones((3, 2), np.uint8), 1)
    with pytest.raises(ValueError, match="NaN"):
        _core.l1_unstructured_mask(np.array([np.nan, 1], np.float32), None, 1)
    with pytest.raises(ValueError, match="max_non_zero"):
        _core.fan_in_mask(w, None, 0)
    with pytest.raises(ValueError, match="2 dimensions"):
        _core.fan_in_mask(w[0], None, 1)


# ---------------------------------------------------------------- torch.nn.utils.prune
def torch_masks(w, steps):
    """Masks torch.nn.utils.prune.l1_unstructured leaves after each amount in steps."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune as torch_prune

    linear = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
    masks = []
    for amount in steps:
        torch_prune.l1_unstructured(linear, "weight", amount=amount)
        masks.append(linear.weight_mask.detach().numpy().astype(np.uint8))
    return masks


def test_l1_kernel_matches_torch_repeated_pruning():
    rng = np.random.default_rng(4)
    w = rng.uniform(-1, 1, (40, 25)).astype(np.float32)   # no ties
    steps = [300, 0.25, 0.5, 1, 0.0, 17]
    want = torch_masks(w, steps)
    mask = None
    for amount, expected in zip(steps, want):
        kept = w.size if mask is None else int(mask.sum())
        count = amount if isinstance(amount, int) else round(amount * kept)
        mask = _core.l1_unstructured_mask(w, mask, count)
        np.testing.assert_array_equal(mask, expected)


# ---------------------------------------------------------------- layers of a network
def tutorial_net(n=100, seed=0):
    """The tutorial's QAT net (REFERENCE.md section 2), QuantLinear weights U(-1, 1)."""
    from qatfhe import nn

    w3 = dict(weight_quant=nn.CommonWeightQuant, weight_bit_width=3, bias_quant=None)
    net = nn.Sequential(nn.QuantIdentity(nn.CommonActQuant, bit_width=3),
                        nn.QuantLinear(2, n, bias=True, **w3), nn.QuantReLU(bit_width=3),
                        nn.QuantLinear(n, n, bias=True, **w3), nn.QuantReLU(bit_width=3),
                        nn.QuantLinear(n, 2, bias=True, **w3), seed=seed)
    for i in (1, 3, 5):
        nn.init.uniform_(net[i].weight, -1.0, 1.0)
    return net


def float_net(seed=0):
    from qatfhe import nn

    return nn.Sequential(nn.Linear(2, 30), nn.ReLU(), nn.Linear(30, 25), nn.ReLU(),
                         nn.Linear(25, 2), seed=seed)


@pytest.fixture(scope="module")
def data():
    from qatfhe import datasets

    X_train, _, y_train, _ = datasets.checkerboard(seed=0)
    return X_train[:600], y_train[:600]


def adamw_fit(net, data, epochs):
    from qatfhe import optim

    if net.optimizer is None:
        optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    net.fit(*data, epochs=epochs, batch_size=1, seed=1, progress=False)


@pytest.mark.parametrize("make_net, index", [(tutorial_net, 3), (float_net, 2)])
def test_l1_unstructured_masks_the_reference_entries(make_net, index):
    net = make_net()
    layer = net[index]
    w0 = layer.weight.copy()
    assert prune.l1_unstructured(layer, "weight", 123) is layer
    want = reference_l1(w0, None, 123)
    np.testing.assert_array_equal(layer.weight_mask, want)
    assert np.count_nonzero(layer.weight == 0) == 123
    np.testing.assert_array_equal(layer.weight, np.where(want == 1, w0, np.float32(0)))
    # again, as a fraction of the entries still kept: prunes among those, masks combine
    prune.l1_unstructured(layer, "weight", 0.5)
    combined = reference_l1(w0, want, round(0.5 * (w0.size - 123)))
    np.testing.assert_array_equal(layer.weight_mask, combined)
    assert np.count_nonzero(layer.weight == 0) == w0.size - int(combined.sum())


def test_l1_unstructured_matches_torch_on_a_layer():
    net = float_net(seed=3)
    layer = net[2]                                  # Linear(30, 25): 750 weights
    w0 = layer.weight.copy()
    steps = [75, 0.5, 0.3, 7, 1.0]                  # 0.5 * 675 and 0.3 * 337 round half-even
    want = torch_masks(w0, steps)
    for amount, expected in zip(steps, want):
        prune.l1_unstructured(layer, "weight", amount)
        np.testing.assert_array_equal(layer.weight_mask, expected)
    assert np.all(layer.weight == 0)


def test_bias_can_be_pruned():
    net = float_net()
    b0 = net[2].bias.copy()
    prune.l1_unstructured(net[2], "bias", 10)
    keep = reference_l1(b0, None, 10)
    np.testing.assert_array_equal(net[2].bias, np.where(keep == 1, b0, np.float32(0)))
    assert prune.is_pruned(net[2]) and net[2].weight_mask is None
    prune.remove(net[2], "bias")
    assert not prune.is_pruned(net)


@pytest.mark.parametrize("max_non_zero", [20, 30, 1, 100, 150])
def test_prune_net_follows_the_tutorial_rule(max_non_zero):
    net = tutorial_net()
    before = {i: net[i].weight.copy() for i in (1, 3, 5)}
    pruned = prune.prune_net(net, max_non_zero)
    # REFERENCE.md section 4, per QuantLinear (in, out): zeros = (in - max_non_zero) * out
    shapes = {1: (2, 100), 3: (100, 100), 5: (100, 2)}
    expected = {f"{i}.weight": (fan_in - max_non_zero) * out
                for i, (fan_in, out) in shapes.items() if fan_in - max_non_zero > 0}
    assert pruned == expected
    report = prune.sparsity(net)
    for i, (fan_in, out) in shapes.items():
        zeros = expected.get(f"{i}.weight", 0)
        if zeros:
            np.testing.assert_array_equal(net[i].weight_mask, reference_l1(before[i], None, zeros))
        else:
            assert net[i].weight_mask is None
            np.testing.assert_array_equal(net[i].weight, before[i])
        assert report[i].zeros == report[i].masked == zeros
        assert report[i].total == fan_in * out
        per_row = np.count_nonzero(net[i].weight, axis=1)
        assert report[i].max_non_zero == per_row.max()
    assert prune.is_pruned(net) == bool(expected)


def test_tutorial_masks_at_max_non_zero_20():
    """REFERENCE.md section 4: fc2 loses 8000 of 10000, fc3 160 of 200, fc1 never pruned."""
    net = tutorial_net()
    prune.prune_net(net, 20)
    report = prune.sparsity(net)
    assert (report[1].masked, report[3].masked, report[5].masked) == (0, 8000, 160)
    assert (report[3].total, report[5].total) == (10000, 200)


def test_masked_weights_stay_exactly_zero_through_adamw_training(data):
    net = tutorial_net()
    prune.prune_net(net, 20)
    masks = {i: net[i].weight_mask for i in (3, 5)}
    before = {i: net[i].weight.copy() for i in (1, 3, 5)}
    adamw_fit(net, data, epochs=2)
    assert net.optimizer.state_step == 2 * len(data[0])
    for i, mask in masks.items():
        np.testing.assert_array_equal(net[i].weight_mask, mask)
        w = net[i].weight
        assert np.all(w[mask == 0] == 0), f"layer {i}: a masked weight moved"
        assert np.any(w[mask == 1] != before[i][mask == 1]), f"layer {i} did not train"
        assert prune.sparsity(net)[i].zeros >= int((mask == 0).sum())
    assert np.any(net[1].weight != before[1])


def test_remove_keeps_values_and_frees_the_weights(data):
    net = float_net()
    prune.l1_unstructured(net[2], "weight", 600)
    adamw_fit(net, data, epochs=1)
    mask = net[2].weight_mask
    w = net[2].weight.copy()
    assert prune.remove(net[2], "weight") is net[2]
    assert net[2].weight_mask is None and not prune.is_pruned(net[2])
    np.testing.assert_array_equal(net[2].weight, w)
    assert np.count_nonzero(net[2].weight == 0) >= 600
    adamw_fit(net, data, epochs=1)
    assert np.any(net[2].weight[mask == 0] != 0), "removed mask still holds weights at 0"


def test_unprune_net_removes_every_mask():
    net = tutorial_net()
    prune.prune_net(net, 20)
    w = {i: net[i].weight.copy() for i in (1, 3, 5)}
    assert sorted(prune.unprune_net(net)) == ["3.weight", "5.weight"]
    assert not prune.is_pruned(net)
    for i in (1, 3, 5):
        assert net[i].weight_mask is None
        np.testing.assert_array_equal(net[i].weight, w[i])
    assert prune.unprune_net(net) == []


@pytest.mark.parametrize("make_net, index", [(tutorial_net, 3), (float_net, 2), (float_net, 4)])
def test_fan_in_bound_holds_for_every_row(make_net, index):
    net = make_net()
    layer = net[index]
    w0 = layer.weight.copy()
    for max_non_zero in (12, 5, 1):                 # each call prunes among the kept ones
        mask = layer.weight_mask
        assert prune.fan_in(layer, max_non_zero) is layer
        np.testing.assert_array_equal(layer.weight_mask, reference_fan_in(w0, mask, max_non_zero))
        per_row = np.count_nonzero(layer.weight, axis=1)
        assert np.all(per_row <= max_non_zero)
        assert prune.sparsity(net)[index].max_non_zero == min(max_non_zero, w0.shape[1])


def test_fan_in_after_l1_combines_masks():
    net = tutorial_net()
    prune.prune_net(net, 20)
    mask = net[3].weight_mask
    w = net[3].weight.copy()
    prune.fan_in(net[3], 20)
    np.testing.assert_array_equal(net[3].weight_mask, reference_fan_in(w, mask, 20))
    assert np.all(net[3].weight_mask <= mask)
    assert prune.sparsity(net)[3].max_non_zero <= 20


def test_save_and_load_keep_masks(data, tmp_path):
    import qatfhe

    net = tutorial_net()
    prune.prune_net(net, 20)
    prune.fan_in(net[1], 1)
    adamw_fit(net, data, epochs=1)
    path = tmp_path / "pruned.npz"
    net.save(path)
    loaded = qatfhe.load(path)
    for i in (1, 3, 5):
        np.testing.assert_array_equal(loaded[i].weight_mask, net[i].weight_mask)
        np.testing.assert_array_equal(loaded[i].weight, net[i].weight)
    assert prune.sparsity(loaded) == prune.sparsity(net)
    adamw_fit(loaded, data, epochs=1)
    for i in (1, 3, 5):
        mask = loaded[i].weight_mask
        assert np.all(loaded[i].weight[mask == 0] == 0)


# ---------------------------------------------------------------- bad input
def test_prune_net_refuses_before_changing_anything():
    net = tutorial_net()
    prune.l1_unstructured(net[5], "weight", 100)        # leaves 100 < 160 to prune
    with pytest.raises(ValueError, match="keeps 100 weights"):
        prune.prune_net(net, 20)
    assert net[3].weight_mask is None                   # layer 3 comes first, untouched
    assert prune.sparsity(net)[5].masked == 100


def test_bad_amounts():
    net = float_net()
    layer = net[2]                                  # 750 weights
    for amount in (-1, 751, 1.5, -0.1, float("nan"), np.int64(-3)):
        with pytest.raises(ValueError, match="amount"):
            prune.l1_unstructured(layer, "weight", amount)
    for amount in ("10", None, True, [3]):
        with pytest.raises(TypeError, match="amount"):
            prune.l1_unstructured(layer, "weight", amount)
    prune.l1_unstructured(layer, "weight", 700)
    with pytest.raises(ValueError, match="50 entries"):
        prune.l1_unstructured(layer, "weight", 51)
    assert int(layer.weight_mask.sum()) == 50       # a refused call changes nothing


def test_bad_names_layers_and_limits():
    from qatfhe import nn

    net = float_net()
    with pytest.raises(ValueError, match="'weights'"):
        prune.l1_unstructured(net[0], "weights", 1)
    with pytest.raises(TypeError, match="name"):
        prune.l1_unstructured(net[0], 0, 1)
    no_bias = nn.Sequential(nn.Linear(2, 3, bias=False), seed=0)
    with pytest.raises(ValueError, match="'bias'"):
        prune.l1_unstructured(no_bias[0], "bias", 1)
    for layer in (net[1], nn.QuantIdentity(), nn.ReLU()):
        with pytest.raises(TypeError, match="no weights"):
            prune.l1_unstructured(layer, "weight", 1)
        with pytest.raises(TypeError, match="no weights"):
            prune.fan_in(layer, 1)
    with pytest.raises(ValueError, match="Sequential"):
        prune.l1_unstructured(nn.Linear(2, 3), "weight", 1)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="max_non_zero"):
            prune.fan_in(net[0], bad)
        with pytest.raises(ValueError, match="max_non_zero"):
            prune.prune_net(net, bad)
    for bad in (2.0, "3", None, True):
        with pytest.raises(TypeError, match="max_non_zero"):
            prune.fan_in(net[0], bad)
        with pytest.raises(TypeError, match="max_non_zero"):
            prune.prune_net(net, bad)
    with pytest.raises(ValueError, match="not pruned"):
        prune.remove(net[0], "weight")
    with pytest.raises(TypeError, match="Sequential"):
        prune.sparsity(net[0])
    with pytest.raises(TypeError, match="Sequential"):
        prune.prune_net(net[0], 3)
    assert not prune.is_pruned(net) and not prune.is_pruned(net[1])
