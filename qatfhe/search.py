"""Search an architecture family for the cheapest FHE circuits at full accuracy.

    front = search(family=Family(...), seeds=range(10), data="checkerboard", out="DIR",
                   jobs=2)                  # or executor=any concurrent.futures.Executor

Every candidate of the family (a fully connected QAT network: input quantizer, `depth`
hidden QuantLinear + QuantReLU layers of `width` neurons, a QuantLinear output; weight,
activation and input bit widths; optional per-neuron fan-in, A2Q accumulator budget and
rounding_threshold_bits) is trained once per seed and compiled to its integer circuit.  A
candidate scores the mean integer-circuit accuracy (fhe="simulate") over the seeds on the
test set, and, as the worst over its seeds (what any of its circuits may need): the
measured and worst-case max bit width, the number of table lookups and the FHE cost
(qatfhe.cost, Mops).  The Pareto front keeps the candidates no other beats on all of
accuracy (higher), cost and max bit width (lower); ties keep the first in family order.

Seeding: seed s draws the data (checkerboard noise), the initialisation and the shuffling
(`nn.Sequential(..., seed=s)`), as in qatfhe.experiments; an evaluation depends on nothing
else, so results are the same on any executor, process or machine.  Rounding options do
not change training: one trained network is compiled once per rounding_threshold_bits.

Files (with out=DIR): DIR/search.json records every finished evaluation as it arrives (an
interrupted search resumes from it: finished (candidate, seed) pairs are not run again);
DIR/modules/<candidate>-seed<s>.npz holds each compiled module (QuantizedModule.save);
DIR/frontier.json lists the front points (accuracy, accuracies per seed, max_bit_width,
worst_case_bit_width, n_lookups, cost, config, module = the file of the seed with the best
accuracy, relative to the JSON); DIR/frontier.md the table, DIR/frontier.png the plot
(matplotlib)."""
import concurrent.futures
import dataclasses
import hashlib
import inspect
import io
import itertools
import json
import os
import tempfile
import time

import numpy as np

__all__ = ["Family", "CHECKERBOARD", "search", "evaluate", "pareto_front", "markdown_table",
           "front_figure", "RayExecutor", "executor_for"]

FORMAT, VERSION = "qatfhe-search", 1
TRAINING_KEYS = ("epochs", "lr", "lr_schedule", "batch_size", "weight_decay", "init",
                 "restarts")
RESTART_STRIDE = 1_000_003     # restart r of seed s initialises from s + r * RESTART_STRIDE


def _tuple(values, name, check):
    values = tuple(values) if isinstance(values, (list, tuple, range)) else (values,)
    if not values:
        raise ValueError(f"{name} must hold at least one value")
    for v in values:
        check(v, name)
    return values


def _bits(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 2 <= v <= 16:
        raise ValueError(f"every {name} value must be an integer in [2, 16], got {v!r}")


def _optional_bits(v, name):
    if v is not None:
        _bits(v, name)


def _count(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"every {name} value must be an integer >= 1, got {v!r}")


def _optional_threshold(v, name):
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.number))
                          or not np.isfinite(v) or v <= 0):
        raise ValueError(f"every {name} value must be a finite number > 0 or None, got {v!r}")


def _optional_count(v, name):
    if v is not None:
        _count(v, name)


