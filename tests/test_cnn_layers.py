"""BatchNorm2d, MaxPool2d and strided / padded windows against PyTorch, their compilation
(BatchNorm2d folded into the lookup after it, MaxPool2d as integer maxima of codes), and
their persistence.

PyTorch is the reference for the float layers (forward, gradients, running statistics,
whole training runs); the integer circuit is compared bit for bit with the engine's eval
forward, and the folded BatchNorm2d with the float32 rule written out here in NumPy
(csrc/batchnorm.h).  A layer's input gradient is seen through a probe convolution in front
of it: the probe's weight and bias gradients are sums of that input gradient."""
import numpy as np
import pytest

import qatfhe
from qatfhe import nn, optim
from qatfhe.compile import BitWidthError, QuantizedModule, compile_model, compile_qat_model

torch = pytest.importorskip("torch")
F32 = np.float32


def copy_to_torch(net, tnet):
    """Copy every parameter and buffer of net into the torch layers of the same positions."""
    with torch.no_grad():
        for name, entry in net._tensors.items():
            index, attr = name.split(".", 1)
            target = getattr(tnet[int(index)], attr)
            target.copy_(torch.from_numpy(entry["data"].copy()).reshape(target.shape)
                         .to(target.dtype))


def grads_of(net):
    return {name: t["grad"].copy() for name, t in net._tensors.items() if t["kind"] == "param"}


def torch_grads(tnet):
    return {f"{i}.{n}": p.grad.numpy() for i, layer in enumerate(tnet)
            for n, p in layer.named_parameters(recurse=False)}


# ------------------------------------------------------------------ BatchNorm2d


@pytest.mark.parametrize("affine,momentum,shape", [(True, 0.1, (6, 4, 5, 5)),
                                                    (False, None, (5, 3, 4, 3)),
                                                    (True, 0.3, (9, 2, 1, 1))])
def test_batchnorm_train_eval_and_gradients_match_torch(affine, momentum, shape):
    rng = np.random.default_rng(1)
    n, c, h, w = shape
    X = (rng.normal(size=shape) * 3 + 2).astype(F32)
    net = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c, momentum=momentum, affine=affine),
                        nn.Flatten(), nn.Linear(c * h * w, 3), seed=2)
    tnet = torch.nn.Sequential(torch.nn.Conv2d(c, c, 1),
                               torch.nn.BatchNorm2d(c, momentum=momentum, affine=affine),
                               torch.nn.Flatten(), torch.nn.Linear(c * h * w, 3))
    if affine:
        net[1].weight = rng.uniform(0.5, 2, c)
        net[1].bias = rng.uniform(-1, 1, c)
    copy_to_torch(net, tnet)
    for step in range(3):              # running statistics after several batches
        Xs = X + F32(step)
        G = rng.normal(size=(n, 3)).astype(F32)
        net.train()
        net.zero_grad()
        out = net(Xs)
        net.backward(G)
        tnet.zero_grad()
        t_out = tnet(torch.from_numpy(Xs))
        t_out.backward(torch.from_numpy(G))
        np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-5, atol=1e-5)
        mine, theirs = grads_of(net), torch_grads(tnet)
        assert set(mine) == set(theirs)
        for name in mine:              # 0.*: the probe, whose gradients sum BN's input grad
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-4, atol=1e-4,
                                       err_msg=name)
    bn = tnet[1]
    np.testing.assert_allclose(net[1].running_mean, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net[1].running_var, bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert net[1].num_batches_tracked[0] == bn.num_batches_tracked.item() == 3
    net.eval()
    tnet.eval()
    np.testing.assert_allclose(net(X), tnet(torch.from_numpy(X)).detach().numpy(), rtol=1e-5,
                               atol=1e-5)


def test_batchnorm_without_running_stats_uses_the_batch_in_eval():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4, 2, 3, 3)).astype(F32)
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False), seed=0)
    tnet = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1),
                               torch.nn.BatchNorm2d(2, track_running_stats=False))
    copy_to_torch(net, tnet)
    assert net[1].running_mean is None and "1.running_var" not in net.state_dict()
    net.eval()
    tnet.eval()
    np.testing.assert_allclose(net(X), tnet(torch.from_numpy(X)).detach().numpy(), atol=1e-5)


