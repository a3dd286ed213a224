"""A sweep's summary: accuracy and interval coverage overall and binned, plots, and report.md.

Metrics (same definitions everywhere, recomputable from the shards):
- M_vir, r_s: error in dex, log10(pred / true); ellipticity: pred - true. For each: bias (mean error),
  median |error| and rmse.
- coverage_68 / coverage_95: fraction of truths inside the calibrated [p16, p84] / [p2_5, p97_5]
  intervals. Null when mc_samples = 1 (a point estimate has no interval).
- classification: accuracy over maps with a scenario ("none", no detectable substructure, counts as
  wrong there), the share of smooth hosts reported as "none", mean predictive entropy.
- inside_training_domain: the share of maps whose inputs and estimates lie where the model was trained
  (outside it the network extrapolates and its intervals are not calibrated).
"""

from __future__ import annotations

import io
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from lensing.scenarios import CLASS_NAMES, NO_SUBSTRUCTURE

from .sweep_config import SweepConfig
from .sweep_store import SweepStore

TARGETS = {"M_vir": "dex", "r_s": "dex", "ellipticity": "abs"}  # regression targets and their error unit
AXIS_LABELS = {"M_vir": r"true $M_\mathrm{vir}$ [$M_\odot$]", "r_s": r"true $r_s$ [kpc]", "ellipticity": "true e"}
NOMINAL = {"68": 0.6827, "95": 0.9545}
# A region under-covers when its coverage falls this far below nominal (the model's goals: within 5 points
# at 68 %, 3 at 95 %), or two binomial standard errors when the region is too small for that to be resolved.
COVERAGE_TOLERANCE = {"68": 0.05, "95": 0.03}
N_BINS = 4
PLOTS = ("errors.png", "coverage.png", "confusion.png")
MAX_SCATTER_POINTS = 5_000  # dots per panel of errors.png (its binned medians use every map)


def _float(value: float) -> float | None:
    """JSON-safe float: None for NaN (an empty bin)."""
    return None if value is None or not math.isfinite(value) else float(value)