@dataclasses.dataclass(frozen=True)
class Family:
    """The candidates: every combination of the tuples below (None: option off).

    widths, depths: hidden neurons per layer and hidden layers; weight_bits, act_bits,
    input_bits: QuantLinear weights (CommonWeightQuant), QuantReLU codes and the input
    QuantIdentity (CommonActQuant); accumulator_bits: A2Q budget P of every QuantLinear
    (`accumulator_bit_width=P`, needs a qatfhe with accumulator-aware layers); fan_in:
    prune.fan_in(k) on every QuantLinear wider than k; rounding_threshold_bits: compile
    option; act_max: constant threshold T of the hidden QuantReLUs (codes 0..2^b - 1,
    scale T / (2^b - 1); None: learned, Uint8ActPerTensorFloat).  Training (shared by every
    candidate): epochs, lr, lr_schedule, batch_size, weight_decay (AdamW,
    qatfhe.experiments.train), init ("uniform": QuantLinear weights U(-1, 1) as the
    tutorial; "default": PyTorch's; "ladder": uniform, then the first hidden layer a
    staircase of steps on one random direction, see _ladder) and restarts: networks
    trained per seed, restart r initialised and shuffled from seed + r * RESTART_STRIDE on
    the seed's data, keeping the one whose integer circuit scores best on the training set
    (the test set is not looked at; ties keep the first).  The defaults are the recipe that
    reaches the checkerboard's ceiling with 16 lookups of at most 4 bits (README)."""

    widths: tuple = (8, 16, 32)
    depths: tuple = (1, 2)
    weight_bits: tuple = (2,)
    act_bits: tuple = (2,)
    input_bits: tuple = (3,)
    accumulator_bits: tuple = (None,)
    fan_in: tuple = (None,)
    rounding_threshold_bits: tuple = (None, 6, 5, 4)
    act_max: tuple = (1.0,)
    epochs: int = 10
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    batch_size: int = 16
    weight_decay: float = 0.0
    init: str = "ladder"
    restarts: int = 32

    def __post_init__(self):
        checks = {"widths": _count, "depths": _count, "weight_bits": _bits, "act_bits": _bits,
                  "input_bits": _bits, "accumulator_bits": _optional_bits,
                  "fan_in": _optional_count, "rounding_threshold_bits": _optional_bits,
                  "act_max": _optional_threshold}
        for name, check in checks.items():
            object.__setattr__(self, name, _tuple(getattr(self, name), name, check))
        if self.init not in ("uniform", "default", "ladder"):
            raise ValueError(f"init must be 'uniform', 'default' or 'ladder', got "
                             f"{self.init!r}")
        self.settings()                      # validates the training values
        _count(self.restarts, "restarts")
        if any(p is not None for p in self.accumulator_bits):
            _check_a2q()

    def settings(self):
        from .experiments import TrainSettings
        return TrainSettings(epochs=self.epochs, lr=self.lr, lr_schedule=self.lr_schedule,
                             batch_size=self.batch_size, weight_decay=self.weight_decay)

    def trainings(self):
        """The distinct trainings [config without rounding_threshold_bits], family order."""
        out = []
        for depth, width, wb, ab, ib, acc, fan, top in itertools.product(
                self.depths, self.widths, self.weight_bits, self.act_bits, self.input_bits,
                self.accumulator_bits, self.fan_in, self.act_max):
            out.append({"depth": depth, "width": width, "weight_bits": wb, "act_bits": ab,
                        "input_bits": ib, "accumulator_bits": acc, "fan_in": fan,
                        "act_max": None if top is None else float(top),
                        **{k: getattr(self, k) for k in TRAINING_KEYS}})
        return out

    def candidates(self):
        """Every candidate config (a dict), in family order."""
        return [{**t, "rounding_threshold_bits": r} for t in self.trainings()
                for r in self.rounding_threshold_bits]

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


CHECKERBOARD = Family()


def _check_a2q():
    from . import nn
    if "accumulator_bit_width" not in inspect.signature(nn.QuantLinear.__init__).parameters:
        raise ValueError("accumulator_bits needs nn.QuantLinear(accumulator_bit_width=P) "
                         "(accumulator-aware quantization), which this version of qatfhe "
                         "does not have; leave accumulator_bits at None")


# ------------------------------------------------------------------ one evaluation

def _data(data, seed):
    """(X_train, X_test, y_train, y_test) for a seed."""
    from . import datasets
    if isinstance(data, str):
        if data != "checkerboard":
            raise ValueError(f"data must be 'checkerboard', a tuple (X_train, X_test, "
                             f"y_train, y_test) or a function of the seed, got {data!r}")
        return datasets.checkerboard(seed=seed)
    if callable(data):
        data = data(seed)
    if not isinstance(data, (tuple, list)) or len(data) != 4:
        raise TypeError("data must be a tuple (X_train, X_test, y_train, y_test)")
    return tuple(data)


