"""Code 128 barcodes (code set B) as SVG, for plate labels on the picking sheet.

Code set B covers printable ASCII (space to ``~``), enough for plate names such as ``S1-P01``. A
symbol is: start B (value 104), one symbol per character (value = ASCII code - 32), the check
symbol (start value plus each character's value times its position, modulo 103) and the stop
symbol, framed by quiet zones of 10 modules. Every symbol is three bars and three spaces, 11
modules wide in all (the stop symbol adds a final 2-module bar: 13 modules); :data:`WIDTHS` lists
them as in ISO/IEC 15417, table 1.

:func:`code128_modules` gives the bar pattern (``"1"`` bar, ``"0"`` space); :func:`code128_svg`
draws it with the text underneath. Any barcode scanner in Code 128 mode reads it.
"""

from __future__ import annotations

import html

__all__ = ["START_B", "STOP", "WIDTHS", "code128_modules", "code128_svg", "code128_values"]

START_B = 104
STOP = 106
QUIET = 10
"""Quiet zone each side, in modules (the standard's minimum)."""

# Bar, space, bar, space, bar, space widths (in modules) of symbol values 0..106, ten a line.
WIDTHS: tuple[str, ...] = (
    "212222", "222122", "222221", "121223", "121322", "131222", "122213", "122312", "132212", "221213",
    "221312", "231212", "112232", "122132", "122231", "113222", "123122", "123221", "223211", "221132",
    "221231", "213212", "223112", "312131", "311222", "321122", "321221", "312212", "322112", "322211",
    "212123", "212321", "232121", "111323", "131123", "131321", "112313", "132113", "132311", "211313",
    "231113", "231311", "112133", "112331", "132131", "113123", "113321", "133121", "313121", "211331",
    "231131", "213113", "213311", "213131", "311123", "311321", "331121", "312113", "312311", "332111",
    "314111", "221411", "431111", "111224", "111422", "121124", "121421", "141122", "141221", "112214",
    "112412", "122114", "122411", "142112", "142211", "241211", "221114", "413111", "241112", "134111",
    "111242", "121142", "121241", "114212", "124112", "124211", "411212", "421112", "421211", "212141",
    "214121", "412121", "111143", "111341", "131141", "114113", "114311", "411113", "411311", "113141",
    "114131", "311141", "411131", "211412", "211214", "211232", "2331112",
)  # fmt: skip


def code128_values(text: str) -> list[int]:
    """Symbol values of ``text`` in code set B: start, characters, check symbol, stop.

    >>> code128_values("PJJ123C")
    [104, 48, 42, 42, 17, 18, 19, 35, 55, 106]
    """
    if not text:
        raise ValueError("a barcode needs some text")
    bad = sorted({c for c in text if not 32 <= ord(c) <= 126})
    if bad:
        raise ValueError(f"{text!r}: Code 128 set B cannot encode {', '.join(map(repr, bad))}")
    values = [ord(c) - 32 for c in text]
    check = (START_B + sum(i * v for i, v in enumerate(values, start=1))) % 103
    return [START_B, *values, check, STOP]


def _pattern(value: int) -> str:
    widths = WIDTHS[value]
    return "".join(("1" if i % 2 == 0 else "0") * int(w) for i, w in enumerate(widths))


def code128_modules(text: str) -> str:
    """The bars of ``text``, one character per module (``1`` bar, ``0`` space), quiet zones left out.

    >>> code128_modules("A")
    '1101001000010100011000100010110001100011101011'
    """
    return "".join(_pattern(v) for v in code128_values(text))


def code128_svg(text: str, module_mm: float = 0.33, height_mm: float = 10.0, caption: bool = True) -> str:
    """An inline SVG of ``text`` as a Code 128 barcode, sized in millimetres for print.

    ``module_mm``: width of the narrowest bar (0.25-0.5 mm scans well from laser prints);
    ``height_mm``: bar height; ``caption``: the text in plain characters under the bars.
    """
    modules = code128_modules(text)
    total = len(modules) + 2 * QUIET
    text_h = 3.2 if caption else 0.0
    bars = []
    x = 0
    while x < len(modules):
        if modules[x] == "1":
            run = len(modules[x:]) - len(modules[x:].lstrip("1"))
            bars.append(f'<rect x="{QUIET + x}" y="0" width="{run}" height="{height_mm / module_mm:.2f}"/>')
            x += run
        else:
            x += 1
    width_mm = total * module_mm
    scale_h = (height_mm + text_h) / module_mm
    label = (
        f'<text x="{total / 2}" y="{scale_h - 0.3 / module_mm:.2f}" text-anchor="middle" '
        f'font-family="monospace" font-size="{2.8 / module_mm:.2f}">{html.escape(text)}</text>'
        if caption
        else ""
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="barcode" role="img" '
        f'aria-label="Code 128 barcode: {html.escape(text)}" data-code128="{html.escape(text)}" '
        f'width="{width_mm:.2f}mm" height="{height_mm + text_h:.2f}mm" '
        f'viewBox="0 0 {total} {scale_h:.2f}" shape-rendering="crispEdges">'
        f'<rect width="{total}" height="{scale_h:.2f}" fill="#fff"/><g fill="#000">{"".join(bars)}</g>'
        f"{label}</svg>"
    )
