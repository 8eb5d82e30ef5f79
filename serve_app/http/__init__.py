"""The HTTP layer: ``create_app`` builds the FastAPI app (``factory``)."""

from serve_app.http.factory import create_app

__all__ = ["create_app"]