def _relu(config):
    """The hidden QuantReLU: learned threshold (Uint8ActPerTensorFloat) or, with
    config["act_max"] = T, a constant one (codes 0..2^b - 1, scale T / (2^b - 1))."""
    from . import nn
    if config.get("act_max") is None:
        return nn.QuantReLU(bit_width=config["act_bits"])
    return nn.QuantReLU(act_quant=nn.CommonActQuant, bit_width=config["act_bits"], signed=False,
                        narrow_range=False, scaling_const=float(config["act_max"]))


def build_net(config, n_features, n_classes, seed):
    """The candidate's network (module docstring), initialised from seed."""
    from . import nn, prune
    weights = dict(bias=True, weight_quant=nn.CommonWeightQuant,
                   weight_bit_width=config["weight_bits"], bias_quant=None)
    if config.get("accumulator_bits") is not None:
        _check_a2q()
        weights["accumulator_bit_width"] = config["accumulator_bits"]
    layers = [nn.QuantIdentity(act_quant=nn.CommonActQuant, bit_width=config["input_bits"])]
    previous = n_features
    for _ in range(config["depth"]):
        layers += [nn.QuantLinear(previous, config["width"], **weights), _relu(config)]
        previous = config["width"]
    layers.append(nn.QuantLinear(previous, n_classes, **weights))
    net = nn.Sequential(*layers, seed=seed)
    linears = [layer for layer in net if isinstance(layer, nn.QuantLinear)]
    if config.get("init", "uniform") in ("uniform", "ladder"):
        for layer in linears:
            nn.init.uniform_(layer.weight, -1.0, 1.0)
    if config.get("fan_in") is not None:
        for layer in linears:
            if layer.in_features > config["fan_in"]:
                prune.fan_in(layer, config["fan_in"])
    return net


def _const_quantize(values, spec):
    """values fake-quantized by a constant-threshold quantizer; unchanged otherwise."""
    if spec.kind != "const":
        return values
    scale = spec.scaling_const / spec.int_threshold
    return np.clip(np.round(values / scale), spec.qmin, spec.qmax) * scale


def _ladder(net, X):
    """The "ladder" initialisation of the first hidden layer: every neuron starts on one
    direction (its first neuron's uniform draw scaled to a largest entry of 1 and
    quantized, so the seed picks it), with biases at the midpoints between consecutive
    values of the quantized training inputs' projection on it: a staircase of steps on the
    input grid along that direction, which training then moves.  Restarts draw new
    directions; later layers keep the uniform draw."""
    from . import nn
    layer = next(layer for layer in net if isinstance(layer, nn.QuantLinear))
    weight = np.array(layer.weight)
    direction = weight[0] / max(float(np.abs(weight[0]).max()), 1e-12)
    X = np.asarray(X, np.float64)
    if isinstance(net[0], nn.QuantIdentity):
        X = _const_quantize(X, net[0].act_quant)
    direction = _const_quantize(direction, layer.weight_quant)
    values = np.unique(np.round(X @ direction, 9))
    # the midpoints between consecutive projections; evenly picked if there are more of
    # them than neurons, repeated if fewer
    gaps = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    n = layer.out_features
    pick = (np.round(np.linspace(0, len(gaps) - 1, n)).astype(int) if len(gaps) > n
            else np.arange(n) % len(gaps))
    steps = np.sort(gaps[pick])
    layer.weight = np.repeat(direction[None, :], layer.out_features, 0).astype(np.float32)
    layer.bias = (-steps).astype(np.float32)
    if layer.weight_norm is not None:                 # A2Q: g starts at ||v||_1, as built
        layer.weight_norm = np.abs(np.array(layer.weight)).sum(1).astype(np.float32)


