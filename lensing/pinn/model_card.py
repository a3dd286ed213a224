"""Markdown rendering of the model card JSON (what was trained, how, and what was measured)."""

from __future__ import annotations

import json
import re

from .domain import TrainingDomain
from .interval_groups import MASS_BIN_EDGES


def _table(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


SHORT_NAMES = {"log10_M_vir": "M", "log10_r_s": "r_s", "ellipticity": "e", "center_x_kpc": "x_c",
               "center_y_kpc": "y_c"}
HOST_QUANTITIES = ("log10_M_vir", "log10_r_s", "ellipticity")  # the host's parameters, in REPORTED's order


def _compact_json(value: object) -> str:
    """Indented JSON with every innermost list of numbers on one line: a k table reads as one line per noise
    bin (its mass bins side by side) instead of one number per line."""
    text = json.dumps(value, indent=2)
    numbers = re.compile(r"\[\s*([-+0-9.eE,\s]+?)\s*\]")
    return numbers.sub(lambda m: "[" + ", ".join(n.strip() for n in m.group(1).split(",")) + "]", text)


def _coverage(block: dict, level: str) -> str:
    return " / ".join(f"{value:.2f}" for value in block[level].values())


def _metrics_section(metrics: dict) -> str:
    """One table: every held-out set and mode, its accuracy, classification and coverage per quantity."""
    sets = metrics.get("sets", {})
    if not sets:
        return "Not evaluated yet."
    order = " / ".join(SHORT_NAMES.values())
    rows = [["set", "mode", "maps", "inside domain", "M [dex]", "r_s [%]", "e", "centre [kpc]", "classes",
             f"68 % coverage ({order})", f"95 % coverage ({order})", "within goal"]]
    for name, modes in sets.items():
        for mode, block in modes.items():
            if "scenario_accuracy" in block:
                classes = f"accuracy {block['scenario_accuracy']:.3f} +- {block['scenario_accuracy_stderr']:.3f}"
                if "scenario_accuracy_all_draws_3_classes" in block:
                    classes += f" (all draws, 3 classes: {block['scenario_accuracy_all_draws_3_classes']:.3f})"
            else:
                classes = f"none {block.get('none_rate_on_smooth', float('nan')):.3f}"
            goal = block.get("coverage_within_goal", {})
            within = ", ".join(SHORT_NAMES[k] for k, ok in goal.items() if ok) or "none"
            if block.get("goals_apply") is False:
                within = "n/a: not drawn like the training maps"
            inside = block.get("inside_training_domain")
            rows.append([name, mode, str(block["n_maps"]), "-" if inside is None else f"{100 * inside:.1f} %",
                         f"{block['median_abs_dlog10_M']:.4f}",
                         f"{100 * block['median_rel_err_rs']:.2f}", f"{block['median_abs_de']:.4f}",
                         f"{block.get('median_abs_dcenter_kpc', float('nan')):.2f}", classes,
                         _coverage(block, "coverage_68"), _coverage(block, "coverage_95"),
                         within])
    parts = ["Medians of |error|; centre per axis. \"classes\": scenario accuracy (over CLASS_NAMES, "
             "\"none\" counts as wrong) on maps whose scenario shows in the field, and in brackets over every "
             "drawn scenario with the argmax over CDM, WDM, SIDM only; or the share of maps with nothing to "
             "see (smooth hosts, empty draws) reported as \"none\". \"within goal\": quantities whose coverage "
             "is within 5 points of 68 % and 3 points of 95 %; the goals apply to the sets drawn like the training "
             "maps, not to the galaxy-halo sets (Duffy et al. 2008 concentrations), which measure what the "
             "training-domain check is worth. \"inside domain\": the share of maps whose result says it lies "
             "inside the training domain.",
             _table(rows)]
    parts.append(_coverage_by_mass_section(sets))
    parts.append(_coverage_by_scenario_section(sets))
    scenarios = sets.get("scenarios", {}).get("network", {})
    if "confusion_matrix" in scenarios:
        columns = ", ".join(metrics.get("class_names", []))
        parts.append(f"Confusion matrix of the scenario set (rows: true CDM, WDM, SIDM; columns: predicted "
                     f"{columns})\n\n```\n" + "\n".join(str(r) for r in scenarios["confusion_matrix"]) + "\n```")
    return "\n\n".join(parts)


def _coverage_by_mass_section(sets: dict) -> str:
    """68 % coverage of M, r_s and e by true-mass quarter of the box, network alone, per set."""
    rows = [["set", *(f"{SHORT_NAMES[q]} by mass" for q in HOST_QUANTITIES)]]
    for name, modes in sets.items():
        by_mass = modes.get("network", {}).get("coverage_68_by_true_mass")
        if by_mass:
            rows.append([name, *(" / ".join("-" if c is None else f"{c:.2f}" for c in by_mass[q])
                                 for q in HOST_QUANTITIES)])
    if len(rows) == 1:
        return ""
    edges = [f"10^{edge:g}" for edge in MASS_BIN_EDGES]
    bins = ", ".join([f"below {edges[0]}", *(f"{a}-{b}" for a, b in zip(edges, edges[1:])), f"above {edges[-1]}"])
    return (f"68 % coverage by true M_vir, network alone, in the mass bins of the calibration ({bins} Msun; - "
            "where a set has no such halos): they are there so that faint halos do not under-cover while "
            "massive ones over-cover.\n\n" + _table(rows))


def _coverage_by_scenario_section(sets: dict) -> str:
    """68 % coverage of M, r_s and e by true scenario, network alone, on the sets with substructure."""
    rows = [["set", "scenario", *(SHORT_NAMES[q] for q in HOST_QUANTITIES)]]
    for name, modes in sets.items():
        for scenario, coverage in modes.get("network", {}).get("coverage_68_by_true_scenario", {}).items():
            rows.append([name, scenario, *(f"{coverage[q]:.2f}" for q in HOST_QUANTITIES)])
    if len(rows) == 1:
        return ""
    return ("68 % coverage by true scenario, network alone: a cored (SIDM) host's errors are about twice a CDM "
            "or WDM host's, so the maps reported as SIDM have k of their own.\n\n" + _table(rows))


def _provenance_lines(source: dict | None, depth: int = 0) -> str:
    """Bullets naming the weights a fine-tune started from, back to the run trained from scratch."""
    if not source:
        return ""
    indent = "  " * depth
    line = (f"{indent}- Fine-tuned from {source.get('name')} {source.get('version')} "
            f"(SHA-256 `{source.get('sha256')}`), "
            f"trained by `{source.get('training_command')}` in {source.get('training_seconds_this_run')} s.\n")
    return line + _provenance_lines(source.get("initialised_from"), depth + 1)


def _domain_lines(card: dict) -> str:
    return "\n".join(f"- {name}: {text}" for name, text in TrainingDomain.from_card(card).describe().items())


def _calibration_line(card: dict) -> str:
    """Where the calibration was refit after training (`lensing calibrate`), the command that did it."""
    command = card.get("calibration_command")
    return f"- Calibration refit after training: `{command}`\n" if command else ""


def render_markdown(card: dict) -> str:
    """A human-readable card: training command, data recipe, seed, calibration, measured metrics."""
    return f"""# Model card: {card.get('name', 'PINN')} {card.get('version', '')}

{card.get('description', '')}

- Weights: `pinn.safetensors`, SHA-256 `{card.get('sha256', '?')}` (checked on load).
- Training command: `{card.get('training_command', '?')}`
- Seed: {card.get('seed')}; training time of the last run: {card.get('training_seconds_this_run')} s.
{_calibration_line(card)}{_provenance_lines(card.get('initialised_from'))}
## Architecture

```json
{json.dumps(card.get('model_config', {}), indent=2)}
```

## Data recipe

```json
{json.dumps(card.get('data_recipe', {}), indent=2)}
```

## Training domain

The figures below hold for maps like the training maps; outside this domain the network extrapolates and
its intervals are not calibrated. Every result says whether its map and estimates lie inside
(`training_domain`), and names what does not.

{_domain_lines(card)}

## Calibration

An interval is centre +/- k x raw spread, per reported quantity. For the network alone the centre is the
deterministic network's estimate (dropout off), more accurate than the mean of the MC samples and
independent of their number, and the raw spread is sqrt(MC Dropout std^2 + learned spread^2): the spread
of the dropout samples (what the network does not know) and the head's own per-map estimate of its error
(what the map does not say: noise, substructure, a halo buried in noise). Symmetrized
(`symmetrize=true`), the samples of the map's eight quarter turns and mirror images, each turned back
into the map's frame, are pooled: their mean is the centre (eight times the samples average dropout's
scatter away) and their spread includes how much the views disagree (its centre's k rest on the validation
maps whose halo is off the pixel grid's centre: a halo exactly there looks the same in all eight views, so
their average cancels the network's bias, which no real map enjoys). With refinement it is the Laplace
standard deviation of the fit. k68 and k95 are the 68th and 95th percentiles of |error| / raw spread on
validation maps drawn from the training mixture, fitted separately for each cell of maps: the map's noise
bin (`noise_bin_edges`: its noise sigma per pixel at the network's input resolution, given or estimated;
each k list has one entry per noise bin, from clean to the noisiest), crossed with the bin of its estimated
log10 M_vir (`mass_bin_edges`; each noise bin's entry lists one k per mass bin, from the lightest halos to
the heaviest: a faint halo's map says less above the noise than its raw spread admits), crossed with
the group of the class it is reported as (`groups`: none; CDM or WDM; SIDM, whose cored host makes its mass
errors twice the others'). All three are known from the map
alone, so the service picks each map's k the same way. k near 1 at 68 % and near 2 at 95 % mean the raw
spreads were already honest Gaussian errors for maps of that cell; larger or smaller k mean they were too
narrow or too wide there, and k corrects them on average. `group_maps` says how many validation maps each
network k rests on, `refined_group_maps` the same for refinement (calibrated on the first
`refined_validation_maps` only: each fit costs ~70 ms) and `symmetrized_group_maps` for the symmetrized
mode; a cell with fewer than 30 takes the k of its noise bin over all masses, and failing that its group's
over all bins.

```json
{_compact_json(card.get('calibration', {}))}
```

## Measured metrics

Produced by `{card.get('evaluation_command', 'lensing evaluate')}` on held-out seeds never used in training,
with {card.get('metrics', {}).get('mc_samples', '?')} MC Dropout samples per map.

{_metrics_section(card.get('metrics', {}))}
"""
