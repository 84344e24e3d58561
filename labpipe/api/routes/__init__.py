"""The API's routers, one module per area; :func:`labpipe.api.app.create_app` includes them."""

from labpipe.api.routes import barcoding, images, reports, samples, verifications

__all__ = ["barcoding", "images", "reports", "samples", "verifications"]
