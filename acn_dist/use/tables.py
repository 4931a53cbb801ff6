"""Plain-text tables for the terminal: left-aligned words, right-aligned numbers."""

from __future__ import annotations

from collections.abc import Sequence


def _is_number(text: str) -> bool:
    stripped = text.replace(",", "").replace("%", "").replace(" ", "")
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned; "-" for a missing value."""
    cells = [[("-" if value is None else str(value)) for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(width) if _is_number(value) else value.ljust(width)
                         for value, width in zip(values, widths)).rstrip()

    return "\n".join([line(list(headers)), line(["-" * width for width in widths]), *[line(row) for row in cells]])
