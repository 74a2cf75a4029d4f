"""A small 3-bit quantization-aware CNN on scikit-learn's bundled 8x8 digits, trained with
qatfhe, compiled to an exact integer circuit and simulated.

    pip install scikit-learn        # the digits ship inside it; nothing is downloaded
    python examples/digits_cnn.py [--epochs 60] [--seed 0] [--bits 3] [--act-bits B]
                                  [--channels 16 32] [--accumulator-bits P]
                                  [--rounding round|trunc] [--pretrain-epochs E]

Prints the accuracy of an fp32 baseline (the same architecture with float layers), of the
3-bit QAT network (fake-quant, eval mode), of the compiled circuit (fhe="simulate"), how
many test images the circuit agrees on (predictions and bit-identical logits), and the bit
width of every integer value of the circuit, accumulators first.

The network (weights and the input at `--bits` bits, the hidden activations at
`--act-bits`, default `--bits`; `--channels` sets the 16 and 32):
    QuantIdentity -> QuantConv2d(1, 16, 3, padding=1) -> QuantReLU -> AvgPool2d(2)
    -> QuantIdentity -> QuantConv2d(16, 32, 3, padding=1) -> QuantReLU -> AvgPool2d(2)
    -> QuantIdentity -> Flatten -> QuantLinear(128, 10)
Convolution weights have one abs-max scale per output channel; every AvgPool2d is
followed by a QuantIdentity, so in the circuit it is an integer window sum and one table
lookup.

With --accumulator-bits P every QuantConv2d and QuantLinear is accumulator-aware
(accumulator_bit_width=P, qatfhe.a2q): the compiler proves that no accumulator needs more
than P bits, and the example prints the circuit's cost (module.fhe_cost() where qatfhe has
it, else the number of table lookups per input bit width).  The A2Q network starts from the
same network trained --pretrain-epochs without budgets (default --epochs; A2Q+'s
initialisation, a2q.load_unconstrained), its codes rounded to nearest within the bound
(--rounding round; trunc is Brevitas' rounding toward zero), then fine-tunes --epochs with
its budgets relaxed 16-fold and tightened over the first half (a2q.fit_tightening).
`--accumulator-bits 7 --act-bits 2` gave 96.80% mean test accuracy over seeds 0-9 with every
value of the circuit within 7 bits (README; 2-bit activations give each output channel about
21 units of weight per sign instead of 9)."""
import argparse
import sys
import time

import numpy as np

try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError:
    sys.exit("this example needs scikit-learn, which ships the 8x8 digits data set: "
             "pip install scikit-learn")

from qatfhe import a2q, nn, optim
from qatfhe.compile import compile_qat_model

F32 = np.float32
CHANNELS = (16, 32)


def digits(seed):
    """(X_train, X_test, y_train, y_test): 8x8 images scaled to [0, 1], shape (n, 1, 8, 8);
    a stratified 80/20 split."""
    data = load_digits()
    X = (data.images / 16.0).astype(F32)[:, None]
    return train_test_split(X, data.target, test_size=0.2, random_state=seed,
                            stratify=data.target)


def fp32_cnn(seed, channels=CHANNELS):
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(4 * c2, 10), seed=seed)


def qat_cnn(bits, seed, accumulator_bits=None, bound="split", act_bits=None,
            channels=CHANNELS, rounding="trunc"):
    """The QAT network: input and weights at `bits`, the hidden activations (every QuantReLU
    and the QuantIdentity after each pooling) at act_bits (default bits)."""
    c1, c2 = channels
    act_bits = bits if act_bits is None else act_bits
    unsigned = nn.Uint8ActPerTensorFloat          # inputs and pooled values are >= 0
    acc = dict(accumulator_bit_width=accumulator_bits, accumulator_bound=bound,
               accumulator_rounding=rounding)
    return nn.Sequential(
        nn.QuantIdentity(act_quant=unsigned, bit_width=bits),
        nn.QuantConv2d(1, c1, 3, padding=1, weight_bit_width=bits,
                       weight_scaling_per_output_channel=True, **acc),
        nn.QuantReLU(bit_width=act_bits), nn.AvgPool2d(2),
        nn.QuantIdentity(act_quant=unsigned, bit_width=act_bits),
        nn.QuantConv2d(c1, c2, 3, padding=1, weight_bit_width=bits,
                       weight_scaling_per_output_channel=True, **acc),
        nn.QuantReLU(bit_width=act_bits), nn.AvgPool2d(2),
        nn.QuantIdentity(act_quant=unsigned, bit_width=act_bits),
        nn.Flatten(), nn.QuantLinear(4 * c2, 10, weight_bit_width=bits, **acc), seed=seed)


def train(net, X, y, epochs, seed):
    optim.AdamW(net.parameters(), lr=3e-3)
    net.fit(X, y, epochs=epochs, batch_size=16, seed=seed, progress=False)
    return net.eval()


def train_a2q(make, X, y, epochs, seed, pretrain_epochs=0):
    """A2Q (qatfhe.a2q): make(None) is the network without budgets, make(P) with them.
    With pretrain_epochs > 0 the network without budgets trains first and the A2Q one starts
    from its weights (a2q.load_unconstrained, A2Q+'s initialisation) at a lower learning
    rate; either way the budgets are relaxed 16-fold at first and tightened over half the
    epochs (a2q.fit_tightening), then held for the other half."""
    net, lr, final_lr = make(True), 3e-3, 1e-3
    if pretrain_epochs > 0:
        plain = train(make(False), X, y, pretrain_epochs, seed)
        a2q.load_unconstrained(net, plain.state_dict())
        lr, final_lr = 1e-3, 3e-4
    optim.AdamW(net.parameters(), lr=lr)
    a2q.fit_tightening(net, X, y, epochs, tighten_epochs=epochs // 2, relax_start=16.0,
                       batch_size=16, final_lr=final_lr, seed=seed)
    return net.eval()


