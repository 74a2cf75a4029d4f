"""The tutorial's experiments (qatfhe.experiments), reduced to 2 runs of 1 epoch.

The recorded numbers are checked against networks rebuilt here from the documented
seeding (run i: checkerboard(seed=i), nn.Sequential(seed=i), shuffling from the net's
stream), evaluated by a NumPy integer forward written from REFERENCE.md sections 2, 5, 6."""
import math

import numpy as np
import pytest

from qatfhe import datasets, experiments, nn, optim
from qatfhe.compile import compile_model

RUNS, EPOCHS = 2, 1


@pytest.fixture(scope="module")
def results():
    # two worker processes; the rebuilt networks below are computed here, in one
    return experiments.run_all(runs=RUNS, epochs=EPOCHS, jobs=2, boundaries=True)


# ------------------------------------------------------------------ independent references

def bits_for_range(lo, hi):
    """REFERENCE.md section 6."""
    if lo >= 0:
        return max(1, math.ceil(math.log2(hi + 1)))
    return max(math.ceil(math.log2(-lo)) + 1, math.ceil(math.log2(max(hi, 0) + 1)) + 1)


def quantize(x, scale, qmin, qmax):
    """q = clamp(round_half_even(x / s)), in float32 as the engine does."""
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale))
    return np.clip(q, qmin, qmax).astype(np.int64)


def integer_forward(net, X):
    """(logits float32, widest integer in bits) of the tutorial's QAT net, from its float
    weights: QuantIdentity codes, per QuantLinear acc = q_x q_w^T (q_w = clamp(rint(3 w))),
    y = float32(acc) * (s_x s_w) + b, QuantReLU codes."""
    codes = quantize(X, net[0].scale(), -3, 3)
    s_x, bits = np.float32(net[0].scale()), bits_for_range(codes.min(), codes.max())
    for linear, act in ((1, 2), (3, 4), (5, None)):
        s_w = np.float32(1.0 / 3.0)
        q_w = quantize(net[linear].weight, s_w, -3, 3)
        acc = codes @ q_w.T
        bits = max(bits, bits_for_range(acc.min(), acc.max()))
        y = acc.astype(np.float32) * (s_x * s_w) + net[linear].bias
        if act is None:
            return y, bits
        s_x = np.float32(net[act].scale())
        codes = quantize(np.maximum(y, 0), s_x, 0, 7)
        bits = max(bits, bits_for_range(codes.min(), codes.max()))


def tutorial_qat_net(seed):
    w3 = dict(bias=True, weight_quant=nn.CommonWeightQuant, weight_bit_width=3)
    net = nn.Sequential(nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
                        nn.QuantLinear(2, 100, **w3), nn.QuantReLU(bit_width=3),
                        nn.QuantLinear(100, 100, **w3), nn.QuantReLU(bit_width=3),
                        nn.QuantLinear(100, 2, **w3), seed=seed)
    for i in (1, 3, 5):
        nn.init.uniform_(net[i].weight, -1.0, 1.0)
    return net


def tutorial_masks(net, max_non_zero):
    """{layer: mask} of the tutorial's prune(): the (in - k) * out smallest |w| of the
    whole tensor are masked (ties: lower flat index first)."""
    masks = {}
    for i, layer in enumerate(net):
        if isinstance(layer, (nn.Linear, nn.QuantLinear)):
            zeros = (layer.in_features - max_non_zero) * layer.out_features
            if zeros > 0:
                w = np.abs(np.asarray(layer.weight)).ravel()
                order = np.lexsort((np.arange(w.size), w))
                mask = np.ones(w.size, np.uint8)
                mask[order[:zeros]] = 0
                masks[i] = mask.reshape(layer.weight.shape)
    return masks


def row(result, config, seed):
    return next(r for r in result.runs if r["config"] == config and r["seed"] == seed)


# ------------------------------------------------------------------ experiment 3: QAT

