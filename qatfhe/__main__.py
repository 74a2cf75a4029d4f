"""The qatfhe command: `python -m qatfhe COMMAND` (or the `qatfhe` console script).

Commands:
    demo       train the tutorial's 3-bit QAT network on the checkerboard data once
Usage errors exit with status 2."""
import argparse
import sys
import time


def _demo(args):
    from . import datasets, nn, optim
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=args.seed)
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
        nn.QuantLinear(2, 100, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.QuantReLU(bit_width=3),
        nn.QuantLinear(100, 100, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        nn.QuantReLU(bit_width=3),
        nn.QuantLinear(100, 2, weight_quant=nn.CommonWeightQuant, weight_bit_width=3),
        seed=args.seed)
    for i in (1, 3, 5):
        nn.init.uniform_(net[i].weight, -1.0, 1.0)
    optim.AdamW(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    history = net.fit(X_train, y_train, epochs=args.epochs, batch_size=1)
    seconds = time.perf_counter() - start
    print(f"3-bit QAT net 2-100-100-2, {args.epochs} epochs at batch size 1: {seconds:.2f} s")
    for e, (loss, acc) in enumerate(zip(history["loss"], history["accuracy"]), 1):
        print(f"  epoch {e}: loss {loss:.4f}, train accuracy {acc:.2%}")
    print(f"test accuracy (eval mode, fake-quant): {net.score(X_test, y_test):.2%}")
    return 0


def _parser():
    parser = argparse.ArgumentParser(prog="qatfhe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the tutorial's 3-bit QAT net once")
    demo.add_argument("--epochs", type=int, default=7)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "epochs", 1) < 1:
        parser.error("--epochs must be >= 1")
    if getattr(args, "seed", 0) < 0:
        parser.error("--seed must be >= 0")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
