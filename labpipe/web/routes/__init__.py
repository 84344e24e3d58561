"""The web UI's pages, one module per resource; :data:`router` holds them all.

Server-rendered HTML (Jinja2) with a little JavaScript for zoom/pan, keyboard shortcuts and the
dashboard's live refresh; every page works without it. The routes only read the request, call the
query layer (:mod:`labpipe.queries`) or a write module (:mod:`labpipe.review`,
:mod:`labpipe.barcoding.plates`, ...), and render; chart geometry is :mod:`labpipe.web.charts`.

=================================  =============================================================
``/``                              dashboard (``?fragment=live``: the live part only):
                                   :mod:`~labpipe.web.routes.dashboard`
``/images``                        plate images, filtered by status and sample, paged:
                                   :mod:`~labpipe.web.routes.images`
``/images/{id}``                   plate view: overview with every specimen box, zoom and pan
``/images/{id}/overview.jpg``      the cached overview
``/images/{id}/boxes``             POST (JSON): a box drawn on the plate view; with
                                   ``/specimens/{id}/box`` (resize), ``.../box/delete``,
                                   ``.../box/split`` and ``/box-events/{id}/undo``:
                                   :mod:`~labpipe.web.routes.boxes`
``/images/{id}/retry``             POST: put a failed or quarantined plate back into the inbox, or
                                   hand a stuck processing plate to another worker
``/specimens``                     gallery: dense tiles or cards, search, filters (DNA
                                   disagreement too), sort by uncertainty, paging, bulk review:
                                   :mod:`~labpipe.web.routes.specimens`
``/review``                        the gallery as a review queue (unverified, doubtful first)
``/specimens/{id}``                one specimen with its review form (keyboard shortcuts)
``/specimens/{id}/thumb/{n}.jpg``  cached thumbnail (n = 160 or 320); ``.../crop.png`` the crop
``/specimens/{id}/verify``         POST: record a verification: :mod:`~labpipe.web.routes.review`
``/review/bulk``                   POST: one verdict for the ticked specimens
``/review/undo``                   POST: withdraw the verdicts just recorded (the Undo button)
``/review/training.zip``           verified crops as a training folder (one folder per family)
``/samples``, ``/samples/{id}``    samples; one sample's counts, chart, exports, plate layout:
                                   :mod:`~labpipe.web.routes.samples`
``/exports/{kind}``                counts.csv, matrix.csv, dwca.zip, bold.zip (``?sample=``):
                                   :mod:`~labpipe.web.routes.exports`
``/plates/layout``                 POST: lay a sample out on 96-well plates:
                                   :mod:`~labpipe.web.routes.plates`
``/plates/{plate}/manifest.csv``   manifest; ``/plates/{plate}/sheet`` the picking sheet
``/models``, ``/models/{id}``      model versions, the default, evaluation reports with plots:
                                   :mod:`~labpipe.web.routes.models`
``/login``, ``/logout``            the API token as an HttpOnly cookie; ``/static/{name}`` the
                                   stylesheet, script and icon: :mod:`~labpipe.web.routes.session`
=================================  =============================================================

Helpers every module shares (page rendering, paging, 404s) are :mod:`~labpipe.web.routes.common`.
"""

from __future__ import annotations

from fastapi import APIRouter

from labpipe.web.routes import (
    boxes,
    dashboard,
    exports,
    images,
    models,
    plates,
    review,
    samples,
    session,
    specimens,
)

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
"""Every page of the UI (mounted at the root by :func:`labpipe.web.create_web_app`)."""

for _module in (session, dashboard, images, boxes, specimens, review, samples, exports, plates, models):
    router.include_router(_module.router)
