"""Query-side reports: per-sample family counts, community matrix, Darwin Core Archive.

- :mod:`labpipe.reports.counts`: counts at a query-time threshold, verifications, expected counts
  (which rows count and how: :mod:`labpipe.queries`);
- :mod:`labpipe.reports.dwca`: the Darwin Core Archive for GBIF;
- :mod:`labpipe.reports.taxonomy`: phylum, class and order of a family.
"""

__all__: list[str] = []
