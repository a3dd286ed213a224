"""What people read: the API docs served offline (/docs, /redoc).

`install(app, settings)` adds them to an ingress replica's FastAPI app (`api.create_app` calls it once).
"""

from __future__ import annotations

from fastapi import FastAPI

from ..settings import AppSettings
from .docs import install_docs


def install(app: FastAPI, settings: AppSettings) -> None:
    """Add the docs pages to `app`."""
    install_docs(app)