def errors(columns: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Per-map error of one target in its unit (dex for M_vir and r_s)."""
    pred, true = columns[f"pred_{name}"], columns[f"true_{name}"]
    return np.log10(pred / true) if TARGETS[name] == "dex" else pred - true


def metrics(columns: dict[str, np.ndarray], has_uncertainty: bool) -> dict:
    """Accuracy, coverage and classification metrics of a set of rows."""
    n = int(columns["map_index"].size)
    result: dict = {"n": n}
    for name, unit in TARGETS.items():
        err = errors(columns, name)
        true = columns[f"true_{name}"]
        entry = {
            "unit": unit,
            "bias": _float(err.mean()) if n else None,
            "median_abs_error": _float(np.median(np.abs(err))) if n else None,
            "rmse": _float(math.sqrt(np.mean(err**2))) if n else None,
            "coverage_68": None,
            "coverage_95": None,
        }
        if has_uncertainty and n:
            for level, low, high in (("68", "p16", "p84"), ("95", "p2_5", "p97_5")):
                inside = (columns[f"pred_{name}_{low}"] <= true) & (true <= columns[f"pred_{name}_{high}"])
                entry[f"coverage_{level}"] = float(inside.mean())
        result[name] = entry
    labelled = columns["scenario"] != NO_SUBSTRUCTURE
    result["n_with_scenario"] = int(labelled.sum())
    result["classification_accuracy"] = (
        float((columns["predicted_class"][labelled] == columns["scenario"][labelled]).mean())
        if labelled.any() else None
    )
    result["none_rate_on_smooth"] = (
        float((columns["predicted_class"][~labelled] == NO_SUBSTRUCTURE).mean()) if (~labelled).any() else None
    )
    result["mean_entropy"] = _float(columns["entropy"].mean()) if n else None
    result["inside_training_domain"] = _float(columns["inside_training_domain"].mean()) if n else None
    return result


def _numeric_bins(values: np.ndarray, bounds: tuple[float, float], log: bool) -> list[tuple[float, float, np.ndarray]]:
    """N_BINS equal bins over the swept range (log-spaced when `log`); the top edge is inclusive."""
    low, high = bounds
    if low == high:
        return [(low, high, np.ones(values.size, bool))]
    edges = np.geomspace(low, high, N_BINS + 1) if log else np.linspace(low, high, N_BINS + 1)
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, N_BINS - 1)
    return [(float(edges[i]), float(edges[i + 1]), which == i) for i in range(N_BINS)]


def _subset(columns: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[mask] for key, value in columns.items()}


def confusion_matrix(columns: dict[str, np.ndarray], true_labels: list[str]) -> list[list[int]]:
    """Counts, rows = true scenario (config order, 'none' included), columns = predicted CDM/WDM/SIDM/none."""
    return [
        [int(((columns["scenario"] == t) & (columns["predicted_class"] == p)).sum()) for p in CLASS_NAMES]
        for t in true_labels
    ]


def region_label(key: str, entry: dict) -> str:
    """'M_vir in [1e+11, 3.16e+11]', 'scenario CDM', 'noise_sigma 0.02'."""
    return f"{key} in [{entry['low']:.3g}, {entry['high']:.3g}]" if "low" in entry else f"{key} {entry['value']}"


def under_covering(binned: dict[str, list[dict]]) -> list[dict]:
    """The regions whose 68 % or 95 % intervals cover clearly less than nominal, per parameter."""
    flagged = []
    for key, entries in binned.items():
        for entry in entries:
            for name in TARGETS:
                for level, nominal in NOMINAL.items():
                    coverage = entry[name][f"coverage_{level}"]
                    if coverage is None or not entry["n"]:
                        continue
                    allowed = max(COVERAGE_TOLERANCE[level], 2 * math.sqrt(nominal * (1 - nominal) / entry["n"]))
                    if coverage < nominal - allowed:
                        flagged.append({"region": region_label(key, entry), "parameter": name, "level": level,
                                        "coverage": coverage, "nominal": nominal, "n": entry["n"]})
    return flagged


def table_columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def summarize(table: pa.Table, config: SweepConfig, model: dict, failed: list[dict]) -> dict:
    """summary.json: the run's completeness, overall metrics, binned metrics and the confusion matrix."""
    columns = table_columns(table)
    has_uncertainty = config.mc_samples > 1
    box = config.box
    binned: dict[str, list[dict]] = {}
    for key, column, bounds, log in (
        ("M_vir", "true_M_vir", box.M_vir, True),
        ("r_s", "true_r_s", box.scale_radius, True),
        ("ellipticity", "true_ellipticity", box.ellipticity, False),
    ):
        binned[key] = [
            {"low": low, "high": high, **metrics(_subset(columns, mask), has_uncertainty)}
            for low, high, mask in _numeric_bins(columns[column], bounds, log)
        ]
    binned["scenario"] = [
        {"value": label, **metrics(_subset(columns, columns["scenario"] == label), has_uncertainty)}
        for label in config.scenarios
    ]
    binned["noise_sigma"] = [
        {"value": level, **metrics(_subset(columns, columns["noise_sigma"] == level), has_uncertainty)}
        for level in config.noise_levels
    ]
    done = sorted({int(s) for s in columns["shard"]})
    flagged = under_covering(binned) if has_uncertainty else []
    return {
        "name": config.name,
        "data_hash": config.data_hash(),
        "model": model,
        "mc_samples": config.mc_samples,
        "symmetrized": config.symmetrize,
        "grid_size": config.grid_size,
        "n_maps_planned": config.n_maps,
        "n_maps": int(table.num_rows),
        "n_shards": config.n_shards,
        "n_shards_done": len(done),
        "failed_shards": failed,
        "complete": len(done) == config.n_shards,
        "overall": metrics(columns, has_uncertainty),
        "binned": binned,
        "under_covering": flagged,
        "confusion_matrix": {
            "rows_true": list(config.scenarios),
            "columns_predicted": list(CLASS_NAMES),
            "counts": confusion_matrix(columns, list(config.scenarios)),
        },
    }


# --- plots ---------------------------------------------------------------------------------------


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)  # laid out already (constrained or fixed margins): one draw
    plt.close(figure)
    return buffer.getvalue()