def initial_net(config, X_train, n_classes, seed):
    """build_net, then the ladder initialisation on X_train when config["init"] says so:
    the network a restart trains."""
    net = build_net(config, X_train.shape[1], n_classes, seed)
    if config.get("init") == "ladder":
        _ladder(net, X_train)
    return net


def evaluate(training, seed, data="checkerboard", rounding=(None,)):
    """Train one candidate network (training: a config without rounding) on seed's data and
    compile it once per rounding_threshold_bits.  Returns [result dict per rounding]: the
    metrics and the compiled module's file bytes ("module_bytes").  Module-level, so any
    executor can run it."""
    from . import _checks
    from .compile import compile_qat_model
    from .experiments import TrainSettings, train
    start = time.perf_counter()
    X_train, X_test, y_train, y_test = _data(data, seed)
    X_train = _checks.samples(X_train, "X_train").reshape(len(X_train), -1)
    X_test = _checks.samples(X_test, "X_test").reshape(len(X_test), -1)
    y_train, y_test = np.asarray(y_train, np.int64), np.asarray(y_test, np.int64)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    settings = TrainSettings(**{k: training[k] for k in TRAINING_KEYS
                                if k not in ("init", "restarts")})
    best = None
    for r in range(training.get("restarts", 1)):
        net = initial_net(training, X_train, max(n_classes, 2), seed + r * RESTART_STRIDE)
        train(net, X_train, y_train, settings)
        net.unprune()
        score = np.mean(compile_qat_model(net, X_train).predict(X_train, fhe="simulate")
                        == y_train) if training.get("restarts", 1) > 1 else 0.0
        if best is None or score > best[0]:
            best = (score, net)
    net = best[1]
    train_seconds = time.perf_counter() - start
    out = []
    for r in rounding:
        module = compile_qat_model(net, X_train, rounding_threshold_bits=r)
        predicted = module.predict(X_test, fhe="simulate")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "module.npz")
            module.save(path)
            with open(path, "rb") as handle:
                blob = handle.read()
        out.append({"seed": int(seed), "accuracy": float(np.mean(predicted == y_test)),
                    "max_bit_width": int(module.max_bit_width),
                    "worst_case_bit_width": int(module.worst_case_bit_width),
                    "n_lookups": int(module.n_lookups), "cost": float(module.fhe_cost()),
                    "train_seconds": train_seconds, "module_bytes": blob})
    return out


# ------------------------------------------------------------------ executors

class RayExecutor(concurrent.futures.Executor):
    """A concurrent.futures.Executor on Ray tasks (ray.init(address)); untested here: Ray
    is not installed on the machine this was written on."""

    def __init__(self, address=None):
        try:
            import ray
        except ImportError:
            raise ImportError("--ray needs Ray: pip install ray") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address)
        self._remote = {}

    def submit(self, fn, *args, **kwargs):
        remote = self._remote.setdefault(fn, self._ray.remote(fn))
        return remote.remote(*args, **kwargs).future()

    def shutdown(self, wait=True, *, cancel_futures=False):
        pass


def executor_for(jobs=1, scheduler=None, ray=None):
    """(executor, owned): a Dask executor on the scheduler at ADDRESS, a Ray one, local
    processes (jobs > 1) or None (run in this process).  owned: whether to shut it down."""
    if scheduler is not None:
        try:
            import distributed
        except ImportError:
            raise ImportError("--scheduler needs Dask: pip install distributed (or pip "
                              "install 'qatfhe[distributed]')") from None
        client = distributed.Client(scheduler)
        return client.get_executor(), client
    if ray is not None:
        return RayExecutor(None if ray == "auto" else ray), None
    if jobs > 1:
        import multiprocessing
        return concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn")), True
    return None, None


# ------------------------------------------------------------------ the search

