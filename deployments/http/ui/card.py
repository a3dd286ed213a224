"""GET /api/v1/models/card[/plots[/{name}]]: the model card of the served PINN and its evaluation plots.

The card is the JSON beside the weights the PINN replicas load (`predictor.card`, else the one shipped
in `lensing/weights/`); the plots are whatever PNGs lie in a `plots/` folder beside it, so new plots from
`lensing evaluate` appear without a code change. Files are read per request (a few KB; a card replaced
on disk is served at once) and without importing torch. A plot is served only if its name is one of
the listed files: anything else, path tricks included, is a 404.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi import Path as PathParam
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse

import lensing

from ...settings import PredictorSettings
from ..schemas import Error

logger = logging.getLogger("ray.serve")

PACKAGE_CARD = Path(lensing.__file__).resolve().parent / "weights" / "pinn_card.json"
PLOT_NAME = re.compile(r"[A-Za-z0-9_.-]+\.png")
CARD_URL = "/api/v1/models/card"


class Plot(BaseModel):
    name: str
    url: str


class CardPlots(BaseModel):
    plots: list[Plot]


def card_path(settings: PredictorSettings) -> Path:
    """The card of the weights the predictor loads."""
    return Path(settings.card).expanduser() if settings.card else PACKAGE_CARD


def plot_names(plots_dir: Path) -> list[str]:
    """Sorted names of the PNG files in `plots_dir` (none when it does not exist)."""
    try:
        return sorted(p.name for p in plots_dir.iterdir() if p.is_file() and PLOT_NAME.fullmatch(p.name))
    except OSError:
        return []


def install_card_routes(app: FastAPI, settings: PredictorSettings) -> None:
    """Add the three model card routes to `app`."""
    card = card_path(settings)
    plots_dir = card.parent / "plots"

    @app.get(CARD_URL, response_model=dict[str, Any], responses={404: {"model": Error}})
    def model_card() -> dict:
        """The full model card: training recipe, calibration and the measured metrics."""
        try:
            return json.loads(card.read_text())
        except (OSError, ValueError) as exc:
            logger.error("model card %s not readable: %s", card, exc)
            raise HTTPException(404, "the model card is not available") from None

    @app.get(f"{CARD_URL}/plots", response_model=CardPlots)
    def model_card_plots() -> dict:
        """The evaluation plots that come with the card (coverage, predicted vs true, confusion matrix)."""
        return {"plots": [{"name": name, "url": f"{CARD_URL}/plots/{name}"} for name in plot_names(plots_dir)]}

    @app.get(f"{CARD_URL}/plots/{{name}}", response_class=FileResponse,
             responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
                        404: {"model": Error}})
    def model_card_plot(name: Annotated[str, PathParam(max_length=128)]) -> FileResponse:
        """One plot, by a name from the listing."""
        if name not in plot_names(plots_dir):
            raise HTTPException(404, f"no such plot; GET {CARD_URL}/plots lists them")
        return FileResponse(plots_dir / name, media_type="image/png")