def test_batchnorm_eval_is_the_documented_float32_rule():
    """Eval on float input: y = float32((x - mean) k) + beta with k = gamma / sqrt(var + eps),
    each operation rounded to float32 (csrc/batchnorm.h), bit for bit."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3, 3, 4, 4)).astype(F32)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, eps=1e-3), seed=0)
    bn = net[1]
    bn.weight, bn.bias = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    bn.running_mean, bn.running_var = rng.normal(size=3), rng.uniform(0.1, 3, 3)
    net.train()
    conv_out = np.asarray(nn.Sequential(nn.Conv2d(3, 3, 1), seed=0).eval()(X))
    net.eval()
    k = bn.weight / np.sqrt(bn.running_var + F32(1e-3))
    c = (1, -1, 1, 1)
    want = (conv_out - bn.running_mean.reshape(c)) * k.reshape(c) + bn.bias.reshape(c)
    assert want.dtype == F32
    np.testing.assert_array_equal(net(X), want)


def test_batchnorm_refuses_a_single_value_per_channel():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm2d(4), nn.Linear(4, 2), seed=0)
    X = np.ones((1, 3), F32)
    with pytest.raises(ValueError, match=r"BatchNorm2d.*more than one value per channel"):
        net.train()(X)
    optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="more than one value per channel"):
        net.fit(np.ones((5, 3), F32), np.zeros(5, np.int64), batch_size=2, progress=False)
    net.eval()(X)                      # eval uses the running statistics: fine
    no_running = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm2d(4, track_running_stats=False),
                               seed=0).eval()
    with pytest.raises(ValueError, match="more than one value per channel"):
        no_running(X)                  # eval with batch statistics, as torch
    no_running(np.ones((2, 3), F32))


@pytest.mark.parametrize("kwargs,match", [
    ({"num_features": 0}, "num_features"), ({"num_features": 2, "eps": 0}, "eps"),
    ({"num_features": 2, "momentum": 1.5}, "momentum"),
    ({"num_features": 2, "affine": 1}, "affine")])
def test_batchnorm_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nn.BatchNorm2d(**kwargs)


def test_batchnorm_channel_mismatch_names_the_layer():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5), seed=0)
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm2d\).*5 channels"):
        net(np.zeros((2, 3, 5, 5), F32))


# ------------------------------------------------------------------ MaxPool2d and windows


@pytest.mark.parametrize("kernel,stride,padding", [
    (2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 1)), (2, 1, 1), (3, 3, 0)])
def test_maxpool_forward_backward_with_ties_and_padding_match_torch(kernel, stride, padding):
    rng = np.random.default_rng(5)
    # few distinct values: many ties, which go to the first maximum in window order
    X = rng.integers(-2, 3, size=(3, 2, 7, 6)).astype(F32)
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.MaxPool2d(kernel, stride, padding), nn.Flatten(),
                        seed=0)
    tnet = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1),
                               torch.nn.MaxPool2d(kernel, stride, padding), torch.nn.Flatten())
    net[0].weight = np.eye(2, dtype=F32).reshape(2, 2, 1, 1)   # the probe passes X through
    net[0].bias = np.zeros(2, F32)
    copy_to_torch(net, tnet)
    net.train()
    out = net(X)
    G = rng.normal(size=out.shape).astype(F32)
    net.zero_grad()
    net.backward(G)
    t_out = tnet(torch.from_numpy(X))
    t_out.backward(torch.from_numpy(G))
    np.testing.assert_array_equal(out, t_out.detach().numpy())
    for name, grad in grads_of(net).items():
        np.testing.assert_allclose(grad, torch_grads(tnet)[name], rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_maxpool_refuses_padding_over_half_the_kernel():
    with pytest.raises(ValueError, match="half the kernel"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(NotImplementedError, match="ceil_mode"):
        nn.MaxPool2d(2, ceil_mode=True)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((2, 1), (0, 1)), (3, 2)])
def test_strides_and_padding_of_conv_and_pools_match_torch(stride, padding):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(2, 3, 11, 10)).astype(F32)
    pool_pad = tuple(min(p, 1) for p in (padding if isinstance(padding, tuple) else (padding,) * 2))
    layers = [(nn.Conv2d(3, 4, 3, stride=stride, padding=padding),
               torch.nn.Conv2d(3, 4, 3, stride=stride, padding=padding)),
              (nn.AvgPool2d(3, stride=stride, padding=pool_pad),
               torch.nn.AvgPool2d(3, stride=stride, padding=pool_pad)),
              (nn.MaxPool2d(2, stride=stride, padding=pool_pad),
               torch.nn.MaxPool2d(2, stride=stride, padding=pool_pad))]
    ours, theirs = zip(*layers)
    net, tnet = nn.Sequential(*ours, seed=1), torch.nn.Sequential(*theirs)
    copy_to_torch(net, tnet)
    net.train()
    out = net(X)
    G = rng.normal(size=out.shape).astype(F32)
    net.zero_grad()
    net.backward(G)
    t_out = tnet(torch.from_numpy(X))
    assert np.size(out) == t_out.numel()           # (n, C) when the output is 1 x 1
    t_out.backward(torch.from_numpy(G).reshape(t_out.shape))
    np.testing.assert_allclose(np.reshape(out, t_out.shape), t_out.detach().numpy(), rtol=1e-5,
                               atol=1e-5)
    for name, grad in grads_of(net).items():
        np.testing.assert_allclose(grad, torch_grads(tnet)[name], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ training runs


def small_cnn(quant=False, seed=0):
    """Conv -> BN -> ReLU -> MaxPool twice, then Linear.  A bias before a BatchNorm2d has a
    zero gradient (rounding noise, which Adam amplifies): the float net has none; the QAT
    one keeps the second conv's bias, so that folding it is tested."""
    q = dict(weight_bit_width=4) if quant else {}
    conv = nn.QuantConv2d if quant else nn.Conv2d
    relu = (lambda: nn.QuantReLU(bit_width=4)) if quant else nn.ReLU
    head = [nn.QuantIdentity(bit_width=4)] if quant else []
    linear = nn.QuantLinear(8, 3, **q) if quant else nn.Linear(8, 3)
    return nn.Sequential(*head, conv(3, 6, 3, padding=1, bias=False, **q), nn.BatchNorm2d(6),
                         relu(), nn.MaxPool2d(2),
                         conv(6, 8, 3, stride=2, padding=1, bias=quant, **q), nn.BatchNorm2d(8),
                         relu(),
                         nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(), linear, seed=seed)


