"""One network shared by threads (issue 11, item 3): eval-mode inference runs from
several threads at once with the results of serial calls; training stays exclusive, and
save/state_dict/writes during a fit in another thread wait for it or are refused, never
torn."""
import threading

import numpy as np
import pytest

import qatfhe
from qatfhe import datasets, nn, optim


def tutorial_net(seed=0, hidden=40):
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
        nn.QuantLinear(2, hidden, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.QuantReLU(bit_width=3),
        nn.QuantLinear(hidden, hidden, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.QuantReLU(bit_width=3),
        nn.QuantLinear(hidden, 2, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        seed=seed)
    for i in (1, 3, 5):
        nn.init.uniform_(net[i].weight, -1, 1)
    net.prune(10)
    return net


@pytest.fixture(scope="module")
def data():
    X_train, X_test, y_train, _ = datasets.checkerboard(seed=0)
    return X_train[:1500], y_train[:1500], X_test


def run_threads(n_threads, target):
    errors = []

    def guarded(k):
        try:
            target(k)
        except BaseException as exc:   # reported in the main thread
            errors.append(exc)
    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_concurrent_predict_equals_serial(data):
    X_train, y_train, X_test = data
    net = tutorial_net()
    net.fit(X_train, y_train, epochs=1, batch_size=8, progress=False)
    net.eval()
    sizes = [1, 3, 17, 64, 500]
    batches = [X_test[:s] for s in sizes]
    serial_logits = [net(b) for b in batches]
    serial_classes = [net.predict(b) for b in batches]
    results = [[] for _ in range(4)]

    def work(k):
        for i in range(300):
            j = (i + k) % len(batches)
            if i % 2:
                got = net.predict(batches[j])
                results[k].append(np.array_equal(got, serial_classes[j]))
            else:
                got = net(batches[j])
                results[k].append(np.array_equal(got, serial_logits[j]))
    run_threads(4, work)
    assert sum(len(r) for r in results) == 1200
    assert all(all(r) for r in results)


def test_predict_leaves_a_training_network_and_its_forward_alone(data):
    X_train, y_train, X_test = data
    X, y = X_train[:16], y_train[:16]
    reference = tutorial_net(seed=3)
    reference.train()
    reference.zero_grad()
    loss_ref = nn.CrossEntropyLoss()(reference(X), y)
    loss_ref.backward()
    grads_ref = reference[3].weight_grad.copy()

    net = tutorial_net(seed=3)
    net.train()
    net.zero_grad()
    loss = nn.CrossEntropyLoss()(net(X), y)
    flags = []

    def work(k):
        for _ in range(50):
            net.predict(X_test[:32])
            flags.append(net.training)
    run_threads(4, work)
    assert all(flags) and net.training            # never flipped to eval
    loss.backward()                               # the kept training forward is intact
    assert float(loss) == float(loss_ref)
    assert np.array_equal(net[3].weight_grad, grads_ref)


def test_save_and_state_dict_during_fit_are_consistent(data, tmp_path):
    X_train, y_train, _ = data
    net = tutorial_net(seed=1)
    optim.AdamW(net.parameters(), lr=1e-3)
    done = threading.Event()
    saved, states = [], []

    def train():
        try:
            net.fit(X_train, y_train, epochs=12, batch_size=1, progress=False)
        finally:
            done.set()
    trainer = threading.Thread(target=train)
    trainer.start()
    k = 0
    while not done.is_set() or k < 3:
        path = tmp_path / f"net{k}.npz"
        net.save(path)
        saved.append(path)
        states.append(net.state_dict())
        k += 1
        if k >= 40:
            break
    trainer.join()
    names = [n for n in net._tensors if n.endswith(".weight")]
    for path, state in zip(saved, states):
        loaded = qatfhe.load(path)                 # checksum and structure agree
        for name in names:
            mask = loaded._core.get_mask(name)
            w = loaded.state_dict()[name]
            assert np.all(w[mask == 0] == 0)       # pruned entries exactly 0: not mid-epoch
            assert np.all(state[name][mask == 0] == 0)
        assert not list(tmp_path.glob("*.tmp"))


def test_writes_during_fit_wait_or_are_refused(data):
    X_train, y_train, _ = data
    net = tutorial_net(seed=2)
    weight = net[3].weight                         # the view users hold
    started, done = threading.Event(), threading.Event()

    def train():
        started.set()
        try:
            net.fit(X_train, y_train, epochs=30, batch_size=1, progress=False)
        finally:
            done.set()
    trainer = threading.Thread(target=train)
    trainer.start()
    started.wait()
    refused = 0
    while not done.is_set():
        if not weight.flags.writeable:             # an epoch is running
            with pytest.raises(ValueError, match="read-only"):
                weight[0, 0] = 123.0
            refused += 1
            new = np.asarray(net[3].weight).copy()
            net[3].weight = new                    # waits for the epoch, then writes
            break
    trainer.join()
    assert weight.flags.writeable                  # restored after the fit
    assert refused == 1                            # an epoch was seen running
    assert not np.any(net[3].weight == 123.0)


def test_training_calls_wait_instead_of_failing(data):
    X_train, y_train, X_test = data
    nets = [tutorial_net(seed=4)]
    errors = []

    def fit_once(k):
        try:
            nets[0].fit(X_train[:300], y_train[:300], epochs=2, batch_size=4, progress=False)
            nets[0].predict(X_test[:10])
        except RuntimeError as exc:
            errors.append(exc)
    run_threads(3, fit_once)
    assert not errors
