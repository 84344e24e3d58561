"""DNA barcoding (LIMS): specimen Sample IDs, 96-well plate layouts, BOLD submission, BOLD results.

- :mod:`labpipe.barcoding.ids`: the specimen's Sample ID, used everywhere below;
- :mod:`labpipe.barcoding.plates`: well assignment, manifest CSV, printable picking sheet;
- :mod:`labpipe.barcoding.bold`: BOLD specimen and image spreadsheets with the crops;
- :mod:`labpipe.barcoding.import_results`: BOLD result tables linked to specimens by Sample ID;
- :mod:`labpipe.barcoding.agreement`: image-based vs DNA-based family, review marks.
"""

__all__: list[str] = []