def test_qat_integer_equals_fake_quant_on_every_run(results):
    qat = results["qat_pruned"]
    assert [r["seed"] for r in qat.runs] == list(range(RUNS))
    for r in qat.runs:
        assert r["agree"] and r["disagreements"] == 0
        assert r["integer_accuracy"] == r["fake_quant_accuracy"]
        assert 0.0 < r["fake_quant_accuracy"] <= 1.0


def test_qat_run_matches_a_net_rebuilt_from_the_documented_seeds(results):
    seed = 0
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=seed)
    net = tutorial_qat_net(seed)
    masks = tutorial_masks(net, 20)
    assert sorted(masks) == [3, 5]
    net.prune(20)
    optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    net.fit(X_train, y_train, epochs=EPOCHS, batch_size=1, progress=False)
    for i, mask in masks.items():               # the mask chosen at init, kept in training
        assert np.array_equal(net[i].weight_mask, mask)
        assert np.all(net[i].weight[mask == 0] == 0)
    net.eval()
    logits, _ = integer_forward(net, X_test)
    assert np.array_equal(logits.argmax(axis=1), net.predict(X_test))
    _, bits = integer_forward(net, X_train)     # calibration set = training set
    r = row(results["qat_pruned"], "20", seed)
    assert r["fake_quant_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y_test))
    assert r["accumulator_bits"] == bits
    assert r["ceiling"] == pytest.approx(
        np.mean(datasets.checkerboard_labels(X_test) == y_test))
    # run 0 also recorded the circuit's decision regions
    grid_logits, _ = integer_forward(net, experiments.BOUNDARY_GRID)
    recorded = results["qat_pruned"].boundaries["3-bit QAT (integer circuit)"]
    assert np.array_equal(recorded.ravel(), grid_logits.argmax(axis=1))


# ------------------------------------------------------------------ experiments 1 and 2: PTQ

def test_ptq_rows_have_accuracies_and_bits(results):
    for name, configs in (("ptq_by_width", ["10", "30", "100"]), ("ptq_pruned", ["10", "30"])):
        result = results[name]
        assert result.configs == configs
        assert len(result.runs) == RUNS * len(configs)
        for r in result.runs:
            for key in ("fp32_accuracy", "ptq_accuracy", "train_accuracy"):
                assert 0.0 < r[key] <= 1.0 and np.isfinite(r[key])
            assert isinstance(r["accumulator_bits"], int) and 2 <= r["accumulator_bits"] <= 16


def test_ptq_run_matches_a_net_rebuilt_from_the_documented_seeds(results):
    seed = 1
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=seed)
    net = nn.Sequential(nn.Linear(2, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(),
                        nn.Linear(30, 2), seed=seed)
    optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    net.fit(X_train, y_train, epochs=EPOCHS, batch_size=1, progress=False)
    module = compile_model(net, X_train, n_bits=3)
    r = row(results["ptq_by_width"], "30", seed)
    assert r["fp32_accuracy"] == pytest.approx(np.mean(net.predict(X_test) == y_test))
    # the clear NumPy twin (fhe="disable") is a second path to the same integers
    assert r["ptq_accuracy"] == pytest.approx(
        np.mean(module.predict(X_test, fhe="disable") == y_test))
    widths = [bits_for_range(x["min"], x["max"]) for x in module.bit_width_report()]
    assert r["accumulator_bits"] == max(widths)


def test_pruned_float_net_follows_the_tutorial_rule():
    net = experiments.simple_net(100, seed=3)
    masks = tutorial_masks(net, 10)
    assert sorted(masks) == [2, 4]
    experiments.prune_like_tutorial(net, 10)
    assert net[0].weight_mask is None
    for i, mask in masks.items():
        assert np.array_equal(net[i].weight_mask, mask)
    assert int((net[2].weight_mask == 0).sum()) == 9000
    assert int((net[4].weight_mask == 0).sum()) == 180


def test_pruned_ptq_run_matches_a_net_masked_here(results):
    seed = 0
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=seed)
    net = nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                        nn.Linear(100, 2), seed=seed)
    masks = tutorial_masks(net, 10)
    for i, mask in masks.items():
        net._core.set_mask(f"{i}.weight", mask)
    optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    net.fit(X_train, y_train, epochs=EPOCHS, batch_size=1, progress=False)
    assert np.all(net[2].weight[masks[2] == 0] == 0)
    assert np.count_nonzero(net[2].weight) <= 1000
    module = compile_model(net, X_train, n_bits=3)
    r = row(results["ptq_pruned"], "10", seed)
    assert r["fp32_accuracy"] == pytest.approx(np.mean(net.predict(X_test) == y_test))
    assert r["ptq_accuracy"] == pytest.approx(
        np.mean(module.predict(X_test, fhe="disable") == y_test))
    assert r["accumulator_bits"] == module.max_bit_width


