"""The tutorial's figures, drawn with matplotlib when it is installed (the `plot` extra).

    dataset_figure(X, y)                      the checkerboard points by class
    boundaries_figure(boundaries, X, y)       decision regions of run 0 (from
                                              experiments ... boundaries=True), with points
    bits_figure(results)                      accumulator bits of every run per configuration
    png(fig)                                  the PNG bytes of a figure
    save(fig, path)                           write a PNG atomically

Figures are built on matplotlib.figure.Figure without pyplot, so no display or GUI
backend is needed; in a notebook show them with IPython.display.Image(png(fig))."""
import importlib.util
import io

import numpy as np

from . import experiments

CLASS_COLOURS = ("#3b6fb6", "#e07b39")   # class 0, class 1


def available():
    """True when matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib "
                          "(or pip install 'qatfhe[plot]')") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _scatter(ax, X, y, size, alpha=1.0):
    X, y = np.asarray(X), np.asarray(y)
    for c in (0, 1):
        ax.scatter(X[y == c, 0], X[y == c, 1], s=size, c=CLASS_COLOURS[c], alpha=alpha,
                   linewidths=0, label=f"class {c}")


def dataset_figure(X, y, title="Checkerboard data set"):
    """Scatter of points X (m, 2) coloured by label y (m,)."""
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    _scatter(ax, X, y, size=2)
    for b in (1 / 6, 1 / 2, 5 / 6):
        ax.axvline(b, color="grey", lw=0.5)
        ax.axhline(b, color="grey", lw=0.5)
    ax.set(title=f"{title} ({len(np.asarray(y))} points)", xlabel="x", ylabel="y",
           aspect="equal")
    ax.legend(loc="upper right", markerscale=4, framealpha=0.9)
    return fig


def boundaries_figure(boundaries, X=None, y=None, accuracies=None):
    """One panel per decision region: boundaries {title: (res, res) class grid on
    experiments.BOUNDARY_GRID}; X, y (test points) drawn on top; accuracies {title: float}
    added to the titles."""
    from matplotlib.colors import ListedColormap
    if not boundaries:
        raise ValueError("boundaries is empty: run an experiment with boundaries=True")
    lo, hi = float(experiments.BOUNDARY_GRID.min()), float(experiments.BOUNDARY_GRID.max())
    fig = _figure(4.2 * len(boundaries), 4.9)
    cmap = ListedColormap(["#b9cce8", "#f3cfb3"])
    for k, (title, grid) in enumerate(boundaries.items()):
        ax = fig.add_subplot(1, len(boundaries), k + 1)
        ax.imshow(np.asarray(grid), origin="lower", extent=(lo, hi, lo, hi), cmap=cmap,
                  vmin=0, vmax=1, interpolation="nearest")
        if X is not None and y is not None:
            _scatter(ax, X, y, size=6)
        if accuracies and title in accuracies:
            title = f"{title}\ntest accuracy {accuracies[title]:.1%}"
        ax.set(title=title, xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
    return fig


def bits_figure(results):
    """Accumulator bits of every run (dots), their mean (bar) and the tutorial's mean
    (cross), for every configuration of results {name: ExperimentResult}."""
    labels = {"ptq_by_width": "PTQ\n{} hidden", "ptq_pruned": "PTQ pruned\n{} non-zero",
              "qat_pruned": "QAT pruned\n{} non-zero"}
    columns = [(name, config) for name, result in results.items() for config in result.configs]
    fig = _figure(max(5.0, 1.3 * len(columns) + 1), 4.2)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)   # horizontal jitter only, to see overlapping runs
    for k, (name, config) in enumerate(columns):
        bits = np.asarray(results[name].values(config, "accumulator_bits"), dtype=float)
        ax.scatter(k + rng.uniform(-0.15, 0.15, len(bits)), bits, s=18, color="#3b6fb6",
                   alpha=0.7, label="one run" if k == 0 else None)
        ax.hlines(bits.mean(), k - 0.3, k + 0.3, color="#3b6fb6", lw=2,
                  label="mean (qatfhe)" if k == 0 else None)
        reference = experiments.TUTORIAL.get(name, {}).get(config, {}).get("accumulator_bits")
        if reference is not None:
            ax.scatter([k], [reference], marker="x", s=60, color="#c0392b", zorder=3,
                       label="tutorial" if k == 0 else None)
    ax.set_xticks(range(len(columns)),
                  [labels.get(name, name + " {}").format(config) for name, config in columns])
    ax.set(ylabel="accumulator bits", title="Accumulator bit width per run")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize="small")
    return fig


def png(fig):
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def save(fig, path):
    """Write fig to path as a PNG, atomically (experiments.write_atomic)."""
    return experiments.write_atomic(path, png(fig))
