"""export_onnx: the file passes onnx.checker, has the form Concrete-ML imports for QAT models,
and its graph, evaluated by tests/onnx_reference.py (NumPy, written from the ONNX and
Brevitas Quant definitions) and by onnx's own reference evaluator, reproduces the network's
eval-mode fake-quant predictions.  Where concrete-ml is importable, it compiles the file.
Skipped without onnx."""
import os
import sys

import numpy as np
import pytest

import qatfhe
from qatfhe import datasets, experiments, nn

onnx = pytest.importorskip("onnx")
import onnx_reference  # noqa: E402  (tests/ is on sys.path under pytest)

# operators Concrete-ML's ONNX import implements, among those this exporter may write
CONCRETE_ML_OPS = {"onnx.brevitas.Quant", "Gemm", "Conv", "AveragePool", "Relu", "Flatten",
                   "Reshape", "Transpose", "Add", "Identity"}


def tutorial_qat_net(seed=0, n_hidden=100, epochs=1):
    """The tutorial's pruned QAT network (REFERENCE.md section 2), trained on the
    checkerboard."""
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=seed)
    net = experiments.qat_net(n_hidden, seed, bit_width=3)
    net.prune(20)
    net.fit(X_train, y_train, epochs=epochs, progress=False)
    return net.eval(), X_test, y_test


@pytest.fixture(scope="module")
def checkerboard_export(tmp_path_factory):
    net, X_test, y_test = tutorial_qat_net()
    path = tmp_path_factory.mktemp("onnx") / "tutorial.onnx"
    model = qatfhe.export_onnx(net, path)
    return net, X_test, y_test, path, model


def cnn_net(per_channel=False):
    """A converted CNN (input quantizer, conv, QuantReLU, pool + requantizer, conv, flatten,
    linear) fine-tuned briefly on random images."""
    float_net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                              nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                              nn.Flatten(), nn.Linear(6 * 2 * 2, 3), seed=4)
    net, _ = qatfhe.convert(float_net, bit_width=4, per_channel=per_channel)
    X = np.random.default_rng(6).uniform(-1, 1, (96, 2, 8, 8)).astype(np.float32)
    net.fit(X, np.arange(96) % 3, epochs=4, progress=False)
    return net.eval(), X


class _OnnxQuant:
    """The Brevitas Quant operator for onnx.reference.ReferenceEvaluator."""

    @staticmethod
    def make():
        from onnx.reference.op_run import OpRun

        class Quant(OpRun):
            op_domain = "onnx.brevitas"

            def _run(self, x, scale, zero_point, bit_width, signed=None, narrow=None,
                     rounding_mode=None):
                return (onnx_reference.quant(x, scale, zero_point, bit_width, signed, narrow,
                                             rounding_mode),)
        return Quant


def onnx_reference_run(model, X):
    from onnx.reference import ReferenceEvaluator
    evaluator = ReferenceEvaluator(model, new_ops=[_OnnxQuant.make()])
    return evaluator.run(None, {model.graph.input[0].name: X})[0]


# ------------------------------------------------------------------ the file

def test_file_passes_onnx_checker(checkerboard_export):
    _, _, _, path, model = checkerboard_export
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.SerializeToString() == model.SerializeToString()


def test_form_concrete_ml_imports(checkerboard_export):
    net, _, _, path, _ = checkerboard_export
    model = onnx.load(str(path))
    assert model.opset_import[0].domain == "" and model.opset_import[0].version == 14
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 14), ("onnx.brevitas", 1)}
    assert model.ir_version <= 8
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    ops = [(n.domain + "." if n.domain else "") + n.op_type for n in model.graph.node]
    assert set(ops) <= CONCRETE_ML_OPS
    assert ops == ["onnx.brevitas.Quant",
                   "onnx.brevitas.Quant", "Gemm", "Relu", "onnx.brevitas.Quant",
                   "onnx.brevitas.Quant", "Gemm", "Relu", "onnx.brevitas.Quant",
                   "onnx.brevitas.Quant", "Gemm"]
    for node in model.graph.node:
        if node.op_type != "Quant":
            continue
        attrs = {a.name: a for a in node.attribute}
        assert set(attrs) == {"signed", "narrow", "rounding_mode"}
        assert attrs["signed"].type == onnx.AttributeProto.INT
        assert attrs["narrow"].type == onnx.AttributeProto.INT
        assert attrs["rounding_mode"].type == onnx.AttributeProto.STRING
        assert attrs["rounding_mode"].s == b"ROUND"
        assert len(node.input) == 4
        scale, zero_point, bit_width = (init[name] for name in node.input[1:])
        assert scale.dtype == zero_point.dtype == bit_width.dtype == np.float32
        assert zero_point == 0 and bit_width == 3 and np.all(scale > 0)
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    for gemm, layer in zip(gemms, [net[1], net[3], net[5]]):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
        assert attrs["transB"] == 1 and attrs.get("transA", 0) == 0
        np.testing.assert_array_equal(init[gemm.input[2]], layer.bias)    # float bias
        # the weight comes through a Quant node from an already fake-quantized initializer
        producer = next(n for n in model.graph.node if n.output[0] == gemm.input[1])
        assert producer.op_type == "Quant"
        weight, scale = init[producer.input[0]], init[producer.input[1]]
        assert scale == np.float32(1 / 3)                 # CommonWeightQuant at 3 bits
        codes = weight / scale
        np.testing.assert_allclose(codes, np.rint(codes), atol=1e-5)
        assert np.abs(np.rint(codes)).max() <= 3
        # the fake-quantized weights are the network's, pruned zeros included
        np.testing.assert_allclose(weight, np.clip(np.rint(layer.weight * 3), -3, 3) / 3,
                                   atol=1e-7)
        assert np.count_nonzero(weight == 0) >= np.count_nonzero(layer.weight_mask == 0)
    # the activation quantizers: signed narrow constant input, unsigned learned ReLU outputs
    quants = [n for n in model.graph.node if n.op_type == "Quant"]
    signed = [{a.name: onnx.helper.get_attribute_value(a) for a in q.attribute}["signed"]
              for q in quants]
    assert signed == [1, 1, 0, 1, 0, 1]
    relu_scale = init[quants[2].input[1]]
    assert relu_scale == np.float32(net[2].scale())


