"""The tutorial architecture (2-100-100-2, 3 bits) with accumulator_bit_width=P on every
QuantLinear, over seeded runs (qatfhe.a2q.tutorial_experiment):

    python examples/a2q_tutorial.py [--bits 7] [--runs 10] [--jobs 2] [--bound split]
                                    [--output-bits same|none|P] [--rounding trunc|round]
                                    [--pretrain-epochs E] [--relax all|hidden]
                                    [--out a2q.json]

Prints per run the integer-circuit accuracy on the 500 test points, the measured and the
worst-case (exhaustive over the 49 input codes) bit widths, then the mean."""
import argparse
import json
import sys

from qatfhe import a2q


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=7)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--tighten-epochs", type=int, default=6)
    parser.add_argument("--output-bits", default="same",
                        help='budget of the last QuantLinear: "same" (default), "none" or P')
    parser.add_argument("--bound", choices=("split", "l1"), default="split",
                        help="A2Q's proven bound (qatfhe.a2q): split (default) or l1 (Brevitas)")
    parser.add_argument("--rounding", choices=("trunc", "round"), default="trunc",
                        help="A2Q codes toward zero (default, Brevitas) or to nearest")
    parser.add_argument("--pretrain-epochs", type=int, default=0, metavar="E",
                        help="epochs of the same net without budgets first (A2Q+'s start)")
    parser.add_argument("--relax", choices=("all", "hidden"), default="all",
                        help="budgets relaxed then tightened during training: all (default) "
                             "or the hidden layers only (the last keeps its budget throughout)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = a2q.tutorial_experiment(range(args.runs), jobs=args.jobs,
                                     accumulator_bits=args.bits, epochs=args.epochs,
                                     tighten_epochs=args.tighten_epochs, bound=args.bound,
                                     rounding=args.rounding,
                                     pretrain_epochs=args.pretrain_epochs,
                                     relax=args.relax,
                                     output_bits=(None if args.output_bits == "none" else
                                                  args.output_bits if args.output_bits == "same"
                                                  else int(args.output_bits)))
    for r in result["runs"]:
        print(f"seed {r['seed']}: accuracy {r['accuracy']:.1%}  max bit width "
              f"{r['max_bit_width']}  worst case {r['worst_case_bit_width']} "
              f"({r['worst_case_method']}; table-lookup inputs {r['lookup_input_worst_case_bits']})"
              f"  circuit == fake-quant: {r['agree']}")
    print(f"mean accuracy {result['mean_accuracy']:.2%}; worst case at most "
          f"{result['max_worst_case_bit_width']} bits")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