def _log_axis(ax: plt.Axes, low: float, high: float) -> None:
    """A log x axis readable over any range: decades only when it spans many, else 1-2-5 ticks in plain
    numbers (r_s over 50-500 kpc would otherwise show a single label, 10^2)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    if high < 30 * low:
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))


def plot_errors(columns: dict[str, np.ndarray]) -> bytes:
    """Error of each target (rows) against each true parameter (columns), with the binned median.

    The medians use every map; the scatter shows at most MAX_SCATTER_POINTS of them (a fixed random
    subset), which looks the same and keeps a 100,000-map report from spending seconds drawing dots."""
    # A row shares its error axis, a column its parameter axis: labels sit on the outer panels only, so fixed
    # margins fit, and the layout pass of "constrained" (a quarter of this plot's time) is saved.
    figure, axes = plt.subplots(len(TARGETS), len(TARGETS), figsize=(12, 10), squeeze=False, sharex="col",
                                sharey="row")
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.06, top=0.95, wspace=0.05, hspace=0.07)
    n = columns["map_index"].size
    shown = np.sort(np.random.default_rng(0).permutation(n)[:MAX_SCATTER_POINTS])
    bins = {}  # per parameter (a column): its 10 bins' centres and each map's bin, shared by the column's rows
    for j, (parameter, scale) in enumerate(TARGETS.items()):
        x = columns[f"true_{parameter}"]
        edges = np.geomspace(x.min(), x.max(), 11) if scale == "dex" else np.linspace(x.min(), x.max(), 11)
        bins[parameter] = 0.5 * (edges[:-1] + edges[1:]), np.clip(np.searchsorted(edges, x, side="right") - 1, 0, 9)
        if scale == "dex":  # the column's axes are shared: set once, on its bottom panel
            _log_axis(axes[-1][j], x.min(), x.max())
        axes[-1][j].set_xlabel(AXIS_LABELS[parameter])
    for i, (target, unit) in enumerate(TARGETS.items()):
        err = errors(columns, target)
        for j, parameter in enumerate(TARGETS):
            x, (centres, which) = columns[f"true_{parameter}"], bins[parameter]
            filled = [b for b in range(10) if (which == b).any()]
            ax = axes[i][j]
            ax.scatter(x[shown], err[shown], s=2, alpha=0.3, color="tab:blue", rasterized=True)
            ax.plot(centres[filled], [np.median(err[which == b]) for b in filled], color="tab:red", lw=2,
                    label="binned median")
            ax.axhline(0.0, color="black", lw=0.8)
        axes[i][0].set_ylabel(f"{target} error [{'dex' if unit == 'dex' else 'pred - true'}]")
    axes[0][0].legend(loc="best", fontsize=8)
    sample = f" ({len(shown):,} of {n:,} maps shown)" if len(shown) < n else ""
    figure.suptitle(f"Prediction error against the true host parameters{sample}")
    return _png(figure)


def plot_coverage(summary: dict) -> bytes:
    """Coverage of the 68 % and 95 % intervals, overall and per noise level, against nominal."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    names = list(TARGETS)
    overall = summary["overall"]
    for offset, (level, nominal) in enumerate((("68", 0.6827), ("95", 0.9545))):
        values = [overall[n][f"coverage_{level}"] or 0.0 for n in names]
        axes[0].bar(np.arange(len(names)) + 0.38 * offset, values, width=0.36, label=f"{level} % interval")
        axes[0].axhline(nominal, ls="--", color=f"C{offset}", lw=1)
    axes[0].set_xticks(np.arange(len(names)) + 0.19, names)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("fraction of truths inside")
    axes[0].set_title("Overall coverage (dashed: nominal)")
    axes[0].legend(fontsize=8)
    levels = summary["binned"]["noise_sigma"]
    positions = np.arange(len(levels))  # evenly spaced: noise levels span decades and would crowd the ticks
    for k, name in enumerate(names):
        axes[1].plot(positions, [b[name]["coverage_68"] or np.nan for b in levels], "o-", color=f"C{k}",
                     label=f"{name} 68 %")
    axes[1].set_xticks(positions, [f"{b['value']:g}" for b in levels], rotation=30 if len(levels) > 5 else 0)
    axes[1].axhline(0.6827, ls="--", color="gray", lw=1)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_ylabel("fraction of truths inside")
    axes[1].set_xlabel(r"noise $\sigma_\kappa$ per pixel (dimensionless)")
    axes[1].set_title("68 % coverage by noise level")
    axes[1].legend(fontsize=8)
    return _png(figure)


