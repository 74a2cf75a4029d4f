"""qatfhe.search: the front against a brute-force dominance check, modules that reproduce
their recorded accuracy, resuming, and the same results on one process, two processes and
a Dask cluster."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qatfhe import QuantizedModule, datasets, search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = search.Family(widths=(3,), depths=(1,), act_bits=(2, 3),
                     rounding_threshold_bits=(None, 3), epochs=1, restarts=1)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    lines = []
    front = search.search(TINY, SEEDS, out=str(out), log=lines.append)
    return out, front, lines


def test_front_points_have_every_field_and_load(first):
    out, front, _ = first
    points = json.loads((out / "frontier.json").read_text())
    assert len(points) == len(front) >= 1
    for p in points:
        assert set(p) >= {"accuracy", "accuracies", "max_bit_width", "worst_case_bit_width",
                          "n_lookups", "cost", "config", "module"}
        assert p["accuracy"] == pytest.approx(np.mean(p["accuracies"]))
        assert p["n_lookups"] == 3 and p["worst_case_bit_width"] >= p["max_bit_width"]
        module = QuantizedModule.load(out / p["module"])
        seed = p["module_seed"]
        _, X_test, _, y_test = datasets.checkerboard(seed=seed)
        accuracy = np.mean(module.predict(X_test, fhe="simulate") == y_test)
        assert accuracy == pytest.approx(p["accuracies"][SEEDS.index(seed)])
        assert accuracy == max(p["accuracies"])
        assert module.fhe_cost() <= p["cost"] and module.max_bit_width <= p["max_bit_width"]
        assert module.rounding_threshold_bits == p["config"]["rounding_threshold_bits"]
    assert (out / "frontier.md").read_text().startswith("| candidate |")


def brute_front(rows):
    """Rows no other row dominates, written from the definition."""
    keep = []
    for i, r in enumerate(rows):
        beaten = False
        for j, q in enumerate(rows):
            no_worse = (q["accuracy"] >= r["accuracy"] and q["cost"] <= r["cost"]
                        and q["max_bit_width"] <= r["max_bit_width"])
            better = (q["accuracy"] > r["accuracy"] or q["cost"] < r["cost"]
                      or q["max_bit_width"] < r["max_bit_width"])
            same = not better
            if no_worse and (better or (same and j < i)):
                beaten = True
        if not beaten:
            keep.append(i)
    return keep


def test_pareto_front_matches_the_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = [{"index": i, "accuracy": float(rng.choice([0.5, 0.8, 0.9, 0.95])),
                 "cost": float(rng.choice([1.0, 2.0, 5.0, 9.0])),
                 "max_bit_width": int(rng.integers(3, 6))} for i in range(12)]
        front = search.pareto_front(rows)
        assert sorted(r["index"] for r in front) == brute_front(rows)
        assert [r["cost"] for r in front] == sorted(r["cost"] for r in front)


def test_resume_runs_only_what_is_missing(first, tmp_path):
    out, front, lines = first
    assert "4 trainings to run" in lines[0]
    again = []
    assert search.search(TINY, SEEDS, out=str(out), log=again.append) == front
    assert "0 trainings to run" in again[0]
    # an interrupted search: drop the last training's evaluations, resume, same front
    state = json.loads((out / "search.json").read_text())
    state["evaluations"] = state["evaluations"][:-2]
    (out / "search.json").write_text(json.dumps(state))
    resumed = []
    assert search.search(TINY, SEEDS, out=str(out), log=resumed.append) == front
    assert "1 trainings to run" in resumed[0]


def strip(front):
    return [{k: v for k, v in p.items() if k != "module"} for p in front]


def test_local_processes_and_dask_give_the_same_front(first):
    _, front, _ = first
    assert strip(search.search(TINY, SEEDS, jobs=2)) == strip(front)
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            on_dask = search.search(TINY, SEEDS, executor=client.get_executor())
    assert strip(on_dask) == strip(front)


def test_bad_families_and_seeds():
    with pytest.raises(ValueError, match="widths"):
        search.Family(widths=(0,))
    with pytest.raises(ValueError, match="weight_bits"):
        search.Family(weight_bits=(1,))
    with pytest.raises(ValueError, match="init"):
        search.Family(init="zeros")
    with pytest.raises(ValueError, match="seeds"):
        search.search(TINY, seeds=[0, 0])
    with pytest.raises(TypeError, match="Family"):
        search.search({"widths": (3,)})
    from qatfhe import nn
    import inspect
    if "accumulator_bit_width" not in inspect.signature(nn.QuantLinear.__init__).parameters:
        with pytest.raises(ValueError, match="accumulator_bit_width"):
            search.Family(accumulator_bits=(5,))


def test_command_writes_the_front(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "qatfhe", "search", "--out", str(out),
                           "--widths", "3", "--depths", "1", "--act-bits", "2",
                           "--rounding-bits", "none", "--seeds", "2", "--epochs", "1",
                           "--restarts", "1",
                           "--jobs", "1", "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| candidate |" in done.stdout
    points = json.loads((out / "frontier.json").read_text())
    assert len(points) == 1 and (out / points[0]["module"]).exists()
    bad = subprocess.run([sys.executable, "-m", "qatfhe", "search", "--out", str(out),
                          "--widths", "x"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2


def test_restarts_keep_the_network_best_on_the_training_set(tmp_path):
    from qatfhe import compile_qat_model, experiments
    family = search.Family(widths=(3,), depths=(1,), act_bits=(2,),
                           rounding_threshold_bits=(None,), epochs=1, restarts=2)
    training = family.trainings()[0]
    result = search.evaluate(training, 5)[0]
    path = tmp_path / "m.npz"
    path.write_bytes(result["module_bytes"])
    chosen = QuantizedModule.load(path)
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=5)
    scores, tests = [], []
    for r in range(2):
        net = search.initial_net(training, X_train, 2, 5 + r * search.RESTART_STRIDE)
        experiments.train(net, X_train, y_train, family.settings())
        module = compile_qat_model(net, X_train)
        scores.append(np.mean(module.predict(X_train, fhe="simulate") == y_train))
        tests.append(np.mean(module.predict(X_test, fhe="simulate") == y_test))
    best = int(np.argmax(scores))
    assert np.mean(chosen.predict(X_train, fhe="simulate") == y_train) == max(scores)
    assert result["accuracy"] == pytest.approx(tests[best])


def test_accumulator_budgets_reach_the_layers(tmp_path):
    from qatfhe import nn
    import inspect
    if "accumulator_bit_width" not in inspect.signature(nn.QuantLinear.__init__).parameters:
        pytest.skip("this qatfhe has no accumulator-aware layers")
    family = search.Family(widths=(4,), depths=(1,), act_bits=(2,), accumulator_bits=(5,),
                           rounding_threshold_bits=(None,), epochs=1, restarts=1)
    result = search.evaluate(family.trainings()[0], 0)[0]
    path = tmp_path / "m.npz"
    path.write_bytes(result["module_bytes"])
    report = QuantizedModule.load(path).bit_width_report()
    accumulators = [r for r in report if r["kind"] == "accumulator"]
    assert len(accumulators) == 2
    assert all(r["static_bits"] <= 5 for r in accumulators)   # 6 and 7 bits without A2Q


def test_ladder_init_is_a_staircase_on_the_quantized_input_grid():
    """Every first-layer neuron on the first neuron's direction, quantized like the weights
    (CommonWeightQuant: threshold 1, narrow), the biases minus the midpoints between the
    distinct projections of the input codes (CommonActQuant, 3 bits: scale 1/3)."""
    from qatfhe import nn
    X_train = datasets.checkerboard(seed=3)[0]
    for width in (4, 16):
        config = search.Family(widths=(width,), depths=(1,), init="ladder").trainings()[0]
        uniform = search.build_net({**config, "init": "uniform"}, 2, 2, 11)
        net = search.initial_net(config, X_train, 2, 11)
        drawn = np.array(uniform[1].weight, np.float64)[0]
        w = np.array(net[1].weight, np.float64)
        codes = np.clip(np.round(drawn / np.abs(drawn).max()), -1, 1)   # 2-bit narrow codes
        assert np.array_equal(w, np.tile(codes, (width, 1)))            # one row, repeated
        inputs = np.clip(np.round(np.asarray(X_train, np.float64) * 3), -3, 3) / 3
        values = sorted(set(np.round(inputs @ codes, 6)))
        mids = [(a + b) / 2 for a, b in zip(values[:-1], values[1:])]
        if len(mids) > width:
            expected = [mids[int(round(i * (len(mids) - 1) / (width - 1)))]
                        for i in range(width)]
        else:
            expected = [mids[i % len(mids)] for i in range(width)]
        assert np.allclose(np.array(net[1].bias), -np.sort(expected), atol=1e-6)
        assert isinstance(net[2], nn.QuantReLU)


def test_act_max_sets_a_constant_relu_threshold():
    from qatfhe import nn
    config = search.Family(widths=(3,), depths=(2,), act_bits=(3,), act_max=(0.5,),
                           init="uniform").trainings()[0]
    net = search.build_net(config, 2, 2, 0)
    relus = [layer for layer in net if isinstance(layer, nn.QuantReLU)]
    assert len(relus) == 2
    for relu in relus:
        spec = relu.act_quant
        assert spec.kind == "const" and spec.scaling_const == 0.5 and not spec.signed
        assert (spec.qmin, spec.qmax) == (0, 7)
    learned = search.build_net({**config, "act_max": None}, 2, 2, 0)
    assert [l for l in learned if isinstance(l, nn.QuantReLU)][0].act_quant.kind == "learned"
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="act_max"):
            search.Family(act_max=(bad,))


def test_command_passes_act_max_and_init(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    out = tmp_path / "out"
    common = [sys.executable, "-m", "qatfhe", "search", "--out", str(out), "--widths", "3",
              "--depths", "1", "--rounding-bits", "none", "--seeds", "1", "--epochs", "1",
              "--restarts", "1", "--jobs", "1", "--no-progress"]
    done = subprocess.run(common + ["--act-max", "0.5,none", "--init", "uniform",
                                    "--weight-decay", "0.01"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    state = json.loads((out / "search.json").read_text())
    assert len(state["evaluations"]) == 2               # one per threshold
    points = json.loads((out / "frontier.json").read_text())
    assert {p["config"]["act_max"] for p in points} <= {0.5, None}
    assert all(p["config"]["init"] == "uniform" and p["config"]["weight_decay"] == 0.01
               for p in points)
    bad = subprocess.run(common + ["--act-max", "x"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "act-max" in bad.stderr
    bad = subprocess.run(common + ["--act-max", "-1"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "act_max" in bad.stderr
