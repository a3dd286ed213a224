"""What people read: the API docs served offline (/docs, /redoc) and the model card.

`install(app, settings)` adds them to an ingress replica's FastAPI app (`api.create_app` calls it once).
The docs are static files shipped in a package, so they work without internet; the card routes read
the card of the model the PINN replicas load.
"""

from __future__ import annotations

from fastapi import FastAPI

from ..settings import AppSettings
from .card import install_card_routes
from .docs import install_docs


def install(app: FastAPI, settings: AppSettings) -> None:
    """Add the docs pages and the model card routes to `app`."""
    install_docs(app)
    install_card_routes(app, settings.predictor)