def _key(config):
    text = json.dumps(config, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _data_id(data):
    if isinstance(data, str):
        return data
    if callable(data):
        return f"{getattr(data, '__module__', '?')}.{getattr(data, '__qualname__', '?')}"
    digest = hashlib.sha1()
    for arr in data:
        arr = np.ascontiguousarray(arr)
        digest.update(str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes())
    return "arrays:" + digest.hexdigest()[:16]


def _load_state(path, header):
    if not os.path.exists(path):
        return []
    try:
        with open(path) as handle:
            state = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable search record: {exc}") from None
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        raise ValueError(f"{path} is not a qatfhe search record (format {FORMAT} v{VERSION})")
    if state.get("data") != header["data"]:
        raise ValueError(f"{path} records a search on other data ({state.get('data')!r}, not "
                         f"{header['data']!r}): use another --out directory")
    return state.get("evaluations", [])


def _save_state(path, header, evaluations):
    from .experiments import write_atomic
    body = {**header, "evaluations": evaluations}
    write_atomic(path, json.dumps(body, indent=0) + "\n")


def _summaries(candidates, seeds, done):
    """One summary per candidate all of whose seeds are finished."""
    rows = []
    for index, config in enumerate(candidates):
        key = _key(config)
        runs = [done.get((key, s)) for s in seeds]
        if any(r is None for r in runs):
            continue
        accuracies = [r["accuracy"] for r in runs]
        best = max(range(len(runs)), key=lambda i: (accuracies[i], -i))
        rows.append({"index": index, "key": key, "config": config,
                     "accuracy": float(np.mean(accuracies)), "accuracies": accuracies,
                     "seeds": list(seeds),
                     "max_bit_width": max(r["max_bit_width"] for r in runs),
                     "worst_case_bit_width": max(r["worst_case_bit_width"] for r in runs),
                     "n_lookups": max(r["n_lookups"] for r in runs),
                     "cost": max(r["cost"] for r in runs),
                     "module": runs[best].get("module"), "module_seed": runs[best]["seed"]})
    return rows


def pareto_front(rows):
    """Rows no other row beats: higher accuracy, lower cost and max_bit_width (one at least
    strictly); identical rows keep the first.  Sorted by cost, then accuracy (descending)."""
    def key(r):
        return (-round(r["accuracy"], 12), r["cost"], r["max_bit_width"])

    front = []
    for i, r in enumerate(rows):
        ki = key(r)
        dominated = False
        for j, q in enumerate(rows):
            kj = key(q)
            if all(a <= b for a, b in zip(kj, ki)) and (kj != ki or j < i):
                dominated = True
                break
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r["cost"], -r["accuracy"], r["index"]))


