"""Issue 11, item 11: optimizer state as torch.optim keeps it, checked against torch.optim
itself.  A learned activation threshold has no gradient during its 300-step statistics
phase (T.grad is None in Brevitas), so torch skips it entirely: no weight decay, no
momentum, and its AdamW bias correction counts from its own first step (step 301), not
from the network's.  save/load keeps each parameter's step count.  Skipped without torch."""
import json
import zipfile

import numpy as np
import pytest

import qatfhe
from qatfhe import nn, optim
from test_engine import Xoshiro

torch = pytest.importorskip("torch")

STATS = 300                      # Brevitas' default collect_stats_steps
STEPS = 312                      # past the switch at training forward STATS + 1


def tutorial_net(prune=False):
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
        nn.QuantLinear(2, 12, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.QuantReLU(bit_width=3),                       # learned threshold, 300 stats steps
        nn.QuantLinear(12, 2, weight_quant=nn.CommonWeightQuant, weight_bit_width=3), seed=3)
    for i in (1, 3):
        nn.init.uniform_(net[i].weight, -1, 1)
    if prune:
        qatfhe.prune.fan_in(net[1], 1)
    return net


def batches(n_steps, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n_steps, batch, 2)).astype(np.float32)
    return X, (X.sum(axis=2) > 1).astype(np.int64)


TORCH_OPTS = {
    "adamw": (lambda p: optim.AdamW(p, lr=0.02, weight_decay=0.05),
              lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.05)),
    "sgd-momentum-decay": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.05),
                           lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9,
                                                     weight_decay=0.05)),
    "sgd-nesterov": (lambda p: optim.SGD(p, lr=0.05, momentum=0.8, weight_decay=0.01,
                                         nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, weight_decay=0.01,
                                               nesterov=True)),
}


@pytest.mark.parametrize("name", list(TORCH_OPTS))
def test_steps_match_torch_optim_through_the_statistics_phase(name):
    """The engine's gradients drive a torch.optim optimizer over copies of the parameters,
    with T.grad None for the first 300 steps (the rule of the spec, not the engine's
    state); after every step the engine's parameters must equal torch's."""
    make_ours, make_torch = TORCH_OPTS[name]
    net = tutorial_net()
    make_ours(net.parameters())
    theirs = {n: torch.nn.Parameter(torch.tensor(t["data"].copy()))
              for n, t in net._tensors.items() if t["kind"] == "param"}
    topt = make_torch(list(theirs.values()))
    X, y = batches(STEPS)
    threshold = "2.act_quant.threshold"
    net.train()
    for step in range(STEPS):
        net.optimizer.zero_grad()
        topt.zero_grad(set_to_none=True)
        nn.CrossEntropyLoss()(net(X[step]), y[step]).backward()
        for n, p in theirs.items():
            if n == threshold and step < STATS:
                continue                              # not in the graph: grad stays None
            p.grad = torch.tensor(net._tensors[n]["grad"].copy())
        if step == STATS:                             # the switch forward set T := B
            with torch.no_grad():
                theirs[threshold][0] = float(net._tensors["2.act_quant.stats_buffer"]["data"][0])
        net.optimizer.step()
        topt.step()
        for n, p in theirs.items():
            np.testing.assert_allclose(net._tensors[n]["data"], p.detach().numpy(), rtol=2e-5,
                                       atol=2e-6, err_msg=f"{n} after step {step + 1}")
    steps = net._core.tensor_steps()
    assert steps[threshold] == STEPS - STATS and steps["1.weight"] == STEPS
    if name == "adamw":
        assert topt.state[theirs[threshold]]["step"].item() == STEPS - STATS


def test_fit_packed_epoch_equals_the_checked_loop():
    """fit (the C epoch, pruned weights packed) equals the step loop checked above, bit for
    bit, through the switch."""
    X, y = batches(STEPS, batch=1, seed=4)
    X, y = X[:, 0], y[:, 0]
    fitted, looped = tutorial_net(prune=True), tutorial_net(prune=True)
    optim.AdamW(fitted.parameters(), lr=0.02, weight_decay=0.05)
    opt = optim.AdamW(looped.parameters(), lr=0.02, weight_decay=0.05)
    fitted.fit(X, y, epochs=1, batch_size=1, seed=9, progress=False)
    looped.train()
    for row in Xoshiro(9, 2).permutation(len(X)):
        opt.zero_grad()
        nn.CrossEntropyLoss()(looped(X[row:row + 1]), y[row:row + 1]).backward()
        opt.step()
    for name, t in fitted._tensors.items():
        np.testing.assert_array_equal(t["data"], looped._tensors[name]["data"], err_msg=name)
    assert fitted._core.tensor_steps() == looped._core.tensor_steps()


def test_save_load_keeps_each_parameters_step_count(tmp_path):
    X, y = batches(STEPS, batch=1, seed=5)
    X, y = X[:, 0], y[:, 0]
    net = tutorial_net(prune=True)
    optim.AdamW(net.parameters(), lr=0.02)
    net.fit(X[:305], y[:305], batch_size=1, seed=1, progress=False)
    net.save(tmp_path / "net.npz")
    back = qatfhe.load(tmp_path / "net.npz")
    assert back._core.tensor_steps() == net._core.tensor_steps()
    assert net._core.tensor_steps()["2.act_quant.threshold"] == 5
    for model in (net, back):                          # resumes bit for bit
        model.fit(X[305:], y[305:], batch_size=1, seed=2, progress=False)
    for name, t in net._tensors.items():
        np.testing.assert_array_equal(t["data"], back._tensors[name]["data"], err_msg=name)


def test_version_1_files_still_load(tmp_path):
    """A version 1 file (one step count for all) loads: every parameter takes the count,
    except a threshold still in its statistics phase (it has taken no step)."""
    X, y = batches(40, batch=1, seed=6)
    net = tutorial_net()
    optim.AdamW(net.parameters())
    net.fit(X[:, 0], y[:, 0], batch_size=1, progress=False)
    path = tmp_path / "v2.npz"
    net.save(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays.pop("__header__").tobytes())
    header.update(version=1)
    header.pop("optimizer_steps")
    header.pop("checksum")
    old = tmp_path / "v1.npz"
    qatfhe.io.write_npz(old, header, arrays)
    back = qatfhe.load(old)
    assert back._core.tensor_steps() == {"1.weight": 40, "1.bias": 40, "2.act_quant.threshold": 0,
                                         "3.weight": 40, "3.bias": 40}
    with zipfile.ZipFile(path) as z:              # the new files say version 2
        assert json.loads(np.load(path)["__header__"].tobytes())["version"] == 2
        assert "__header__.npy" in z.namelist()