# ------------------------------------------------------------------ means, jobs, settings

def test_means_are_means_of_the_runs(results):
    for result in results.values():
        for config, means in result.means.items():
            for metric, mean in means.items():
                values = [float(v) for v in result.values(config, metric)]
                assert len(values) == RUNS
                assert mean == pytest.approx(sum(values) / RUNS)


def test_runs_do_not_depend_on_jobs(results):
    alone = experiments.qat_pruned(runs=RUNS, epochs=EPOCHS, jobs=1)
    assert alone.runs == results["qat_pruned"].runs
    alone = experiments.ptq_by_width(runs=RUNS, widths=(10,), epochs=EPOCHS, jobs=1)
    assert alone.runs == [r for r in results["ptq_by_width"].runs if r["config"] == "10"]


def test_single_experiment_functions_match_run_all(results):
    alone = experiments.ptq_pruned(runs=RUNS, max_non_zero=(30,), epochs=EPOCHS)
    assert alone.runs == [r for r in results["ptq_pruned"].runs if r["config"] == "30"]
    assert alone.settings == results["ptq_pruned"].settings


def test_boundaries_of_run_zero(results):
    res = experiments.BOUNDARY_RESOLUTION
    grids = {**results["ptq_by_width"].boundaries, **results["qat_pruned"].boundaries}
    assert {"fp32 SimpleNet(100)", "3-bit PTQ SimpleNet(100)",
            "3-bit QAT (integer circuit)"} <= set(grids)
    for grid in grids.values():
        assert grid.shape == (res, res) and set(np.unique(grid)) <= {0, 1}
    assert "boundaries" not in results["qat_pruned"].to_dict()


def test_defaults_are_the_tutorials():
    s = experiments.TrainSettings()
    assert (s.epochs, s.lr, s.weight_decay, s.batch_size, s.lr_schedule) == (
        7, 1e-3, 0.01, 1, "constant")
    assert [s.lr_at(e) for e in range(7)] == [1e-3] * 7


def test_cosine_schedule_is_torchs_cosine_annealing():
    torch = pytest.importorskip("torch")
    s = experiments.TrainSettings(epochs=5, lr=2e-3, lr_schedule="cosine")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.0)
    for epoch in range(5):
        assert s.lr_at(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


@pytest.mark.parametrize("kwargs, error", [
    ({"runs": 0}, ValueError), ({"jobs": 0}, ValueError), ({"runs": 1.5}, TypeError),
    ({"epochs": 0}, ValueError), ({"lr": -1.0}, ValueError),
    ({"lr_schedule": "linear"}, ValueError), ({"batch_size": True}, TypeError),
    ({"settings": {"epochs": 1}}, TypeError)])
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises(error):
        experiments.qat_pruned(**kwargs)


def test_markdown_tables_and_json(results, tmp_path):
    text = experiments.markdown_tables(results)
    for reference in ("68.70%", "83.32%", "88.06%", "56.44%", "82.50%", "57.82%", "95.40%"):
        assert reference in text
    m = results["ptq_by_width"].means["100"]
    assert f"{100 * m['fp32_accuracy']:.2f}%" in text
    import json
    path = experiments.write_atomic(tmp_path / "r.json", experiments.results_json(results))
    data = json.loads(open(path).read())
    assert data["experiments"]["qat_pruned"]["runs"] == results["qat_pruned"].runs
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]   # no temporary file left
