"""Changing an optimizer's learning rate mid-training keeps its moments and step count,
as assigning param_group["lr"] does in PyTorch: checked against the NumPy oracle."""
import numpy as np
import pytest

import reference as ref
from qatfhe import nn, optim

F32 = np.float32


def test_lr_change_keeps_adamw_state():
    rng = np.random.default_rng(3)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), seed=5)
    opt = optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    params = {name: value.copy() for name, value in net.named_parameters()}
    oracle = ref.AdamW(lr=1e-2, weight_decay=0.1)
    for step, lr in enumerate([1e-2, 1e-2, 1e-3, 1e-3]):
        opt.lr = lr
        oracle.lr = lr
        X = rng.normal(size=(5, 3)).astype(F32)
        y = rng.integers(0, 2, size=5)
        net.train()
        net(X)
        opt.zero_grad()
        net.loss_backward(y)
        grads = {name: net._tensors[name]["grad"].copy() for name in params}
        opt.step()
        oracle.step(params, grads)
        for name, value in net.named_parameters():
            np.testing.assert_allclose(value, params[name], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name} after step {step}")
    assert opt.state_step == 4
    assert opt.lr == 1e-3


@pytest.mark.parametrize("bad", [0, -1e-3, float("nan"), float("inf")])
def test_lr_must_be_positive(bad):
    net = nn.Sequential(nn.Linear(2, 2), seed=0)
    opt = optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = bad
    assert opt.lr == 0.1
