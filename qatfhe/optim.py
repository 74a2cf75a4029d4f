"""Optimizers with torch.optim names; their state lives in the C network.

`AdamW(net.parameters(), lr=1e-3)` and `SGD(net.parameters(), lr=0.1, momentum=0.9)`
bind to the network the parameters belong to; step() and zero_grad() run in C.  A network
has one optimizer at a time: creating another replaces it, and the replaced one raises
RuntimeError when it is used or its lr is read or changed."""
import numbers

from . import _checks


class Optimizer:
    kind = None

    def __init__(self, params, **hyper):
        net = getattr(params, "net", None)
        if net is None:
            raise TypeError("params must be net.parameters() of a qatfhe network")
        self.net = net
        self.hyper = hyper
        net._core.set_optimizer(self.kind, **hyper)
        net.optimizer = self

    def _check_bound(self):
        """RuntimeError unless this optimizer is still the network's (not replaced)."""
        if self.net.optimizer is not self:
            raise RuntimeError(f"this {type(self).__name__} was replaced by "
                               f"{self.net.optimizer!r} on its network (one optimizer per "
                               f"network at a time); use the network's current optimizer, "
                               f"net.optimizer")

    def step(self):
        self._check_bound()
        self.net._core.step()

    @property
    def lr(self):
        self._check_bound()
        return self.hyper["lr"]

    @lr.setter
    def lr(self, value):
        """Change the learning rate, keeping moments and step count (for schedules)."""
        self._check_bound()
        value = _checks.positive_float(value, "lr")
        self.net._core.set_lr(value)
        self.hyper["lr"] = value

    def zero_grad(self):
        self._check_bound()
        self.net._core.zero_grad()

    @property
    def state_step(self):
        """Number of steps taken."""
        self._check_bound()
        return self.net._core.optimizer_step

    def config(self):
        return {"kind": self.kind, **self.hyper}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({args})"


def _betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(
            isinstance(b, numbers.Real) and not isinstance(b, bool) for b in betas):
        raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")
    return float(betas[0]), float(betas[1])


class AdamW(Optimizer):
    """torch.optim.AdamW: decoupled weight decay, bias-corrected moments.

    eps must be > 0 (torch accepts 0, which turns any entry whose gradient is exactly 0
    from the start, such as a dead ReLU's weights, into 0/0 = NaN)."""
    kind = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        b1, b2 = _betas(betas)
        super().__init__(params, lr=_checks.positive_float(lr, "lr"), beta1=b1, beta2=b2,
                         eps=_checks.positive_float(eps, "eps"),
                         weight_decay=_checks.positive_float(weight_decay, "weight_decay",
                                                             allow_zero=True))


class SGD(Optimizer):
    """torch.optim.SGD with momentum, dampening, Nesterov and L2 weight decay."""
    kind = "sgd"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        momentum = _checks.positive_float(momentum, "momentum", allow_zero=True)
        dampening = _checks.positive_float(dampening, "dampening", allow_zero=True)
        nesterov = _checks.flag(nesterov, "nesterov")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        super().__init__(params, lr=_checks.positive_float(lr, "lr"), momentum=momentum,
                         dampening=dampening,
                         weight_decay=_checks.positive_float(weight_decay, "weight_decay",
                                                             allow_zero=True),
                         nesterov=bool(nesterov))


def from_config(net, config):
    config = dict(config)
    kind = config.pop("kind")
    if kind == "adamw":
        return AdamW(net.parameters(), lr=config["lr"], betas=(config["beta1"], config["beta2"]),
                     eps=config["eps"], weight_decay=config["weight_decay"])
    if kind == "sgd":
        return SGD(net.parameters(), **config)
    raise ValueError(f"unknown optimizer kind {kind!r}")