def search(family=CHECKERBOARD, seeds=range(10), data="checkerboard", out=None, jobs=1,
           executor=None, progress=False, log=None):
    """Train and compile every candidate of family on every seed; returns the Pareto front
    (list of dicts, module docstring).  executor: any concurrent.futures.Executor (default:
    jobs local processes, or this process when jobs == 1).  out: directory for the record,
    modules, frontier.json, table and plot (None: nothing written, no resume)."""
    from . import _checks
    if not isinstance(family, Family):
        raise TypeError(f"family must be a qatfhe.search.Family, got {type(family).__name__}")
    seeds = [_checks.seed(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, at least one, got {seeds}")
    jobs = _checks.positive_int(jobs, "jobs")
    header = {"format": FORMAT, "version": VERSION, "data": _data_id(data)}
    state_path = modules = None
    evaluations = []
    if out is not None:
        os.makedirs(os.path.join(out, "modules"), exist_ok=True)
        state_path, modules = os.path.join(out, "search.json"), os.path.join(out, "modules")
        evaluations = _load_state(state_path, header)
    done = {(e["key"], e["seed"]): e for e in evaluations}
    candidates = family.candidates()
    rounding = list(family.rounding_threshold_bits)
    tasks = []
    for training in family.trainings():
        keys = [_key({**training, "rounding_threshold_bits": r}) for r in rounding]
        for s in seeds:
            if any((k, s) not in done for k in keys):
                tasks.append((training, s, keys))
    say = log or (lambda text: None)
    say(f"{len(candidates)} candidates x {len(seeds)} seeds: {len(tasks)} trainings to run"
        f" ({len(evaluations)} evaluations already recorded)")

    def record(task, results):
        training, s, keys = task
        for key, r, rb in zip(keys, results, rounding):
            r = dict(r)
            blob = r.pop("module_bytes")
            if modules is not None:
                name = f"{key}-seed{s}.npz"
                with open(os.path.join(modules, name), "wb") as handle:
                    handle.write(blob)
                r["module"] = f"modules/{name}"
            r["key"] = key
            done[(key, s)] = r
            evaluations.append(r)
        if state_path is not None:
            _save_state(state_path, header, evaluations)

    bar = _bar(len(tasks), progress)
    owned = False
    if executor is None and jobs > 1 and len(tasks) > 1:
        executor, owned = executor_for(jobs)
    try:
        if executor is None:
            for task in tasks:
                record(task, evaluate(task[0], task[1], data, rounding))
                bar.update(1)
        else:
            futures = {executor.submit(evaluate, t[0], t[1], data, rounding): t for t in tasks}
            for future in concurrent.futures.as_completed(futures):
                record(futures[future], future.result())
                bar.update(1)
    finally:
        bar.close()
        if owned:
            executor.shutdown()
    rows = _summaries(candidates, seeds, done)
    front = pareto_front(rows)
    if out is not None:
        _write_outputs(out, front, rows, family, seeds)
    return front


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _bar(total, progress):
    if not progress:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="search", unit="training", dynamic_ncols=True)


# ------------------------------------------------------------------ reporting

FRONT_FIELDS = ("accuracy", "accuracies", "seeds", "max_bit_width", "worst_case_bit_width",
                "n_lookups", "cost", "config", "module", "module_seed")


def _describe(config):
    parts = [f"{config['depth']}x{config['width']}", f"w{config['weight_bits']}",
             f"a{config['act_bits']}", f"in{config['input_bits']}"]
    if config.get("accumulator_bits") is not None:
        parts.append(f"acc{config['accumulator_bits']}")
    if config.get("fan_in") is not None:
        parts.append(f"fan-in {config['fan_in']}")
    if config.get("act_max") is not None:
        parts.append(f"relu max {config['act_max']:g}")
    if config.get("rounding_threshold_bits") is not None:
        parts.append(f"round {config['rounding_threshold_bits']}")
    return " ".join(parts)


def markdown_table(front):
    """The front as a Markdown table, cheapest first."""
    from .cost import estimated_seconds
    lines = ["| candidate | accuracy (mean) | min..max over seeds | max bits | worst-case bits "
             "| lookups | cost (Mops) | FHE s/sample, fit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in front:
        lines.append(f"| {_describe(r['config'])} | {100 * r['accuracy']:.2f}% | "
                     f"{100 * min(r['accuracies']):.1f}..{100 * max(r['accuracies']):.1f}% | "
                     f"{r['max_bit_width']} | {r['worst_case_bit_width']} | {r['n_lookups']} | "
                     f"{r['cost']:.4g} | {estimated_seconds(r['cost']):.3g} |")
    return "\n".join(lines)


def front_figure(rows, front):
    """Accuracy against cost (log scale) of every candidate, the front joined, colours by
    max bit width."""
    from .plots import _figure
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    bits = [r["max_bit_width"] for r in rows]
    points = ax.scatter([r["cost"] for r in rows], [100 * r["accuracy"] for r in rows],
                        c=bits, cmap="viridis", s=18)
    ax.plot([r["cost"] for r in front], [100 * r["accuracy"] for r in front], "k.-", lw=0.8,
            label="Pareto front")
    fig.colorbar(points, ax=ax, label="max bit width")
    ax.set(xscale="log", xlabel="FHE cost (Mops, qatfhe.cost)",
           ylabel="integer-circuit accuracy, mean over seeds (%)",
           title=f"{len(rows)} candidates, {len(front)} on the front")
    ax.legend(loc="lower right")
    return fig


def _write_outputs(out, front, rows, family, seeds):
    from . import plots
    from .experiments import write_atomic
    points = [{k: r[k] for k in FRONT_FIELDS} for r in front]
    body = json.dumps(points, indent=1) + "\n"
    write_atomic(os.path.join(out, "frontier.json"), body)
    write_atomic(os.path.join(out, "frontier.md"), markdown_table(front) + "\n")
    if plots.available():
        write_atomic(os.path.join(out, "frontier.png"), plots.png(front_figure(rows, front)))


# ------------------------------------------------------------------ the command

def _float_list(text):
    import argparse
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(None if part.lower() == "none" else float(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers (or none) separated by "
                                             f"commas, got {text!r}") from None
    return tuple(values)


def _int_list(text):
    import argparse
    values = []
    for part in text.split(","):
        part = part.strip()
        if part.lower() == "none":
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected integers (or none) separated by "
                                             f"commas, got {text!r}") from None
    return tuple(values)


def add_command(commands):
    """Add `search` to the qatfhe command's subparsers."""
    d = CHECKERBOARD
    p = commands.add_parser(
        "search", help="cheapest FHE circuits at full accuracy (Pareto front)",
        description="Train and compile every candidate of an architecture family on every "
        "seed and write the Pareto front of integer-circuit accuracy against FHE cost and max "
        "bit width (frontier.json, frontier.md, frontier.png, one module per front point) "
        "into --out. With no other option: the tutorial's checkerboard over 10 seeds. An "
        "interrupted search resumes from --out/search.json.")
    p.add_argument("--out", default="search_out", metavar="DIR",
                   help="output directory (default ./search_out)")
    p.add_argument("--seeds", type=int, default=10, metavar="N", help="seeds 0..N-1 (10)")
    p.add_argument("--data", metavar="FILE.npz", default=None,
                   help="X_train, X_test, y_train, y_test arrays (default: the checkerboard, "
                   "its noise drawn from each seed)")
    lists = (("--widths", "widths"), ("--depths", "depths"), ("--weight-bits", "weight_bits"),
             ("--act-bits", "act_bits"), ("--input-bits", "input_bits"),
             ("--accumulator-bits", "accumulator_bits"), ("--fan-in", "fan_in"),
             ("--rounding-bits", "rounding_threshold_bits"))
    for flag, name in lists:
        default = ",".join("none" if v is None else str(v) for v in getattr(d, name))
        p.add_argument(flag, dest=name, type=_int_list, default=getattr(d, name),
                       metavar="LIST", help=f"comma-separated values, none = off "
                       f"(default {default})")
    p.add_argument("--act-max", dest="act_max", type=_float_list, default=d.act_max,
                   metavar="LIST", help="constant threshold of the hidden QuantReLUs, none = "
                   "learned (Uint8ActPerTensorFloat); comma-separated (default "
                   + ",".join("none" if v is None else f"{v:g}" for v in d.act_max) + ")")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--init", choices=("uniform", "default", "ladder"), default=d.init,
                   help="uniform: weights U(-1, 1) as the tutorial; default: PyTorch's; "
                   "ladder: the first hidden layer a staircase on one random direction "
                   f"(default {d.init})")
    p.add_argument("--restarts", type=int, default=d.restarts, metavar="R",
                   help=f"networks trained per seed, the best on the training set kept "
                   f"(default {d.restarts})")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=int, default=None, metavar="J",
                       help="local worker processes (default: one per core)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask cluster at ADDRESS (tcp://host:8786)")
    where.add_argument("--ray", metavar="ADDRESS", nargs="?", const="auto",
                       help="run on Ray (ray.init(ADDRESS); untested)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_command)
    return p


def _load_data(path):
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("X_train", "X_test", "y_train", "y_test") if k not in f]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing}; expected X_train, X_test, "
                             f"y_train, y_test")
        return tuple(np.array(f[k]) for k in ("X_train", "X_test", "y_train", "y_test"))


