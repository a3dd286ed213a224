"""Shipped weights (safetensors) and the model card (JSON + Markdown); training checkpoints.

Loading shipped weights never unpickles: tensors come from safetensors, everything else from JSON, and
the file's SHA-256 must equal the one the card records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import PINN, PINNConfig

PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHTS_NAME = "pinn.safetensors"
CARD_NAME = "pinn_card.json"
CARD_MARKDOWN_NAME = "pinn_card.md"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_weights(model: PINN, card: dict, directory: Path) -> dict:
    """Write weights and card into `directory`; returns the card with its checksum filled in."""
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / WEIGHTS_NAME
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": "pt", "name": card.get("name", "PINN")})
    card = dict(card, sha256=sha256_of(weights_path), model_config=model.config.to_dict())
    write_card(card, directory)
    return card


def write_card(card: dict, directory: Path) -> None:
    """Write the JSON card and its Markdown rendering."""
    (directory / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    from .model_card import render_markdown  # local import: Markdown rendering is only needed here

    (directory / CARD_MARKDOWN_NAME).write_text(render_markdown(card))


def read_card(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def load_weights(weights_path: Path, card_path: Path, device: torch.device | str = "cpu") -> tuple[PINN, dict]:
    """Rebuild the PINN from a card and verified safetensors weights."""
    card = read_card(card_path)
    actual = sha256_of(Path(weights_path))
    if card.get("sha256") != actual:
        raise ValueError(f"checksum mismatch for {weights_path}: card says {card.get('sha256')}, file is {actual}")
    model = PINN(PINNConfig.from_dict(card["model_config"]))
    model.load_state_dict(load_file(str(weights_path), device=str(device)))
    return model.to(device).eval(), card


def load_pretrained(model: PINN, weights_path: Path, card_path: Path) -> list[str]:
    """Fine-tuning start: copy verified weights into `model`, which may add modules; returns what is new.

    Tensors of modules the source lacks keep their fresh initialisation. A linear layer whose input grew
    (new features appended to its input) gets the source weights in its leading columns and zeros in the
    new ones, so the fine-tune starts from exactly the source network's outputs. Any other mismatch is
    an error.
    """
    source, _ = load_weights(weights_path, card_path)
    target = model.state_dict()
    new_names = [name for name in target if name not in source.state_dict()]
    for name, tensor in source.state_dict().items():
        if name not in target:
            raise ValueError(f"weights in {weights_path} do not fit the configured architecture: {name} is not in it")
        current = target[name]
        if current.shape == tensor.shape:
            current.copy_(tensor)
        elif current.ndim == 2 and current.shape[0] == tensor.shape[0] and current.shape[1] > tensor.shape[1]:
            current.zero_()
            current[:, : tensor.shape[1]] = tensor
            new_names.append(f"{name}[:, {tensor.shape[1]}:]")
        else:
            raise ValueError(
                f"{name}: shape {tuple(tensor.shape)} in {weights_path}, {tuple(current.shape)} configured")
    model.load_state_dict(target)
    return new_names


def save_training_checkpoint(path: Path, model: PINN, optimizer, scheduler, step: int, extra: dict) -> None:
    """Atomic training checkpoint (tensors and plain data only, loaded with weights_only=True)."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "step": step, "extra": extra},
        tmp,
    )
    tmp.replace(path)


def load_training_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