def test_numpy_evaluator_reproduces_fake_quant_predictions(checkerboard_export):
    net, X_test, y_test, path, _ = checkerboard_export
    model = onnx.load(str(path))
    logits = onnx_reference.run(model, X_test)
    expected = np.asarray(net(X_test))
    np.testing.assert_array_equal(logits.argmax(axis=1), net.predict(X_test))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # a network that has learned something (not a constant prediction)
    assert net.score(X_test, y_test) >= 0.7


def test_numpy_evaluator_agrees_with_onnx_reference_evaluator(checkerboard_export):
    """Cross-check of tests/onnx_reference.py's standard operators against onnx's own."""
    _, X_test, _, _, model = checkerboard_export
    np.testing.assert_allclose(onnx_reference.run(model, X_test),
                               onnx_reference_run(model, X_test), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_channel", [False, True])
def test_cnn_export(tmp_path, per_channel):
    net, X = cnn_net(per_channel)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = qatfhe.export_onnx(net, tmp_path / "cnn.onnx")
    said = [str(w.message) for w in caught if "Concrete-ML 1.9 cannot import" in str(w.message)]
    # per-channel scales: a warning naming the layers Concrete-ML cannot import
    assert len(said) == int(per_channel)
    assert not per_channel or "layer 1 (QuantConv2d)" in said[0]
    onnx.checker.check_model(onnx.load(str(tmp_path / "cnn.onnx")), full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Quant", "Quant", "Conv", "Relu", "Quant", "AveragePool", "Quant", "Quant",
                   "Conv", "Relu", "Quant", "Flatten", "Quant", "Gemm"]
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs == {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                     "dilations": [1, 1], "group": 1}
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    assert attrs["count_include_pad"] == 1 and attrs["kernel_shape"] == [2, 2]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    scale = init["1.weight_quant.scale"]
    assert scale.shape == ((4, 1, 1, 1) if per_channel else ())
    logits = onnx_reference.run(model, X)
    np.testing.assert_allclose(logits, net(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits.argmax(axis=1), net.predict(X))
    np.testing.assert_allclose(onnx_reference_run(model, X), logits, rtol=1e-5, atol=1e-5)


def test_residual_reshape_transpose_export(tmp_path):
    net = nn.Sequential(
        nn.QuantIdentity(bit_width=4), nn.QuantLinear(6, 12, weight_bit_width=4),
        nn.QuantIdentity(bit_width=4), nn.Reshape(3, 4), nn.Transpose(1, 2),
        nn.Residual(nn.Flatten(), nn.QuantLinear(12, 12, weight_bit_width=4), nn.QuantReLU(),
                    nn.Reshape(4, 3), quant=nn.QuantIdentity(bit_width=5)),
        nn.Flatten(), nn.QuantLinear(12, 2), seed=3, input_shape=(6,))
    X = np.random.default_rng(5).normal(size=(128, 6)).astype(np.float32)
    net.fit(X, np.arange(128) % 2, epochs=3, progress=False)
    net.eval()
    model = qatfhe.export_onnx(net, tmp_path / "res.onnx")
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Add") == 1 and "Transpose" in ops and "Reshape" in ops
    logits = onnx_reference.run(model, X)
    np.testing.assert_allclose(logits, net(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(onnx_reference_run(model, X), logits, rtol=1e-5, atol=1e-5)


def test_converted_torch_model_exports(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(2, 20), torch.nn.ReLU(),
                                 torch.nn.Linear(20, 2))
    X_train, X_test, y_train, _ = datasets.checkerboard(seed=1, n=40)
    net, _ = qatfhe.convert(module)
    net.fit(X_train, y_train, epochs=2, progress=False)
    model = qatfhe.export_onnx(net.eval(), str(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(onnx_reference.run(model, X_test).argmax(1),
                                  net.predict(X_test))


def test_concrete_ml_compiles_the_export(checkerboard_export):
    """compile_onnx_model on the file, QAT import, simulated integer circuit."""
    cml = pytest.importorskip("concrete.ml.torch.compile")
    net, X_test, _, path, _ = checkerboard_export
    X_train = datasets.checkerboard(seed=0)[0]
    n_bits = {"model_inputs": 8, "op_weights": 8, "op_inputs": 8, "model_outputs": 8}
    module = cml.compile_onnx_model(onnx.load(str(path)), X_train[:500], import_qat=True,
                                    n_bits=n_bits)
    simulated = module.forward(X_test, fhe="simulate")
    agree = np.mean(np.argmax(simulated, axis=1) == net.predict(X_test))
    assert agree >= 0.99


# ------------------------------------------------------------------ bad input

def test_refuses_networks_that_are_not_quantization_aware(tmp_path):
    path = tmp_path / "x.onnx"
    cases = [
        (nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)), r"layer 0 \(Linear\) has "
                                                                     r"float weights.*convert"),
        (nn.Sequential(nn.QuantIdentity(), nn.QuantLinear(2, 3), nn.ReLU(),
                       nn.QuantLinear(3, 2)), r"layer 2 \(ReLU\) is a float ReLU"),
        (nn.Sequential(nn.QuantLinear(2, 3)), r"layer 0 \(QuantLinear\) receives a tensor that "
                                              r"no quantizer produced"),
        (nn.Sequential(nn.QuantIdentity(), nn.QuantLinear(2, 3), nn.QuantLinear(3, 2)),
         r"layer 2 \(QuantLinear\) receives"),
        (nn.Sequential(nn.QuantIdentity(), nn.QuantConv2d(1, 2, 3), nn.Flatten(),
                       nn.QuantLinear(2, 2), input_shape=(1, 3, 3)),
         r"layer 2 \(Flatten\) receives"),
        (nn.Sequential(nn.QuantIdentity(), nn.QuantLinear(2, 3),
                       nn.QuantReLU(narrow_range=True)), r"unsigned narrow-range"),
    ]
    for net, message in cases:
        with pytest.raises(ValueError, match=message):
            qatfhe.export_onnx(net, path)
        assert not path.exists()
    net = nn.Sequential(nn.QuantIdentity(), nn.QuantLinear(2, 3))
    net[1].weight[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        qatfhe.export_onnx(net, path)
    with pytest.raises(ValueError, match=r"input height and width are not known"):
        qatfhe.export_onnx(nn.Sequential(nn.QuantIdentity(), nn.QuantConv2d(1, 2, 3)), path)
    assert os.listdir(tmp_path) == []


def test_bad_paths_and_arguments(tmp_path, checkerboard_export):
    net = checkerboard_export[0]
    with pytest.raises(ValueError, match="does not exist"):
        qatfhe.export_onnx(net, tmp_path / "missing" / "m.onnx")
    with pytest.raises(ValueError, match="is a directory"):
        qatfhe.export_onnx(net, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="does not exist"):
        qatfhe.export_onnx(net, tmp_path / "file" / "m.onnx")
    with pytest.raises(ValueError, match="empty"):
        qatfhe.export_onnx(net, "")
    with pytest.raises(TypeError, match="path"):
        qatfhe.export_onnx(net, 3)
    with pytest.raises(TypeError, match="net"):
        qatfhe.export_onnx("net", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="input_shape"):
        qatfhe.export_onnx(net, tmp_path / "m.onnx", input_shape=(2, 3))
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write to read-only directories")
def test_read_only_directory(tmp_path, checkerboard_export):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            qatfhe.export_onnx(checkerboard_export[0], directory / "m.onnx")
    finally:
        directory.chmod(0o700)


def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch, checkerboard_export):
    net = checkerboard_export[0]
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous contents")

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        qatfhe.export_onnx(net, path)
    assert path.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]
    monkeypatch.undo()
    qatfhe.export_onnx(net, path)
    onnx.checker.check_model(onnx.load(str(path)))


def test_missing_onnx_gives_a_clear_import_error(monkeypatch, tmp_path, checkerboard_export):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"qatfhe.export_onnx needs onnx: pip install onnx"):
        qatfhe.export_onnx(checkerboard_export[0], tmp_path / "m.onnx")