def _cpu_seconds():
    """User + system CPU seconds of this process and its finished child processes."""
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def run_command(args):
    import sys
    from . import plots
    names = ("widths", "depths", "weight_bits", "act_bits", "input_bits", "accumulator_bits",
             "fan_in", "rounding_threshold_bits", "act_max", "epochs", "lr", "lr_schedule",
             "batch_size", "weight_decay", "init", "restarts")
    try:
        family = Family(**{k: getattr(args, k) for k in names})
        data = "checkerboard" if args.data is None else _load_data(args.data)
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    except (ValueError, TypeError, OSError) as exc:
        print(f"qatfhe search: error: {exc}", file=sys.stderr)
        return 2
    jobs = args.jobs or max(1, os.cpu_count() or 1)
    executor, owner = executor_for(jobs, args.scheduler, args.ray)
    where = (f"Dask scheduler {args.scheduler}" if args.scheduler else
             "Ray" if args.ray else f"{jobs} local process(es)")
    print(f"qatfhe search: {len(family.candidates())} candidates x {args.seeds} seeds on "
          f"{where}, writing to {args.out}", flush=True)
    start, cpu = time.perf_counter(), _cpu_seconds()
    try:
        front = search(family, range(args.seeds), data, args.out, jobs=jobs, executor=executor,
                       progress=not args.no_progress, log=print)
    finally:
        if owner is True:
            executor.shutdown()
        elif owner is not None:
            owner.close()
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    print()
    print(markdown_table(front))
    print()
    written = ["frontier.json", "frontier.md"] + (["frontier.png"] if plots.available() else [])
    print(f"wrote {', '.join(written)} and {len(front)} front module(s) to {args.out} "
          f"({seconds:.1f} s, {cpu:.1f} s of CPU time in this process and its local workers)")
    return 0


