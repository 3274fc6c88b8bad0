"""The usual Python export to xlsx: staged rows (a JSON array per line, header first) to a workbook.

    baseline_xlsx.py xlsxwriter STAGED OUT   # XlsxWriter, constant_memory (rows flushed as written)
    baseline_xlsx.py openpyxl STAGED OUT     # openpyxl, write_only workbook

Both read the same staged file the Rust worker reads, one row at a time, so neither holds the rows.
"""

import json
import sys


def rows(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def with_xlsxwriter(staged, out):
    import xlsxwriter

    wb = xlsxwriter.Workbook(out, {"constant_memory": True})
    ws = wb.add_worksheet()
    n = 0
    for r, cells in enumerate(rows(staged)):
        ws.write_row(r, 0, cells)
        n = r
    wb.close()
    return n


def with_openpyxl(staged, out):
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet()
    n = -1
    for n, cells in enumerate(rows(staged)):
        ws.append(cells)
    wb.save(out)
    return n


def main(argv):
    writer, staged, out = argv
    n = {"xlsxwriter": with_xlsxwriter, "openpyxl": with_openpyxl}[writer](staged, out)
    print(f"rows {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
