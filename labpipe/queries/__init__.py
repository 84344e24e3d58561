"""The query layer: what counts for each specimen, and every listing the UI, the API and the CLI show.

- :mod:`labpipe.queries.rule`: how one specimen counts (pure: :func:`~labpipe.queries.rule.resolve`,
  verification over classification, the query-time threshold);
- :mod:`labpipe.queries.calls`: which classification and which verification count (the one SQL of
  "current calls", correlated and ranked), :class:`~labpipe.queries.calls.CountFilter`,
  :func:`~labpipe.queries.calls.load_calls`;
- :mod:`labpipe.queries.listings`: specimens and images, filtered, sorted and paged;
- :mod:`labpipe.queries.records`: one row by id, which ids exist, a specimen's verifications;
- :mod:`labpipe.queries.samples`: sample totals, a sample's images, processed images per sample;
- :mod:`labpipe.queries.models`: models newest first, classifications per model.

The counts (:mod:`labpipe.reports.counts`), the exports, review, barcoding, the web routes, the API
routes and the CLI all read through these modules; no route or command builds SQL of its own.
"""

__all__: list[str] = []
