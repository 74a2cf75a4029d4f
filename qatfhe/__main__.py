"""The qatfhe command: `python -m qatfhe COMMAND` (or the `qatfhe` console script).

Commands:
    demo       train the tutorial's 3-bit QAT network on the checkerboard data once
    tutorial   the tutorial's three experiments over N seeded runs: tables, JSON, plots
    fhe        the tutorial's QAT net under real FHE (Concrete): cost, keygen, latency
    search     the cheapest FHE circuits at full accuracy: a Pareto front (qatfhe.search)
Usage errors exit with status 2."""
import argparse
import os
import sys
import tempfile
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


# ------------------------------------------------------------------ tutorial

def _tutorial(args):
    from . import __version__, experiments, plots
    start = time.perf_counter()
    print(f"qatfhe tutorial: {args.runs} runs of 3 experiments, {args.jobs} process(es), "
          f"writing to {args.out}", flush=True)
    results = experiments.run_all(runs=args.runs, jobs=args.jobs, epochs=args.epochs,
                                  lr=args.lr, lr_schedule=args.lr_schedule,
                                  progress=not args.no_progress, boundaries=True)
    cheapest = _cheapest_circuit(args, results)
    seconds = time.perf_counter() - start
    print()
    print(experiments.markdown_tables(results))
    print()
    print("The cheapest searched circuit that keeps the QAT net's accuracy (qatfhe.search):\n")
    print(cheapest["table"])
    print()

    files = {}
    if plots.available():
        files.update(_figures(results, plots))
    else:
        print("note: matplotlib is not installed, so no plots were drawn "
              "(pip install matplotlib, or pip install 'qatfhe[plot]')")
    command = "python -m qatfhe tutorial " + " ".join(args.argv)
    files["results.json"] = experiments.results_json(
        results, qatfhe_version=__version__, command=command.strip(), jobs=args.jobs,
        seconds=round(seconds, 2), cheapest_circuit=cheapest["point"],
        fhe_latency=cheapest["latency"])
    os.makedirs(args.out, exist_ok=True)
    for name, data in files.items():
        experiments.write_atomic(os.path.join(args.out, name), data)
    print(f"wrote {', '.join(sorted(files))} to {args.out} ({seconds:.1f} s for the runs)")

    qat = results["qat_pruned"]
    bad = [r["seed"] for r in qat.runs if not r["agree"]]
    if bad:
        print(f"error: the integer circuit disagrees with the fake-quant network on runs "
              f"{bad}: this is a bug, please report it", file=sys.stderr)
        return 1
    return 0


def _cheapest_circuit(args, results):
    """The fourth table: search.TUTORIAL_FAMILY over the same runs, the cheapest front point
    keeping the QAT net's mean accuracy; FHE latencies with --fhe-latency."""
    from . import search
    front = search.search(search.TUTORIAL_FAMILY, range(args.runs), jobs=args.jobs)
    qat = results["qat_pruned"]
    means = qat.means[qat.configs[0]]
    point = search.cheapest_keeping(front, means["integer_accuracy"])
    latency = _fhe_latency(args, point) if args.fhe_latency and point else None
    if point is not None:
        point = {k: v for k, v in point.items() if k != "module"}
    return {"point": point, "latency": latency,
            "table": search.tutorial_table(means, qat.runs, point, latency)}


def _fhe_latency(args, point):
    """Seconds per sample under encryption of run 0's tutorial net and of the point's best
    run (needs QuantizedModule.compile_fhe, the FHE backend), or None."""
    from . import compile_qat_model, datasets, experiments, search
    from .compile import QuantizedModule
    if not hasattr(QuantizedModule, "compile_fhe"):
        print("note: --fhe-latency needs qatfhe's FHE backend (QuantizedModule.compile_fhe), "
              "which this version does not have; bench/bench_search_fhe.py measures it with "
              "its own lowering")
        return None
    seed = point["module_seed"]
    X_train, X_test, y_train, _ = datasets.checkerboard(seed=seed)
    net = experiments.prune_like_tutorial(experiments.qat_net(100, seed), 20)
    experiments.train(net, X_train, y_train, experiments.TrainSettings(
        epochs=args.epochs, lr=args.lr, lr_schedule=args.lr_schedule))
    net.unprune()
    config = dict(point["config"])
    rounding = config.pop("rounding_threshold_bits")
    blob = search.evaluate(config, seed, rounding=(rounding,))[0]["module_bytes"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "point.npz")
        with open(path, "wb") as handle:
            handle.write(blob)
        found = QuantizedModule.load(path)
    out = {}
    for key, module in (("qat", compile_qat_model(net, X_train)), ("point", found)):
        module.compile_fhe(X_train)                          # a loaded module needs X
        module.forward(X_test[:1], fhe="execute", progress=False)   # keys, warm-up
        start = time.perf_counter()
        module.forward(X_test[1:1 + args.fhe_samples], fhe="execute", progress=False)
        out[key] = (time.perf_counter() - start) / args.fhe_samples
    return out