def plot_confusion(summary: dict) -> bytes:
    """Row-normalised confusion matrix with counts."""
    matrix = summary["confusion_matrix"]
    counts = np.asarray(matrix["counts"], dtype=float)
    rows = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    figure, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    image = ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, f"{rows[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(counts.shape[1]), matrix["columns_predicted"])
    ax.set_yticks(range(counts.shape[0]), matrix["rows_true"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true ('none' = smooth host)")
    accuracy = summary["overall"]["classification_accuracy"]
    ax.set_title(f"Scenario confusion (accuracy {accuracy:.3f})" if accuracy is not None else "Scenario confusion")
    figure.colorbar(image, ax=ax, fraction=0.046)
    return _png(figure)


# --- report.md -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _metric_rows(label: str, entry: dict) -> str:
    cells = [label, str(entry["n"])]
    for name in TARGETS:
        m = entry[name]
        cells += [_fmt(m["median_abs_error"]), _fmt(m["coverage_68"]), _fmt(m["coverage_95"])]
    cells.append(_fmt(entry["classification_accuracy"]))
    return "| " + " | ".join(cells) + " |"


def render_report(summary: dict, config: SweepConfig) -> str:
    """A short Markdown report of the summary, linking the plots."""
    header = ["bin", "n"] + [f"{n} {h}" for n in TARGETS for h in ("med abs err", "cov68", "cov95")] + ["class acc"]
    table_head = "| " + " | ".join(header) + " |\n|" + "---|" * len(header)
    lines = [
        f"# Sweep `{summary['name']}`",
        "",
        f"Model {summary['model'].get('name')} {summary['model'].get('version')} "
        f"(sha256 {str(summary['model'].get('sha256'))[:12]}), {config.sampling.method} sampling, "
        f"{summary['n_maps']} of {summary['n_maps_planned']} maps ({summary['n_shards_done']} of "
        f"{summary['n_shards']} shards), {config.grid_size}x{config.grid_size} px, mc_samples = {config.mc_samples}"
        f"{' (symmetrized: eight views of each map pooled)' if config.symmetrize else ''}, seed {config.seed}. "
        "Errors: dex for M_vir and r_s, pred - true for e.",
        "",
    ]
    inside = summary["overall"].get("inside_training_domain")
    if inside is not None and inside < 1:
        lines += [f"**{100 * (1 - inside):.1f} % of the maps lie outside the model's training domain** (column "
                  "`outside_training_domain` names what: an estimate or a noise level beyond the training maps'): "
                  "there its estimates extrapolate and its intervals are not calibrated.", ""]
    if summary["failed_shards"]:
        lines += ["**Incomplete**: these shards failed; rerun the same command to retry only them.", ""]
        lines += [f"- shard {f['shard']}: {f['error']}" for f in summary["failed_shards"]] + [""]
    lines += ["## Overall and by scenario / noise", "", table_head, _metric_rows("all", summary["overall"])]
    lines += [_metric_rows(f"scenario {b['value']}", b) for b in summary["binned"]["scenario"]]
    lines += [_metric_rows(f"noise {b['value']:g}", b) for b in summary["binned"]["noise_sigma"]]
    lines += ["", "## By true host parameter", "", table_head]
    for key in TARGETS:
        lines += [_metric_rows(f"{key} [{b['low']:.3g}, {b['high']:.3g}]", b) for b in summary["binned"][key]]
    lines += ["", "## Do the intervals cover?", ""]
    if config.mc_samples == 1:
        lines += ["mc_samples = 1: point estimates, no intervals.", ""]
    else:
        overall = summary["overall"]
        for name in TARGETS:
            lines.append(f"- {name}: the 68 % interval holds the truth for {100 * overall[name]['coverage_68']:.1f} % "
                         f"of maps, the 95 % interval for {100 * overall[name]['coverage_95']:.1f} % (nominal 68.3 % "
                         "and 95.4 %).")
        flagged = summary["under_covering"]
        if flagged:
            lines += ["", f"**{len(flagged)} region(s) under-cover** (coverage more than 5 points below nominal at "
                      "68 %, 3 points at 95 %, or two standard errors in small regions): do not trust these "
                      "intervals there.", ""]
            lines += [f"- {f['region']}: {f['parameter']} {f['level']} % interval covers {100 * f['coverage']:.1f} % "
                      f"(n = {f['n']})" for f in flagged]
        else:
            lines += ["", "No region under-covers: in every bin below, each interval covers within 5 points (68 %) "
                      "and 3 points (95 %) of nominal, or within two standard errors in small bins."]
        lines.append("")
    lines += ["", "## Plots", ""]
    lines += [f"![{name}](plots/{name})" for name in PLOTS]
    lines += ["", "Rows: `shards/*.parquet` (e.g. `pandas.read_parquet('shards')`); numbers: `summary.json`.", ""]
    return "\n".join(lines)


def write_report(store: SweepStore, config: SweepConfig, model: dict, failed: list[dict]) -> dict:
    """Read every finished shard, then write summary.json, plots/*.png and report.md; return the summary."""
    table = store.read_table()
    summary = summarize(table, config, model, failed)
    store.write_bytes("summary.json", json.dumps(summary, indent=2).encode())
    figures = (plot_errors(table_columns(table)), plot_coverage(summary), plot_confusion(summary))
    plots = dict(zip(PLOTS, figures, strict=True))
    for name, data in plots.items():
        store.write_bytes(f"plots/{name}", data)
    store.write_bytes("report.md", render_report(summary, config).encode())
    return summary