def cost_summary(module):
    """The circuit's FHE cost: module.fhe_cost() when qatfhe has it, else the table lookups
    per sample counted by the bit width of their input (worst case)."""
    if hasattr(module, "fhe_cost"):
        return f"FHE cost (module.fhe_cost()): {module.fhe_cost()}"
    report = module.bit_width_report()
    counts = {}
    for k, op in enumerate(module.ops[:-1]):
        if op.kind == "lookup":
            bits = report[op.src].get("worst_bits", report[op.src]["static_bits"])
            counts[bits] = counts.get(bits, 0) + int(np.prod(module._nodes[k + 1]["shape"]))
    detail = ", ".join(f"{n} of {b} bits" for b, n in sorted(counts.items()))
    return f"table lookups per sample: {sum(counts.values())} ({detail})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--accumulator-bits", type=int, default=None, metavar="P",
                        help="A2Q: every accumulator provably fits P bits")
    parser.add_argument("--accumulator-bound", choices=("split", "l1"), default="split",
                        help="A2Q's proven bound (qatfhe.a2q): split (default) or l1 (Brevitas)")
    parser.add_argument("--rounding", choices=("round", "trunc"), default="round",
                        help="A2Q codes rounded to nearest (default) or toward zero (Brevitas)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, metavar="E",
                        help="A2Q: epochs without budgets before the A2Q training "
                             "(default: --epochs; 0: none)")
    parser.add_argument("--act-bits", type=int, default=None, metavar="B",
                        help="bits of the hidden activations (default: --bits)")
    parser.add_argument("--channels", type=int, nargs=2, default=CHANNELS, metavar=("C1", "C2"),
                        help="output channels of the two convolutions (default 16 32)")
    args = parser.parse_args(argv)
    pretrain = args.epochs if args.pretrain_epochs is None else args.pretrain_epochs
    start = time.perf_counter()
    X_train, X_test, y_train, y_test = digits(args.seed)
    print(f"digits: {len(X_train)} training and {len(X_test)} test images of 8x8")

    t = time.perf_counter()
    fp32 = train(fp32_cnn(args.seed, args.channels), X_train, y_train, args.epochs, args.seed)
    fp32_acc = fp32.score(X_test, y_test)
    print(f"fp32 baseline          accuracy {fp32_acc:.2%}   ({time.perf_counter() - t:.1f} s)")

    t = time.perf_counter()
    def make(budgets):
        return qat_cnn(args.bits, args.seed, args.accumulator_bits if budgets else None,
                       args.accumulator_bound, args.act_bits, args.channels, args.rounding)
    if args.accumulator_bits is None:
        qat = train(make(False), X_train, y_train, args.epochs, args.seed)
    else:
        qat = train_a2q(make, X_train, y_train, args.epochs, args.seed, pretrain)
    qat_logits = qat(X_test)
    qat_pred = np.asarray(qat_logits).argmax(axis=1)
    qat_acc = float(np.mean(qat_pred == y_test))
    label = f"{args.bits}-bit QAT" + (f" ({args.act_bits}-bit act.)" if args.act_bits else "")
    print(f"{label + ' (fake-quant)':23s} accuracy {qat_acc:.2%}   "
          f"({time.perf_counter() - t:.1f} s)")

    t = time.perf_counter()
    module = compile_qat_model(qat, X_train)
    logits = module.forward(X_test, fhe="simulate")
    pred = logits.argmax(axis=1)
    sim_acc = float(np.mean(pred == y_test))
    same_pred = int(np.sum(pred == qat_pred))
    same_logits = int(np.sum(np.all(logits == np.asarray(qat_logits), axis=1)))
    print(f"integer circuit        accuracy {sim_acc:.2%}   (compile + simulate "
          f"{time.perf_counter() - t:.1f} s)")
    print(f"agreement with fake-quant: {same_pred}/{len(X_test)} predictions, "
          f"{same_logits}/{len(X_test)} logit vectors bit for bit")

    report = module.bit_width_report()
    print(f"\nmax accumulator: {module.accumulator_bit_width} bits; circuit bit width "
          f"(every value): {module.max_bit_width} bits measured on the training set, "
          f"{module.worst_case_bit_width} bits worst case over all inputs")
    print(f"{'value':32s} {'kind':14s} {'range':>14s} {'bits':>4s} {'worst':>5s}")
    for r in report:
        print(f"{r['name']:32s} {r['kind']:14s} {'[%d, %d]' % (r['min'], r['max']):>14s} "
              f"{r['bits']:4d} {r.get('worst_bits', r['static_bits']):5d}")
    print(f"\nworst case by {module.worst_case_method}; {cost_summary(module)}")
    for b in module.info.get("accumulator_budgets", []):
        print(f"A2Q {b['layer']}: budget {b['accumulator_bit_width']} bits, worst case "
              f"{b['worst_case_bits']} bits (proven)")
    gap = 100 * (fp32_acc - qat_acc)
    print(f"\nQAT is {gap:.1f} points below the fp32 baseline; total "
          f"{time.perf_counter() - start:.1f} s")
    return 0 if same_pred == len(X_test) and same_logits == len(X_test) else 1


if __name__ == "__main__":
    sys.exit(main())
