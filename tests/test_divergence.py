"""Issue 11, item 4: diverged training.  fit stops at the first non-finite loss or weight
with a DivergenceError naming the epoch and step, and leaves the network exactly as it was
after the last finite step (checked against the same steps run one by one); save refuses
non-finite tensors by name, compile names them instead of a "34-bit" BitWidthError."""
import numpy as np
import pytest

import qatfhe
from qatfhe import nn, optim
from test_engine import Xoshiro

F32 = np.float32


def qat_net(prune=False, seed=0):
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
        nn.QuantLinear(2, 16, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.QuantReLU(bit_width=3, collect_stats_steps=4),
        nn.QuantLinear(16, 2, weight_quant=nn.CommonWeightQuant, weight_bit_width=3), seed=seed)
    if prune:
        net.prune(1)
    return net


def float_net():
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2), seed=0)


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, 2)).astype(F32)
    return X, (X.sum(axis=1) > 1).astype(np.int64)


def finite(net):
    return all(np.isfinite(t["data"]).all() for t in net._tensors.values())


def step_by_step(net, X, y, batch, seed, epoch, n_steps):
    """n_steps of epoch `epoch` (0-based) of fit(seed=seed) as a loop of single steps."""
    perm = Xoshiro(seed + epoch, 2).permutation(len(X))
    net.train()
    for s in range(n_steps):
        rows = perm[s * batch:(s + 1) * batch]
        net.optimizer.zero_grad()
        nn.CrossEntropyLoss()(net(X[rows]), y[rows]).backward()
        net.optimizer.step()
    net.optimizer.zero_grad()


CASES = {
    "adamw-lr-1e30": (qat_net, lambda p: optim.AdamW(p, lr=1e30), 1),
    "adamw-weight-decay-1e6": (float_net, lambda p: optim.AdamW(p, lr=1.0, weight_decay=1e6), 4),
    "sgd-momentum-1e10": (qat_net, lambda p: optim.SGD(p, lr=0.1, momentum=1e10), 3),
    "pruned-adamw-lr-1e30": (lambda: qat_net(prune=True), lambda p: optim.AdamW(p, lr=1e30), 1),
    "pruned-sgd-momentum-1e10": (lambda: qat_net(prune=True),
                                 lambda p: optim.SGD(p, lr=0.1, momentum=1e10), 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fit_stops_at_the_last_finite_state(name):
    make, make_opt, batch = CASES[name]
    X, y = data()
    net = make()
    make_opt(net.parameters())
    with pytest.raises(qatfhe.DivergenceError, match=r"epoch 1 of 3: training diverged at "
                       r"step \d+ of the epoch") as info:
        net.fit(X, y, epochs=3, batch_size=batch, seed=5, progress=False)
    exc = info.value
    assert isinstance(exc, ValueError) and isinstance(exc, FloatingPointError)
    assert exc.epoch == 1 and exc.step >= 1 and exc.history == {"loss": [], "accuracy": []}
    assert finite(net)
    # the same steps one by one: the first exc.step - 1 give exactly the network's state,
    # and one more step makes the loss or a tensor non-finite
    again = make()
    make_opt(again.parameters())
    step_by_step(again, X, y, batch, 5, 0, exc.step - 1)
    for key, t in net._tensors.items():
        np.testing.assert_array_equal(t["data"], again._tensors[key]["data"], err_msg=key)
        if t["kind"] == "param":
            np.testing.assert_array_equal(t["opt_m"], again._tensors[key]["opt_m"], err_msg=key)
            assert not t["grad"].any()
    assert net._core.tensor_steps() == again._core.tensor_steps()
    assert net.optimizer.state_step == exc.step - 1
    with np.errstate(all="ignore"):
        try:
            step_by_step(again, X, y, batch, 5, 0, 1)   # continues from step exc.step - 1
            ok = finite(again)
        except ValueError:
            ok = False
    assert not ok


def test_divergence_in_a_later_epoch_keeps_the_history():
    X, y = data()
    net = float_net()
    opt = optim.SGD(net.parameters(), lr=0.05)
    net.fit(X, y, epochs=1, seed=1, progress=False)
    opt.lr = 1e30
    with pytest.raises(qatfhe.DivergenceError) as info:
        net.fit(X, y, epochs=2, seed=1, progress=False)
    assert info.value.epoch in (1, 2) and finite(net)


def test_message_names_the_tensor_that_became_non_finite():
    """One layer whose weight grows 1e6-fold per step: the weight overflows before the
    logits do, and the message says which tensor."""
    X, y = data()
    net = nn.Sequential(nn.Linear(2, 2), seed=0)
    optim.SGD(net.parameters(), lr=1.0, weight_decay=1e6)
    with pytest.raises(qatfhe.DivergenceError,
                       match=r"the weight of layer 0 \(Linear\) became NaN or infinite") as info:
        net.fit(X, y, batch_size=4, progress=False)
    assert info.value.step == 7 and finite(net)


def test_fit_refuses_non_finite_weights_written_through_a_view():
    X, y = data()
    net = qat_net()
    net[3].weight[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"cannot train: the weight of layer 3 \(QuantLinear\) "
                       r"holds NaN or infinity in 1 of 32 entries"):
        net.fit(X, y, progress=False)


def test_save_refuses_non_finite_tensors_by_name(tmp_path):
    net = qat_net()
    optim.AdamW(net.parameters())
    net[1].bias[3] = np.inf
    with pytest.raises(ValueError, match=r"cannot save to .*: the bias of layer 1 "
                       r"\(QuantLinear\) holds NaN or infinity"):
        net.save(tmp_path / "net.npz")
    assert not list(tmp_path.iterdir())            # nothing written
    net[1].bias[3] = 0.0
    net._tensors["3.weight"]["opt_v"][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"optimizer moment v of weight of layer 3"):
        net.save(tmp_path / "net.npz")


def test_compile_names_the_non_finite_tensor():
    X, y = data()
    net = qat_net()
    net.fit(X, y, progress=False)
    net[3].weight[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"cannot compile: the weight of layer 3 "
                       r"\(QuantLinear\) holds NaN or infinity") as info:
        qatfhe.compile_qat_model(net, X)
    assert not isinstance(info.value, qatfhe.BitWidthError)
