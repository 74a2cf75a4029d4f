"""Encrypted execution through Concrete (qatfhe.fhe, qatfhe.fhe_lowering) on tiny circuits
(2-4 bit lookups, keys in seconds).

The reference for every encrypted run is fhe="simulate", the C integer circuit that
tests/test_compile*.py check against NumPy references written from REFERENCE.md: execute
must equal it bit for bit.  Concrete's own measured bounds are checked against qatfhe's
calibrated ranges; client and server run in two processes that share only bytes."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import qatfhe
from qatfhe import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = np.float32


@pytest.fixture(scope="module")
def concrete():
    pytest.importorskip("concrete.fhe")
    from qatfhe.fhe_lowering import concrete
    return concrete()


def fit(net, X, n_classes, seed=0):
    rng = np.random.RandomState(seed)
    net.fit(X, rng.randint(0, n_classes, len(X)), epochs=1, batch_size=8, seed=0,
            progress=False)
    net.eval()
    return net


def dense_net(seed=0, hidden=3):
    return nn.Sequential(nn.QuantIdentity(bit_width=2),
                         nn.QuantLinear(2, hidden, weight_bit_width=2),
                         nn.QuantReLU(bit_width=2),
                         nn.QuantLinear(hidden, 2, weight_bit_width=2), seed=seed)


def every_op_net():
    """conv (zero padding, per-channel scales), QuantReLU, padded pool + QuantIdentity (two
    lookups in a row), residual (requantising quantizer, conv, ReLU, add), transpose,
    flatten, dense."""
    return nn.Sequential(
        nn.QuantIdentity(bit_width=2),
        nn.QuantConv2d(1, 2, 2, padding=1, weight_bit_width=2,
                       weight_scaling_per_output_channel=True),
        nn.QuantReLU(bit_width=2),
        nn.AvgPool2d(2, stride=2, padding=1),
        nn.QuantIdentity(bit_width=2),
        nn.Residual(nn.QuantConv2d(2, 2, 1, weight_bit_width=2), nn.ReLU(),
                    quant=nn.QuantIdentity(bit_width=2)),
        nn.QuantReLU(bit_width=2), nn.Transpose(2, 3), nn.Flatten(),
        nn.QuantLinear(8, 2, weight_bit_width=2, weight_scaling_per_output_channel=True),
        seed=3)


def maxpool_net():
    """Max pooling with padding (padded taps skipped) after a BatchNorm2d folded into the
    lookup before it."""
    return nn.Sequential(nn.QuantIdentity(bit_width=2),
                         nn.QuantConv2d(1, 1, 1, weight_bit_width=2),
                         nn.BatchNorm2d(1), nn.QuantReLU(bit_width=2),
                         nn.MaxPool2d(2, stride=1, padding=1), nn.Flatten(),
                         nn.QuantLinear(9, 2, weight_bit_width=2), seed=7)


def ptq_net():
    """Post-training quantization: zero points != 0, so the padding holds the code Z
    (pool on the input codes, conv after a requantisation), and rounding before lookups."""
    return nn.Sequential(nn.AvgPool2d(2, stride=1, padding=1),
                         nn.Conv2d(1, 1, 2, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4, 2), seed=4)


@pytest.fixture(scope="module")
def dense(concrete):
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, size=(200, 2)).astype(F32)
    module = qatfhe.compile_qat_model(fit(dense_net(), X, 2), X)
    module.compile_fhe()
    return module, X


def check_bounds(module):
    """Concrete's measured bounds of every table lookup's input equal qatfhe's calibrated
    range of that node (times 2^lsbs after a round: Concrete keeps the zeroed low bits)."""
    graph = module._fhe.circuit.graph
    report = module.bit_width_report()
    checked = 0
    for node in graph.query_nodes():
        if not (node.converted_to_table_lookup and node.tag.startswith("op")):
            continue
        op = module.ops[int(node.tag[2:])]
        if op.kind != "lookup":
            continue
        (pred,) = [p for p in graph.ordered_preds_of(node) if p.output.is_encrypted]
        row = report[op.src]
        assert tuple(int(b) for b in pred.bounds) == (row["min"] << op.lsbs,
                                                      row["max"] << op.lsbs), op
        checked += 1
    assert checked >= 1


def assert_execute_equals_simulate(module, X):
    got = module.forward(X, fhe="execute", progress=False)
    want = module.forward(X, fhe="simulate")
    assert got.dtype == want.dtype == F32
    np.testing.assert_array_equal(got, want)


# one parameter set instead of one per partition: keys of ~0.2 GB in seconds, not ~1.5 GB
MONO = {"parameter_selection_strategy": "mono"}


# ------------------------------------------------------------------ execute == simulate

def test_dense_execute_equals_simulate_and_statistics(dense):
    module, X = dense
    rng = np.random.RandomState(1)
    Xt = rng.uniform(-0.2, 1.2, size=(3, 2)).astype(F32)
    assert_execute_equals_simulate(module, Xt)
    q_x = module.quantize_input(Xt[:1])
    np.testing.assert_array_equal(module.quantized_forward(q_x, fhe="execute"),
                                  module.quantized_forward(q_x))
    assert module.fhe_keygen() == 0.0                        # cached after the first run
    stats = module.fhe_statistics()
    report = module.bit_width_report()
    acc_bits = report[1]["bits"]                             # the first QuantLinear's
    assert stats["pbs_count"] == 3                           # one PBS per hidden neuron
    assert stats["pbs_count_per_bit_width"] == {acc_bits: 3}
    assert stats["max_bit_width"] == module.max_bit_width
    assert stats["complexity"] > 0 and stats["size_of_bootstrap_keys"] > 0
    assert 0 < stats["p_error"] <= stats["global_p_error"] <= 1e-5
    assert [(r["kind"], r["pbs_bits"]) for r in report] == [
        ("input", None), ("accumulator", None), ("lookup_output", acc_bits),
        ("accumulator", None)]
    check_bounds(module)


def test_every_op_kind_execute_equals_simulate(concrete):
    rng = np.random.RandomState(2)
    X = rng.uniform(-0.5, 1.5, size=(200, 1, 2, 2)).astype(F32)
    net = fit(every_op_net(), X, 2)
    module = qatfhe.compile_qat_model(net, X)
    kinds = {op.kind for op in module.ops}
    assert kinds >= {"conv", "lookup", "pool_sum", "add", "transpose", "reshape", "dense"}
    assert module.ops[1].offset is not None and module.ops[0].weight_scale.ndim == 1
    module.compile_fhe(**MONO)
    check_bounds(module)
    Xt = rng.uniform(-0.5, 1.5, size=(2, 1, 2, 2)).astype(F32)
    assert_execute_equals_simulate(module, Xt)
    np.testing.assert_array_equal(module.forward(Xt, fhe="simulate"), net(Xt))
    stats = module.fhe_statistics()
    lookups = [r for r in stats["lookups"] if r["kind"] == "lookup"]
    assert sum(r["pbs"] for r in stats["lookups"]) == stats["pbs_count"]
    assert all(r["pbs_bits"] is not None for r in lookups)


def test_ptq_zero_points_padding_and_rounding(concrete):
    rng = np.random.RandomState(3)
    X = rng.uniform(-0.7, 1.0, size=(200, 1, 2, 2)).astype(F32)
    net = ptq_net()
    module = qatfhe.compile_model(net, X, n_bits=3, rounding_threshold_bits=3)
    pads = [op.pad_code for op in module.ops if op.kind in ("conv", "pool_sum")]
    assert all(pads), pads                                  # padding with Z != 0 twice
    assert any(op.kind == "round" for op in module.ops)
    module.compile_fhe(global_p_error=1e-6, **MONO)
    check_bounds(module)
    assert module.fhe_statistics()["global_p_error"] <= 1e-6
    Xt = rng.uniform(-0.7, 1.0, size=(2, 1, 2, 2)).astype(F32)
    assert_execute_equals_simulate(module, Xt)


def test_maxpool_execute_equals_simulate(concrete):
    rng = np.random.RandomState(8)
    X = rng.uniform(-0.5, 1.5, size=(200, 1, 2, 2)).astype(F32)
    net = fit(maxpool_net(), X, 2)
    module = qatfhe.compile_qat_model(net, X)
    pool = [r for r in module.bit_width_report() if r["kind"] == "maxpool"]
    assert [r["pairwise_max_lookups"] for r in pool] == [7]   # taps 1,2,1 x 1,2,1
    module.compile_fhe(**MONO)
    stats = module.fhe_statistics()
    k = next(k for k, op in enumerate(module.ops) if op.kind == "maxpool")
    # one lookup per pair at most (Concrete merges pairs shared between windows)
    assert 1 <= next(r["pbs"] for r in stats["lookups"] if r["op"] == k) <= 7
    Xt = rng.uniform(-0.5, 1.5, size=(2, 1, 2, 2)).astype(F32)
    assert_execute_equals_simulate(module, Xt)


def test_ranges_outside_the_compiled_ones_are_refused(concrete):
    rng = np.random.RandomState(4)
    X = rng.uniform(0, 1, size=(200, 2)).astype(F32)
    module = qatfhe.compile_qat_model(fit(dense_net(seed=5), X, 2), X)
    module.compile_fhe(X=np.zeros((3, 2), F32))              # ranges of one input only
    with pytest.raises(ValueError, match=r"outside the \d+-bit range.*compile_fhe\(X\)"):
        module.forward(X, fhe="execute")


def test_compile_fhe_arguments(dense, tmp_path):
    module, X = dense
    with pytest.raises(ValueError, match="not both"):
        module.compile_fhe(p_error=1e-3, global_p_error=1e-3)
    for bad in (0.0, 1.5, "x", True):
        with pytest.raises(ValueError, match="p_error must be"):
            module.compile_fhe(p_error=bad)
    module.save(tmp_path / "module.npz")
    loaded = qatfhe.QuantizedModule.load(tmp_path / "module.npz")
    with pytest.raises(ValueError, match="needs X"):
        loaded.compile_fhe()
    with pytest.raises(ValueError, match="compile_fhe"):
        loaded.forward(X[:1], fhe="execute")
    for method in (loaded.fhe_statistics, loaded.fhe_keygen):
        with pytest.raises(ValueError, match="compile_fhe"):
            method()


def test_without_concrete_every_entry_point_says_how_to_install(monkeypatch, tmp_path):
    rng = np.random.RandomState(5)
    X = rng.uniform(0, 1, size=(50, 2)).astype(F32)
    module = qatfhe.compile_qat_model(dense_net(seed=6), X)
    monkeypatch.setitem(sys.modules, "concrete", None)      # import concrete fails
    from qatfhe import fhe
    install = r'pip install "qatfhe\[fhe\]"'
    for call in (module.compile_fhe, module.fhe_keygen, module.fhe_statistics,
                 lambda: module.forward(X, fhe="execute"),
                 lambda: module.save_fhe(tmp_path / "d"),
                 lambda: fhe.Client(tmp_path), lambda: fhe.Server(tmp_path)):
        with pytest.raises(ImportError, match=install):
            call()


# ------------------------------------------------------------------ deployment

CLIENT = textwrap.dedent("""
    import sys, numpy as np
    from qatfhe import fhe
    directory, work = sys.argv[1], sys.argv[2]
    client = fhe.Client(directory)
    client.keygen()
    X = np.load(work + "/X.npy")
    open(work + "/keys.bin", "wb").write(client.evaluation_keys())
    for i, ct in enumerate(client.encrypt(X)):
        open(f"{work}/ct{i}.bin", "wb").write(ct)
    print("encrypted", flush=True)
    sys.stdin.readline()                                    # the server has run
    results = [open(f"{work}/out{i}.bin", "rb").read() for i in range(len(X))]
    np.save(work + "/decrypted.npy", client.decrypt(results))
    print("decrypted", flush=True)
    """)

SERVER = textwrap.dedent("""
    import sys
    from qatfhe import fhe
    directory, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server = fhe.Server(directory)
    keys = open(work + "/keys.bin", "rb").read()
    for i in range(n):
        ct = open(f"{work}/ct{i}.bin", "rb").read()
        open(f"{work}/out{i}.bin", "wb").write(server.run(ct, keys))
    server.close()
    print("ran", n, flush=True)
    """)


def python(script, *args, **kwargs):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-W", "ignore", "-c", script, *map(str, args)],
                            env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


@pytest.fixture(scope="module")
def deployed(dense, tmp_path_factory):
    module, X = dense
    directory = tmp_path_factory.mktemp("fhe") / "model"
    circuit_id = module.save_fhe(directory)
    return module, X, directory, circuit_id


@pytest.fixture(scope="module")
def remote(deployed, tmp_path_factory):
    """A client process and a server process exchanging files of bytes only; returns the
    exchange directory (keys.bin, ct<i>.bin, out<i>.bin, decrypted.npy) and the samples."""
    _, _, directory, _ = deployed
    work = tmp_path_factory.mktemp("exchange")
    Xt = np.random.RandomState(6).uniform(0, 1, size=(2, 2)).astype(F32)
    np.save(work / "X.npy", Xt)
    client = python(CLIENT, directory, work, stdin=subprocess.PIPE)
    assert client.stdout.readline().strip() == "encrypted", client.stderr.read()
    server = python(SERVER, directory, work, len(Xt))
    out, err = server.communicate(timeout=600)
    assert server.returncode == 0 and out.strip() == "ran 2", err
    out, err = client.communicate("go\n", timeout=600)
    assert client.returncode == 0 and out.strip() == "decrypted", err
    return work, Xt


def test_client_and_server_in_two_processes_pass_only_bytes(deployed, remote):
    module, X, directory, circuit_id = deployed
    assert sorted(os.listdir(directory)) == ["client.specs.json", "qatfhe.json", "server.zip"]
    spec = json.loads((directory / "qatfhe.json").read_text())    # plain JSON
    assert spec["circuit_id"] == circuit_id and spec["input_quant"]["qmax"] == 1
    work, Xt = remote
    np.testing.assert_array_equal(np.load(work / "decrypted.npy"),
                                  module.forward(Xt, fhe="simulate"))


def test_deployment_refuses_foreign_or_broken_bytes(deployed, remote, tmp_path, concrete):
    from qatfhe import fhe
    module, X, directory, circuit_id = deployed
    work, _ = remote
    server, client = fhe.Server(directory), fhe.Client(directory)
    keys = client.evaluation_keys()                           # keygen on first use
    (ct,) = client.encrypt(X[:1])
    np.testing.assert_array_equal(client.decrypt(server.run(ct, keys)),
                                  module.forward(X[:1], fhe="simulate"))

    # another circuit: its ciphertexts and keys are refused by id (Concrete itself raises
    # on a ciphertext of another shape but crashes the process on keys of other parameters)
    rng = np.random.RandomState(7)
    other = qatfhe.compile_qat_model(dense_net(seed=8, hidden=4), X)
    other.compile_fhe(**MONO)
    other.save_fhe(tmp_path / "other")
    stranger = fhe.Client(tmp_path / "other")
    (other_ct,) = stranger.encrypt(X[:1])
    with pytest.raises(ValueError, match="another FHE circuit"):
        server.run(other_ct, keys)
    with pytest.raises(ValueError, match="another FHE circuit"):
        server.run(ct, stranger.evaluation_keys())

    # keys of another client of the same circuit (the client process's): refused, where
    # Concrete would run and return garbage
    remote_keys, remote_ct = (work / "keys.bin").read_bytes(), (work / "ct0.bin").read_bytes()
    with pytest.raises(ValueError, match="other keys"):
        server.run(ct, remote_keys)
    with pytest.raises(ValueError, match="other keys"):
        server.run(remote_ct, keys)
    with pytest.raises(ValueError, match="other keys"):
        client.decrypt((work / "out0.bin").read_bytes())

    # keys saved by one client object and loaded by another decrypt its results
    result = server.run(ct, keys)
    client.save_keys(tmp_path / "keys")
    again = fhe.Client(directory)
    again.load_keys(tmp_path / "keys")
    np.testing.assert_array_equal(again.decrypt(result), client.decrypt(result))
    with pytest.raises(ValueError, match="another FHE circuit"):
        stranger.load_keys(tmp_path / "keys")
    with pytest.raises(ValueError, match="no valid qatfhe key set"):
        again.load_keys(tmp_path)

    # wrong shapes, kinds, garbage, truncated payloads
    with pytest.raises(ValueError, match="features|shape"):
        client.encrypt(rng.uniform(size=(2, 3)).astype(F32))
    with pytest.raises(ValueError, match="NaN|finite"):
        client.encrypt(np.array([[np.nan, 0.5]], F32))
    header_end = ct.index(b"}") + 1
    head = json.loads(ct[len(fhe.MAGIC) + 4:header_end])
    forged = fhe._pack("ciphertext", dict(head, shape=[3, 1, 1]), ct[header_end:])
    with pytest.raises(ValueError, match="shape"):
        server.run(forged, keys)
    for bad in (b"", b"garbage", ct[:10], keys[:20]):
        with pytest.raises(ValueError, match="not qatfhe FHE bytes|corrupt header|hold"):
            server.run(bad, keys)
    with pytest.raises(ValueError, match="hold 'evaluation_keys', expected 'ciphertext'"):
        server.run(keys, keys)
    with pytest.raises(TypeError, match="bytes"):
        server.run("text", keys)
    truncated = fhe._pack("ciphertext", head, ct[header_end:header_end + 100])
    with pytest.raises(ValueError, match="Concrete refused"):
        server.run(truncated, keys)
    broken_keys = keys[:len(keys) // 2]
    with pytest.raises(ValueError, match="Concrete refused"):
        server.run(ct, broken_keys)
    with pytest.raises(ValueError, match="result"):
        client.decrypt(ct)
    server.close()


def test_bad_artifacts_are_refused(deployed, tmp_path, concrete):
    from qatfhe import fhe
    import shutil
    _, _, directory, _ = deployed
    with pytest.raises(ValueError, match="cannot read"):
        fhe.Server(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    data = bytearray((broken / "server.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "server.zip").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="server.zip.*does not match"):
        fhe.Server(broken)
    (broken / "client.specs.json").write_text("{}")
    with pytest.raises(ValueError, match="client.specs.json.*does not match"):
        fhe.Client(broken)
    for text in ("not json", "[]", json.dumps({"format": "other", "version": 1})):
        (broken / "qatfhe.json").write_text(text)
        for side in (fhe.Client, fhe.Server):
            with pytest.raises(ValueError, match="not a valid qatfhe FHE client file"):
                side(broken)


# ------------------------------------------------------------------ the command

def test_fhe_command_runs_a_saved_net_and_refuses_bad_usage(concrete, tmp_path, capsys):
    """`python -m qatfhe fhe --model FILE` on a tiny saved net (the default, the tutorial's
    8-bit net, needs minutes of key generation: bench/bench_fhe.py)."""
    from qatfhe import __main__ as cli
    from qatfhe import datasets
    X = datasets.checkerboard(seed=0)[0][:300]
    fit(dense_net(seed=9), X, 2).save(tmp_path / "net.npz")
    assert cli.main(["fhe", "--samples", "1", "--model", str(tmp_path / "net.npz")]) == 0
    out = capsys.readouterr().out
    assert "PBS per sample     3 (3 at " in out and "keygen" in out
    assert "agreement with simulate: 1/1 samples bit for bit, 1/1 predictions" in out
    assert "RECORDED" not in out and "recorded in REFERENCE.md" in out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fhe", "--samples", "-1"])
    assert exit_info.value.code == 2
