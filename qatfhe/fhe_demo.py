"""`python -m qatfhe fhe`: the tutorial's pruned 3-bit QAT net under real FHE.

Trains the net of the README quick start (or loads one saved with net.save), compiles it
to an integer circuit and then to FHE with Concrete, prints Concrete's statistics, the key
generation time, the latency of each encrypted sample and its agreement with
fhe="simulate".  `measure` is shared with bench/bench_fhe.py."""
import time

import numpy as np


def tutorial_net(seed=0, epochs=7):
    """The README quick start's net, trained: 2-100-100-2 at 3 bits, pruned to 20."""
    from . import datasets, nn, optim
    X_train, X_test, y_train, y_test = datasets.checkerboard(seed=seed)
    net = nn.Sequential(
        nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=3),
        nn.QuantLinear(2, 100, bias=True, weight_quant=nn.CommonWeightQuant,
                       weight_bit_width=3),
        nn.QuantReLU(bit_width=3),
        nn.QuantLinear(100, 100, bias=True, weight_quant=nn.CommonWeightQuant,
                       weight_bit_width=3),
        nn.QuantReLU(bit_width=3),
        nn.QuantLinear(100, 2, bias=True, weight_quant=nn.CommonWeightQuant,
                       weight_bit_width=3),
        seed=seed)
    for i in (1, 3, 5):
        nn.init.uniform_(net[i].weight, -1, 1)
    net.prune(20)
    optim.AdamW(net.parameters(), lr=1e-3)
    net.fit(X_train, y_train, epochs=epochs, batch_size=1, progress=False)
    net.eval()
    return net, (X_train, X_test, y_train, y_test)


def describe(stats):
    """Lines of text for fhe_statistics()."""
    gb = 1e9
    per_bits = ", ".join(f"{n} at {b} bits" for b, n in stats["pbs_count_per_bit_width"].items())
    lines = [f"  PBS per sample     {stats['pbs_count']} ({per_bits})",
             f"  complexity         {stats['complexity']:.3g}",
             f"  circuit bit width  {stats['max_bit_width']}",
             f"  keys               bootstrap {stats['size_of_bootstrap_keys'] / gb:.3f} GB, "
             f"key switching {stats['size_of_keyswitch_keys'] / gb:.3f} GB, secret "
             f"{stats['size_of_secret_keys'] / 1e3:.1f} kB",
             f"  p_error            {stats['p_error']:.3g} per PBS; global_p_error "
             f"{stats['global_p_error']:.3g} per sample"]
    for param, n in stats["pbs_count_per_parameter"].items():
        lines.append(f"  parameters         {n} PBS with {param}")
    return lines


def measure(module, X, samples, progress=print):
    """Compile module to FHE (if not yet), generate keys, run `samples` rows of X
    encrypted; returns a dict of the figures (statistics, compile/keygen seconds, seconds
    per sample, agreement with simulate)."""
    if module._fhe is None:
        module.compile_fhe()
    stats = module.fhe_statistics()
    out = {"statistics": stats, "compile_seconds": module._fhe.compile_seconds,
           "keygen_seconds": None, "latency": [], "agree_integers": 0, "agree_predictions": 0}
    if samples <= 0:
        return out
    module.fhe_keygen()                          # once; cached afterwards
    out["keygen_seconds"] = module._fhe.keygen_seconds
    codes = module.quantize_input(X[:samples])
    want = module.quantized_forward(codes, fhe="simulate")
    for i in range(len(codes)):
        start = time.perf_counter()
        got = module.quantized_forward(codes[i:i + 1], fhe="execute")
        out["latency"].append(time.perf_counter() - start)
        same = bool(np.array_equal(got[0], want[i]))
        out["agree_integers"] += same
        pred = module.dequantize_output(got).argmax(axis=1)[0]
        out["agree_predictions"] += int(
            pred == module.dequantize_output(want[i:i + 1]).argmax(axis=1)[0])
        progress(f"  sample {i}: {out['latency'][-1]:.2f} s, "
                 f"{'equal to' if same else 'DIFFERENT from'} simulate")
    return out


RECORDED = ("Concrete-ML 1.9.0 on the same net (recorded in REFERENCE.md section 8, not "
            "measured here): 200 PBS, complexity 4.17e11, keys 2.47 + 0.98 GB, keygen 177 s, "
            "46-81 s per sample")


def run(args):
    """The command's body (args: samples, model, seed)."""
    from . import compile_qat_model, datasets, load
    from .fhe_lowering import concrete
    concrete()                                   # ImportError with the install line first
    start = time.perf_counter()
    if args.model:
        net = load(args.model)
        data = datasets.checkerboard(seed=args.seed)
        print(f"loaded {args.model}")
    else:
        net, data = tutorial_net(args.seed)
        print(f"trained the tutorial's pruned 3-bit QAT net (seed {args.seed}) in "
              f"{time.perf_counter() - start:.1f} s")
    X_train, X_test, _, y_test = data
    module = compile_qat_model(net, X_train)
    print(f"integer circuit: {module.max_bit_width}-bit widest value, simulate accuracy "
          f"{np.mean(module.predict(X_test, fhe='simulate') == y_test):.2%}")
    module.compile_fhe(show_progress=False)
    print(f"compiled to FHE in {module._fhe.compile_seconds:.1f} s")
    for line in describe(module.fhe_statistics()):
        print(line)
    print("key generation (once per compiled module)...", flush=True)
    print(f"  keygen {module.fhe_keygen():.1f} s")
    print(f"running {args.samples} test sample(s) encrypted:", flush=True)
    result = measure(module, X_test, args.samples, progress=lambda s: print(s, flush=True))
    lat = result["latency"]
    if lat:
        print(f"latency per sample: median {np.median(lat):.2f} s (min {min(lat):.2f}, max "
              f"{max(lat):.2f})")
    print(f"agreement with simulate: {result['agree_integers']}/{len(lat)} samples bit for "
          f"bit, {result['agree_predictions']}/{len(lat)} predictions")
    print(RECORDED)
    return 0 if result["agree_integers"] == len(lat) else 1


def add_command(commands, count):
    """Add the `fhe` subcommand to the argparse subparsers `commands`."""
    parser = commands.add_parser(
        "fhe", help="the tutorial's QAT net under real FHE (needs qatfhe[fhe])",
        description="Train the tutorial's pruned 3-bit QAT net (or load one), compile it to "
        "FHE with Concrete, print its statistics, the key generation time, the latency "
        "of each encrypted test sample and its agreement with fhe='simulate'.")
    parser.add_argument("--samples", type=count(0), default=2, metavar="N",
                        help="test samples to run encrypted (default 2; about a minute each "
                        "on a 2-core machine)")
    parser.add_argument("--model", default=None, metavar="FILE",
                        help="a trained QAT net saved with net.save (default: train the "
                        "tutorial's, seed --seed)")
    parser.add_argument("--seed", type=count(0), default=0)
    parser.set_defaults(run=run)
    return parser
