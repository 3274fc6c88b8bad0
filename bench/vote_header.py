"""The contract's rules the Python baselines (`baseline_votes.py`, `peers_votes.py`) share: the
header (the columns named `kseq` and `score`, trimmed, in any case and order, after an optional
UTF-8 BOM; any other column is ignored) and the `--weight LOCALE=W` options."""

import codecs
import csv
import math


class BadInput(Exception):
    pass


def header_columns(first_line: bytes, path: str):
    """The header's column count and the positions of `kseq` and `score`."""
    if first_line.startswith(codecs.BOM_UTF8):
        first_line = first_line[len(codecs.BOM_UTF8):]
    text = first_line.decode("utf-8", errors="replace").rstrip("\r\n")
    header = [h.strip().lower() for h in next(csv.reader([text]), [])]
    if not header or header == [""]:
        raise BadInput(f"{path}: the file is empty: expected a header naming kseq, score")
    at = {}
    for col in ("kseq", "score"):
        found = [i for i, h in enumerate(header) if h == col]
        if not found:
            raise BadInput(f"{path}: line 1: the header has no `{col}` column")
        if len(found) > 1:
            raise BadInput(f"{path}: line 1: the header names `{col}` more than once")
        at[col] = found[0]
    return len(header), at["kseq"], at["score"]


def parse_weights(items):
    """`LOCALE=W` options as {locale: weight}; a weight must be a finite number >= 0."""
    weights = {}
    for item in items:
        loc, w = item.split("=", 1)
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise BadInput(f"weight of {loc} must be a finite number >= 0, got {w}")
        weights[loc] = w
    return weights
