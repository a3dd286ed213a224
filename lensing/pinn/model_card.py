"""Markdown rendering of the model card JSON (what was trained, how, and what was measured)."""

from __future__ import annotations

import json


def _table(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _metrics_blocks(metrics: dict) -> list[tuple[str, dict]]:
    """The headline block, then each held-out set and mode of `lensing evaluate`'s metrics."""
    headline = ("headline: smooth maps, network; scenario accuracy on maps with scenarios", metrics)
    return [headline] + [(f"{name}, {mode}", block) for name, modes in metrics.get("sets", {}).items()
                         for mode, block in modes.items()]


def _metrics_section(metrics: dict) -> str:
    parts = []
    for name, block in _metrics_blocks(metrics):
        if "median_abs_dlog10_M" not in block:
            continue
        rows = [["quantity", "value"]]
        for key in ("n_maps", "median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de", "scenario_accuracy",
                    "scenario_accuracy_stderr"):
            if key in block:
                rows.append([key, f"{block[key]:.4g}" if isinstance(block[key], float) else str(block[key])])
        for level in ("coverage_68", "coverage_95"):
            if level in block:
                rows.append([level, ", ".join(f"{k}: {v:.3f}" for k, v in block[level].items())])
        parts.append(f"### {name}\n\n" + _table(rows))
        if "confusion_matrix" in block:
            parts.append("Confusion matrix (rows: true CDM, WDM, SIDM; columns: predicted)\n\n```\n"
                         + "\n".join(str(r) for r in block["confusion_matrix"]) + "\n```")
    return "\n\n".join(parts) or "Not evaluated yet."


def _provenance_lines(source: dict | None, depth: int = 0) -> str:
    """Bullets naming the weights a fine-tune started from, back to the run trained from scratch."""
    if not source:
        return ""
    indent = "  " * depth
    line = (f"{indent}- Fine-tuned from {source.get('name')} {source.get('version')} "
            f"(SHA-256 `{source.get('sha256')}`), "
            f"trained by `{source.get('training_command')}` in {source.get('training_seconds_this_run')} s.\n")
    return line + _provenance_lines(source.get("initialised_from"), depth + 1)


def render_markdown(card: dict) -> str:
    """A human-readable card: training command, data recipe, seed, calibration, measured metrics."""
    return f"""# Model card: {card.get('name', 'PINN')} {card.get('version', '')}

{card.get('description', '')}

- Weights: `pinn.safetensors`, SHA-256 `{card.get('sha256', '?')}` (checked on load).
- Training command: `{card.get('training_command', '?')}`
- Seed: {card.get('seed')}; training time of the last run: {card.get('training_seconds_this_run')} s.
{_provenance_lines(card.get('initialised_from'))}
## Architecture

```json
{json.dumps(card.get('model_config', {}), indent=2)}
```

## Data recipe

```json
{json.dumps(card.get('data_recipe', {}), indent=2)}
```

## Calibration

```json
{json.dumps(card.get('calibration', {}), indent=2)}
```

## Measured metrics

Produced by `{card.get('evaluation_command', 'lensing evaluate')}` on held-out seeds never used in training,
with {card.get('metrics', {}).get('mc_samples', '?')} MC Dropout samples per map.

{_metrics_section(card.get('metrics', {}))}
"""