def _figures(results, plots):
    """{file name: PNG bytes} of the tutorial's figures (run 0 for the pictures)."""
    from . import datasets
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=0)
    width = results["ptq_by_width"].runs
    run0 = {r["config"]: r for r in width if r["seed"] == 0}
    qat0 = next(r for r in results["qat_pruned"].runs if r["seed"] == 0)
    boundaries = {**results["ptq_by_width"].boundaries, **results["qat_pruned"].boundaries}
    panels = (("fp32 SimpleNet(100)", "fp32 SimpleNet(100)", run0["100"]["fp32_accuracy"]),
              ("3-bit PTQ SimpleNet(100)", "3-bit PTQ of it", run0["100"]["ptq_accuracy"]),
              ("3-bit QAT (integer circuit)", "3-bit QAT, pruned (integer)",
               qat0["integer_accuracy"]))
    grids = {label: (boundaries[key], accuracy) for key, label, accuracy in panels}
    figures = {
        "dataset.png": plots.dataset_figure(X_train, y_train,
                                            title="Checkerboard training set, seed 0"),
        "decision_boundaries.png": plots.boundaries_figure(
            {label: grid for label, (grid, _) in grids.items()}, X_test, y_test,
            accuracies={label: acc for label, (_, acc) in grids.items()}),
        "accumulator_bits.png": plots.bits_figure(results),
    }
    return {name: plots.png(fig) for name, fig in figures.items()}


def _check_out(parser, out):
    """Refuse (usage error) an --out that cannot become a writable directory, before any
    run and without creating anything."""
    path = os.path.abspath(out)
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        what = "is not a directory" if existing == path else f"is under {existing}, a file"
        parser.error(f"--out {out} {what}; expected a writable directory")
    try:   # the only reliable test of writability (root ignores permission bits)
        fd, probe = tempfile.mkstemp(prefix=".qatfhe-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        parser.error(f"--out {out} is not writable ({exc.strerror} in {existing}); expected a "
                     "writable directory")


def _count(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def _rate(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not (0.0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def _parser():
    parser = argparse.ArgumentParser(prog="qatfhe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the tutorial's 3-bit QAT net once")
    demo.add_argument("--epochs", type=int, default=7)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    tutorial = commands.add_parser(
        "tutorial", help="the tutorial's three experiments over N runs",
        description="Run the tutorial's three experiments (fp32 + 3-bit PTQ by width, pruned "
        "fp32 + PTQ, pruned 3-bit QAT compiled to an integer circuit) over N runs; run i "
        "uses seed i for data noise, initialisation and shuffling. Prints Markdown tables "
        "next to the tutorial's numbers and writes results.json (and PNG plots when "
        "matplotlib is installed) into --out.")
    tutorial.add_argument("--runs", type=_count(1), default=10, metavar="N",
                          help="runs (seeds 0..N-1) per configuration (default 10)")
    tutorial.add_argument("--out", default="tutorial_out", metavar="DIR",
                          help="output directory (default ./tutorial_out)")
    tutorial.add_argument("--jobs", type=_count(1), default=None, metavar="J",
                          help="worker processes (default: one per CPU core); results do not "
                          "depend on it")
    tutorial.add_argument("--epochs", type=_count(1), default=7, metavar="E",
                          help="training epochs of every network (default 7, the tutorial's)")
    tutorial.add_argument("--lr", type=_rate, default=1e-3, metavar="LR",
                          help="AdamW learning rate of every network (default 1e-3, the "
                          "tutorial's)")
    tutorial.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                          help="learning rate per epoch: constant (the tutorial's, default) "
                          "or cosine decay from --lr towards 0 over the epochs")
    tutorial.add_argument("--no-progress", action="store_true", help="no progress bars")
    tutorial.add_argument("--fhe-latency", action="store_true",
                          help="also time encrypted inference of the QAT net and the cheapest "
                          "searched circuit (needs concrete-python; key generation takes "
                          "minutes)")
    tutorial.add_argument("--fhe-samples", type=_count(1), default=1, metavar="N",
                          help="samples timed per circuit with --fhe-latency (default 1)")
    tutorial.set_defaults(run=_tutorial)

    from .fhe_demo import add_command as add_fhe      # body in qatfhe/fhe_demo.py
    add_fhe(commands, _count)
    from .search import add_command
    add_command(commands)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "epochs", 1) < 1:
        parser.error("--epochs must be >= 1")
    if getattr(args, "seed", 0) < 0:
        parser.error("--seed must be >= 0")
    if args.command == "tutorial":
        if args.jobs is None:
            args.jobs = max(1, min(os.cpu_count() or 1, args.runs))
        _check_out(parser, args.out)
        args.argv = argv[1:]
    if args.command == "search":
        _check_out(parser, args.out)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
