"""Cells that a spreadsheet opens as text, never as a formula (CSV and XLSX exports).

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run as a
formula by Excel, LibreOffice and Google Sheets when the file is opened (CSV injection). Every
export that people open in a spreadsheet passes its text cells through :func:`spreadsheet_text`,
which puts a single quote in front of such text (the OWASP rule); numbers stay numbers, so a
negative longitude is still a number.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMULA_STARTS", "SafeCsvWriter", "SafeDictWriter", "spreadsheet_row", "spreadsheet_text"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: Any) -> Any:
    """``value`` made safe to open in a spreadsheet: text that would start a formula gets a ``'``.

    >>> spreadsheet_text('=HYPERLINK("http://evil","x")')
    '\\'=HYPERLINK("http://evil","x")'
    >>> spreadsheet_text("-5.2"), spreadsheet_text(-5.2), spreadsheet_text("Carabidae")
    ("'-5.2", -5.2, 'Carabidae')
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_row(values: Any) -> list[Any]:
    """Every cell of a row through :func:`spreadsheet_text`."""
    return [spreadsheet_text(v) for v in values]


class SafeCsvWriter:
    """``csv.writer`` whose rows pass through :func:`spreadsheet_row` (``\\n`` line ends)."""

    def __init__(self, stream: Any, **kwargs: Any) -> None:
        import csv

        kwargs.setdefault("lineterminator", "\n")
        self._writer = csv.writer(stream, **kwargs)

    def writerow(self, row: Any) -> Any:
        return self._writer.writerow(spreadsheet_row(row))

    def writerows(self, rows: Any) -> None:
        for row in rows:
            self.writerow(row)


class SafeDictWriter:
    """``csv.DictWriter`` whose values pass through :func:`spreadsheet_text` (``\\n`` line ends)."""

    def __init__(self, stream: Any, fieldnames: Any, **kwargs: Any) -> None:
        import csv

        kwargs.setdefault("lineterminator", "\n")
        self._writer = csv.DictWriter(stream, fieldnames=fieldnames, **kwargs)

    def writeheader(self) -> Any:
        return self._writer.writeheader()

    def writerow(self, row: dict[str, Any]) -> Any:
        return self._writer.writerow({k: spreadsheet_text(v) for k, v in row.items()})

    def writerows(self, rows: Any) -> None:
        for row in rows:
            self.writerow(row)