def test_small_cnn_trains_like_torch_from_the_same_weights():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 3, 8, 8)).astype(F32)
    y = rng.integers(0, 3, 40)
    net = small_cnn()
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(3, stride=2, padding=1),
        torch.nn.Flatten(), torch.nn.Linear(8, 3))
    copy_to_torch(net, tnet)
    opt = optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)
    t_opt = torch.optim.AdamW(tnet.parameters(), lr=1e-2, weight_decay=0.01)
    loss_fn, t_loss_fn = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    net.train()
    tnet.train()
    for step in range(5):
        rows = slice(8 * step, 8 * step + 8)
        loss = loss_fn(net(X[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        t_loss = t_loss_fn(tnet(torch.from_numpy(X[rows])), torch.from_numpy(y[rows]))
        t_opt.zero_grad()
        t_loss.backward()
        t_opt.step()
        assert abs(float(loss) - t_loss.item()) < 1e-4
    for name, entry in net._tensors.items():
        index, attr = name.split(".", 1)
        want = getattr(tnet[int(index)], attr).detach().numpy()
        np.testing.assert_allclose(entry["data"], np.reshape(want, entry["data"].shape),
                                   rtol=1e-3, atol=1e-4, err_msg=name)
    net.eval()
    tnet.eval()
    np.testing.assert_allclose(net(X), tnet(torch.from_numpy(X)).detach().numpy(), rtol=1e-4,
                               atol=1e-4)


@pytest.fixture(scope="module")
def trained_qat_cnn():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(120, 3, 8, 8)).astype(F32)
    y = (X[:, 0].mean(axis=(1, 2)) > X[:, 1].mean(axis=(1, 2))).astype(np.int64)
    net = small_cnn(quant=True, seed=3)
    optim.AdamW(net.parameters(), lr=1e-2)
    net.fit(X, y, epochs=2, batch_size=16, progress=False)
    return net.eval(), X


# ------------------------------------------------------------------ compilation


def test_compiled_cnn_equals_fake_quant_bit_for_bit(trained_qat_cnn):
    net, X = trained_qat_cnn
    module = compile_qat_model(net, X)
    X_new = np.random.default_rng(9).normal(size=(300, 3, 8, 8)).astype(F32) * 1.5
    want = net(X_new)
    np.testing.assert_array_equal(module.forward(X_new, fhe="simulate"), want)
    np.testing.assert_array_equal(module.forward(X_new, fhe="disable"), want)
    out_int64 = module._circuit.run(X_new.reshape(300, -1), engine="int64")[0]
    np.testing.assert_array_equal(out_int64, want)
    kinds = [op.kind for op in module.ops]
    assert kinds.count("maxpool") == 2 and "batchnorm" not in kinds


def test_folded_batchnorm_is_the_documented_rule(trained_qat_cnn):
    """The lookup after conv -> BN holds scale' = s_x s_w k and bias' = (b - mean) k + beta,
    each operation in float32 (csrc/batchnorm.h)."""
    net, X = trained_qat_cnn
    module = compile_qat_model(net, X)
    conv, bn = net[5], net[6]
    lookup = [op for op in module.ops if op.kind == "lookup" and op.name.startswith("layer 7")][0]
    s_x = F32(net[4 - 1].scale())            # the QuantReLU before the pool before the conv
    _, s_w = conv.quant_weight()
    k = bn.weight / np.sqrt(bn.running_var + F32(bn.eps))
    np.testing.assert_array_equal(lookup.scale, (s_x * F32(s_w)) * k)
    np.testing.assert_array_equal(lookup.bias, (conv.bias - bn.running_mean) * k + bn.bias)


def test_maxpool_bit_widths_and_pairwise_lookups(trained_qat_cnn, tmp_path):
    net, X = trained_qat_cnn
    module = compile_qat_model(net, X)
    report = module.bit_width_report()
    pools = [r for r in report if r["kind"] == "maxpool"]
    assert len(pools) == 2
    for r, op in zip(pools, [op for op in module.ops if op.kind == "maxpool"]):
        src = report[op.src]
        assert (r["min"], r["max"]) == (src["min"], src["max"])   # max keeps the codes
        lo, hi = src["min"], src["max"]
        assert (r["max_diff_min"], r["max_diff_max"]) == (lo - hi, hi - lo)
        bits = max(int(np.ceil(np.log2(abs(lo - hi)))) + 1, int(np.ceil(np.log2(hi - lo + 1))) + 1)
        assert r["max_diff_bits"] == bits
        # brute-force count: one lookup per valid tap beyond the first, per window
        c, h, w = module._nodes[op.src]["shape"]
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        count = 0
        for oy in range((h + 2 * ph - kh) // sh + 1):
            for ox in range((w + 2 * pw - kw) // sw + 1):
                taps = sum(0 <= oy * sh - ph + a < h and 0 <= ox * sw - pw + b < w
                           for a in range(kh) for b in range(kw))
                count += taps - 1
        assert r["pairwise_max_lookups"] == op.info["pairwise_max_lookups"] == c * count
        assert op.info["max_diff_bits"] == r["max_diff_bits"]
    path = tmp_path / "cnn.npz"
    module.save(path)
    loaded = QuantizedModule.load(path)
    assert [op.kind for op in loaded.ops] == [op.kind for op in module.ops]
    assert [op.info for op in loaded.ops] == [op.info for op in module.ops]
    assert loaded.bit_width_report() == report
    np.testing.assert_array_equal(loaded.forward(X, fhe="simulate"),
                                  module.forward(X, fhe="simulate"))


def test_pairwise_max_lookups_count_against_max_bits():
    X = np.random.default_rng(12).normal(size=(20, 2, 4, 4)).astype(F32)
    net = nn.Sequential(nn.QuantIdentity(bit_width=4), nn.MaxPool2d(2), nn.Flatten(), seed=0,
                        input_shape=(2, 4, 4))
    net.train()(X)
    module = compile_qat_model(net.eval(), X)
    assert module.max_bit_width == 4                  # codes in [-8, 7]: a - b in [-15, 15]
    assert module.ops[0].info["max_diff_bits"] == 5
    assert module.check_bit_widths(max_bits=5)
    with pytest.raises(BitWidthError, match=r"pairwise max lookups of layer 1 \(MaxPool2d\)"):
        module.check_bit_widths(max_bits=4)


def test_batchnorm_on_codes_compiles_exactly():
    rng = np.random.default_rng(10)
    X = rng.normal(size=(50, 2, 6, 6)).astype(F32)
    net = nn.Sequential(nn.QuantIdentity(bit_width=5), nn.MaxPool2d(2), nn.BatchNorm2d(2),
                        nn.QuantReLU(bit_width=3), nn.Flatten(), nn.QuantLinear(18, 2), seed=0,
                        input_shape=(2, 6, 6))
    net.train()
    for _ in range(3):
        net(X)
    net[2].weight, net[2].bias = rng.uniform(0.5, 2, 2), rng.normal(size=2)
    net.eval()
    module = compile_qat_model(net, X)
    np.testing.assert_array_equal(module.forward(X, fhe="simulate"), net(X))


@pytest.mark.parametrize("make,match", [
    (lambda: [nn.QuantIdentity(), nn.AvgPool2d(2), nn.BatchNorm2d(2), nn.QuantIdentity()],
     r"layer 2 \(BatchNorm2d\) follows layer 1 \(AvgPool2d\)"),
    (lambda: [nn.QuantIdentity(), nn.QuantConv2d(2, 2, 1), nn.ReLU(), nn.BatchNorm2d(2),
              nn.QuantIdentity()], r"layer 3 \(BatchNorm2d\) follows layer 2 \(ReLU\)"),
    (lambda: [nn.QuantIdentity(), nn.QuantConv2d(2, 2, 1),
              nn.BatchNorm2d(2, track_running_stats=False), nn.QuantIdentity()],
     r"layer 2 \(BatchNorm2d\).*track_running_stats=False"),
    (lambda: [nn.QuantIdentity(), nn.QuantConv2d(2, 2, 1), nn.MaxPool2d(2)],
     r"layer 2 \(MaxPool2d\) receives float values")])
def test_uncompilable_placements_name_the_layer(make, match):
    net = nn.Sequential(*make(), seed=0, input_shape=(2, 4, 4)).eval()
    X = np.random.default_rng(0).normal(size=(4, 2, 4, 4)).astype(F32)
    with pytest.raises(ValueError, match=match):
        compile_qat_model(net, X)


def test_ptq_compiles_batchnorm_and_maxpool():
    net = small_cnn()
    X = np.random.default_rng(11).normal(size=(64, 3, 8, 8)).astype(F32)
    net.train()
    net(X)
    net.eval()
    module = compile_model(net, X, n_bits=6)
    np.testing.assert_array_equal(module.forward(X, fhe="simulate"),
                                  module.forward(X, fhe="disable"))
    agree = np.mean(module.predict(X, fhe="simulate") == net.predict(X))
    assert agree > 0.8


# ------------------------------------------------------------------ persistence and interop


def test_save_load_keeps_batchnorm_buffers_and_resumes_exactly(tmp_path, trained_qat_cnn):
    net, X = trained_qat_cnn
    y = np.arange(len(X)) % 2
    path = tmp_path / "net.npz"
    net.save(path)
    loaded = qatfhe.load(path)
    for name in ("2.running_mean", "2.running_var", "2.num_batches_tracked", "6.weight"):
        np.testing.assert_array_equal(loaded.state_dict()[name], net.state_dict()[name])
    assert loaded[2].num_batches_tracked[0] > 0
    loaded.eval()
    np.testing.assert_array_equal(loaded(X), net(X))
    again = qatfhe.load(path)            # training resumes identically (the fixture is kept)
    loaded.fit(X, y, epochs=1, batch_size=16, seed=1, progress=False)
    again.fit(X, y, epochs=1, batch_size=16, seed=1, progress=False)
    assert loaded[2].num_batches_tracked[0] > net[2].num_batches_tracked[0]
    for name, value in loaded.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value, err_msg=name)


def test_pruning_leaves_batchnorm_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 2), nn.BatchNorm2d(2), seed=0)
    assert set(net.prune(5)) == {"0.weight", "4.weight"}
    assert set(qatfhe.prune.sparsity(net)) == {0, 4}
    with pytest.raises(TypeError, match="no weights to prune"):
        qatfhe.prune.l1_unstructured(net[5], "weight", amount=1)


def test_export_onnx_names_the_layers_it_does_not_write(tmp_path, trained_qat_cnn):
    pytest.importorskip("onnx")
    net, _ = trained_qat_cnn
    with pytest.raises(NotImplementedError, match=r"layer 2 \(BatchNorm2d\)"):
        qatfhe.export_onnx(net, tmp_path / "cnn.onnx")


def test_eval_from_threads_leaves_batchnorm_state_alone(trained_qat_cnn):
    """Eval forwards run in private workspaces: concurrent ones give the serial result and
    write nothing into the network (running statistics, counts)."""
    from concurrent.futures import ThreadPoolExecutor
    net, X = trained_qat_cnn
    net.eval()
    before = net.state_dict()
    want = np.asarray(net(X))
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda rows: np.asarray(net(X[rows])),
                             [slice(k, k + 30) for k in range(0, 120, 30)] * 2))
    np.testing.assert_array_equal(np.concatenate(outs[:4]), want)
    np.testing.assert_array_equal(np.concatenate(outs[4:]), want)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_torch_interop_round_trip():
    tnet = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.MaxPool2d(2, padding=1),
                               torch.nn.Flatten(), torch.nn.Linear(36, 2))
    X = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    tnet.train()
    for _ in range(3):
        tnet(X)
    tnet.eval()
    net = qatfhe.from_torch(tnet).eval()
    assert net[1].num_batches_tracked[0] == 3
    want = tnet(X).detach().numpy()
    np.testing.assert_allclose(net(X.numpy()), want, rtol=1e-5, atol=1e-5)
    back = qatfhe.to_torch(net)
    np.testing.assert_allclose(back(X).detach().numpy(), want, rtol=1e-6, atol=1e-6)
    qnet, report = qatfhe.convert(tnet)
    kinds = [type(layer).__name__ for layer in qnet]
    assert kinds == ["QuantIdentity", "QuantConv2d", "BatchNorm2d", "QuantReLU", "MaxPool2d",
                     "Flatten", "QuantLinear"]
    np.testing.assert_array_equal(qnet[2].running_var, net[1].running_var)
