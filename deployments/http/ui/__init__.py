"""What people read: the web page (/ui), the API docs served offline (/docs, /redoc) and the model card.

`install(app, settings)` adds all three to an ingress replica's FastAPI app (`api.create_app` calls it
once). The page and the docs are static files shipped in this package, so they work without internet;
the card routes read the card of the model the PINN replicas load.
"""

from __future__ import annotations

from fastapi import FastAPI

from ...settings import AppSettings
from .card import install_card_routes
from .docs import install_docs
from .page import install_page


def install(app: FastAPI, settings: AppSettings) -> None:
    """Add the docs pages, the web page and the model card routes to `app`."""
    install_docs(app)
    install_page(app)
    install_card_routes(app, settings.predictor)