# ------------------------------------------------------------------ the tutorial's fourth table

# What `python -m qatfhe tutorial` searches (a few candidates, so the tutorial stays quick):
# the 2-layer nets the full search puts on its front near the ceiling.
TUTORIAL_FAMILY = Family(widths=(32,), depths=(2,), weight_bits=(3,), act_bits=(3,),
                         rounding_threshold_bits=(None, 6, 5, 4), act_max=(None,), lr=2e-3,
                         batch_size=1, weight_decay=0.01, init="uniform", restarts=1)


def cheapest_keeping(front, accuracy):
    """The cheapest front point whose mean accuracy is at least `accuracy`, or None."""
    keep = [p for p in front if p["accuracy"] >= accuracy - 1e-12]
    return min(keep, key=lambda p: (p["cost"], -p["accuracy"])) if keep else None


def tutorial_table(qat_means, qat_runs, point, latency=None):
    """Markdown: the cheapest circuit that keeps the QAT net's accuracy, next to it.
    qat_means: the qat_pruned experiment's means; latency: {"qat": s, "point": s} or None."""
    if point is None:
        return "no searched circuit keeps the QAT net's accuracy"
    qat_bits = max(r["accumulator_bits"] for r in qat_runs)
    qat_lookups = max(r["n_lookups"] for r in qat_runs)
    qat_cost = max(r["cost"] for r in qat_runs)
    rows = [("integer-circuit accuracy, mean", f"{100 * qat_means['integer_accuracy']:.2f}%",
             f"{100 * point['accuracy']:.2f}%"),
            ("max bit width (widest run)", str(qat_bits), str(point["max_bit_width"])),
            ("table lookups per sample", str(qat_lookups), str(point["n_lookups"])),
            ("FHE cost, Mops (qatfhe.cost; widest run)", f"{qat_cost:.4g}",
             f"{point['cost']:.4g}")]
    if latency:
        rows.append(("measured FHE s/sample (concrete)", f"{latency['qat']:.3g}",
                     f"{latency['point']:.3g}"))
    lines = [f"| {len(qat_runs)} runs | tutorial QAT net (100-100, pruned to 20) | cheapest "
             f"searched circuit: {_describe(point['config'])} |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    ratio = qat_cost / point["cost"]
    return "\n".join(lines) + f"\n\nFHE cost {ratio:.1f}x lower at the same or better accuracy."
