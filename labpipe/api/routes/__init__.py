"""The API's routers, one module per area; :func:`labpipe.api.app.create_app` includes them."""

from labpipe.api.routes import barcoding, edits, images, reports, samples, verifications

__all__ = ["barcoding", "edits", "images", "reports", "samples", "verifications"]
