"""The vote merge in polars or DuckDB: what a data engineer would reach for instead of ferry.

Same command line as `baseline_votes.py merge` for the `share` method, same rules (README, "Data
contract"): a header naming `kseq` and `score` in any case and order (other columns ignored),
optional UTF-8 BOM, quoted fields, `kseq` an opaque non-empty string, `score` finite and >= 0,
duplicate keys summed; share per locale = value / the locale's total (0 if the total is 0); global
score the sum over locales, in alphabetical order, of weight x share, a key missing in a locale
counting 0; output `kseq,score,<locale>...` sorted by score descending, then key ascending, as CSV.

Written as a user of each engine would write it: polars lazy (`scan_csv`, `group_by`), DuckDB SQL
over `read_csv`; no Python loop over rows. Only the header line is read in Python, to find the two
columns by name whatever their case. `--threads N` caps the engine's threads (polars:
`POLARS_MAX_THREADS`, set before polars is imported; DuckDB: `SET threads`).

    python peers_votes.py --engine polars|duckdb [--threads N] merge [--method share]
        [--weight LOC=W]... [--default-weight W] LOC=FILE... -o OUT
"""

import argparse
import math
import os
import sys

from vote_header import BadInput, header_columns, parse_weights

# Every method is scale-invariant; like ferry, inputs past this are divided by their largest value
# first, so that their sum cannot overflow.
SCALE_ABOVE = 1e150


def columns_of(path):
    """The header's column count and the positions of `kseq` and `score`."""
    with open(path, "rb") as f:
        return header_columns(f.readline(), path)


def check_tally(path, rows, bad_keys, null_scores, lowest, finite):
    """The contract's checks, on one locale's per-key aggregates (no row is looked at twice)."""
    if bad_keys:
        raise BadInput(f"{path}: field `kseq` is empty")
    if null_scores:
        raise BadInput(f"{path}: field `score` is empty or not a number")
    if rows and lowest < 0:
        raise BadInput(f"{path}: field `score` is negative")
    if rows and not finite:
        raise BadInput(f"{path}: field `score` is not finite")


# ---------------------------------------------------------------- polars


def merge_polars(locales, paths, weights, out):
    import polars as pl

    def tally(path):
        n, k, s = columns_of(path)
        names = [f"c{i}" for i in range(n)]
        schema = {c: pl.String for c in names}
        schema[names[s]] = pl.Float64
        return (
            # The header row is skipped (as a CSV row): the columns are named by position.
            pl.scan_csv(path, has_header=False, skip_rows=1, schema=schema, quote_char='"', encoding="utf8")
            .select(pl.col(names[k]).alias("kseq"), pl.col(names[s]).alias("score"))
            .group_by("kseq")
            .agg(
                raw=pl.col("score").sum(),
                low=pl.col("score").min(),
                nulls=pl.col("score").null_count(),
            )
        )

    try:
        tallies = pl.collect_all([tally(paths[loc]) for loc in locales])
    except pl.exceptions.PolarsError as e:  # a field that does not parse, a ragged line, bad UTF-8
        raise BadInput(f"{', '.join(paths[loc] for loc in locales)}: {str(e).strip().splitlines()[0]}") from e
    checks = pl.collect_all(
        [
            t.lazy().select(
                rows=pl.len(),
                bad_keys=(pl.col("kseq").is_null() | (pl.col("kseq") == "")).sum(),
                nulls=pl.col("nulls").sum(),
                low=pl.col("low").min(),
                finite=pl.col("raw").is_finite().all(),
                top=pl.col("raw").abs().max(),
                total=pl.col("raw").sum(),
            )
            for t in tallies
        ]
    )
    parts = []
    for loc, t, c in zip(locales, tallies, checks):
        c = c.row(0, named=True)
        check_tally(paths[loc], c["rows"], c["bad_keys"], c["nulls"], c["low"], c["finite"])
        v = pl.col("raw")
        total = c["total"] or 0.0
        if c["rows"] and c["top"] > SCALE_ABOVE:
            v = v / c["top"]
            total = t.select((pl.col("raw") / c["top"]).sum()).item()
        share = v * 0.0 if total == 0 else v / total
        parts.append(t.lazy().select("kseq", (weights[loc] * share).alias(loc)))

    # One row per key across the locales: stack the four (each with only its own column, the others
    # null), then one aggregation per key. Null sums to 0: a missing key contributes nothing.
    wide = pl.concat(parts, how="diagonal").group_by("kseq").agg(pl.col(loc).sum() for loc in locales)
    score = pl.lit(0.0)
    for loc in locales:  # alphabetical, as the contract sums
        score = score + pl.col(loc)
    result = wide.select("kseq", score.alias("score"), *locales).sort(["score", "kseq"], descending=[True, False])
    tmp = f"{out}.{os.getpid()}.tmp"
    result.collect().write_csv(tmp, line_terminator="\n")
    os.replace(tmp, out)


# ---------------------------------------------------------------- DuckDB


def sql_str(s):
    return "'" + str(s).replace("'", "''") + "'"


def sql_num(x):
    return repr(float(x))


def create_tally(con, i, path, names, k, s, cols):
    """Table t{i}: per key of one locale, the summed score and what the checks need."""
    con.execute(
        f"""
        CREATE TEMP TABLE t{i} AS
        SELECT {names[k]} AS kseq, sum({names[s]}) AS raw, min({names[s]}) AS low,
               count(*) - count({names[s]}) AS nulls
        FROM read_csv({sql_str(path)}, header = true, auto_detect = false, delim = ',',
                      quote = '"', escape = '"', columns = {{{cols}}})
        GROUP BY ALL
        """
    )


def merge_duckdb(locales, paths, weights, out, threads):
    import duckdb

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    # Tables named by position: a locale is any string.
    for i, loc in enumerate(locales):
        n, k, s = columns_of(paths[loc])
        names = [f"c{j}" for j in range(n)]
        cols = ", ".join(f"{sql_str(c)}: {'DOUBLE' if j == s else 'VARCHAR'}" for j, c in enumerate(names))
        try:
            create_tally(con, i, paths[loc], names, k, s, cols)
        except duckdb.Error as e:  # a field that does not parse, a ragged line, bad UTF-8
            raise BadInput(f"{paths[loc]}: {str(e).strip().splitlines()[0]}") from e
    terms = []
    for i, loc in enumerate(locales):
        rows, bad_keys, nulls, low, finite, top, total = con.execute(
            f"""
            SELECT count(*), count(*) FILTER (kseq IS NULL OR kseq = ''), sum(nulls), min(low),
                   bool_and(isfinite(raw)), max(abs(raw)), sum(raw)
            FROM t{i}
            """
        ).fetchone()
        check_tally(paths[loc], rows, bad_keys, nulls, low, finite)
        v = "raw"
        total = total or 0.0
        if rows and top > SCALE_ABOVE:
            v = f"(raw / {sql_num(top)})"
            total = con.execute(f"SELECT sum({v}) FROM t{i}").fetchone()[0]
        share = f"{v} * 0.0" if total == 0 else f"{v} / {sql_num(total)}"
        terms.append(f"{sql_num(weights[loc])} * ({share})")

    # One row per key across the locales: stack the tallies (each filling only its own column), then
    # one aggregation per key. A missing key contributes 0.
    quoted = ['"' + loc.replace('"', '""') + '"' for loc in locales]
    stacked = " UNION ALL ".join(
        "SELECT kseq, "
        + ", ".join(f"{terms[i] if j == i else 'NULL::DOUBLE'} AS {quoted[j]}" for j in range(len(locales)))
        + f" FROM t{i}"
        for i in range(len(locales))
    )
    sums = ", ".join(f"coalesce(sum({q}), 0.0) AS {q}" for q in quoted)
    score = " + ".join(["0.0", *quoted])  # left to right: alphabetical, as the contract sums
    tmp = f"{out}.{os.getpid()}.tmp"
    con.execute(
        f"""
        COPY (
            SELECT kseq, {score} AS score, {', '.join(quoted)}
            FROM (SELECT kseq, {sums} FROM ({stacked}) GROUP BY kseq)
            ORDER BY score DESC, kseq ASC
        ) TO {sql_str(tmp)} (FORMAT csv, HEADER true, DELIMITER ',', QUOTE '"', ESCAPE '"')
        """
    )
    con.close()
    os.replace(tmp, out)


# ---------------------------------------------------------------- command line


def main(argv):
    p = argparse.ArgumentParser(prog="peers_votes.py")
    p.add_argument("--engine", choices=["polars", "duckdb"], required=True)
    p.add_argument("--threads", type=int, help="the engine's thread count (default: the engine's own)")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge")
    m.add_argument("--method", "-m", default="share", choices=["share"])
    m.add_argument("--weight", "-w", action="append", default=[])
    m.add_argument("--default-weight", type=float, default=1.0)
    m.add_argument("inputs", nargs="+")
    m.add_argument("--output", "-o", required=True)
    a = p.parse_args(argv)
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be at least 1")
    try:
        given = parse_weights(a.weight)
        if not math.isfinite(a.default_weight) or a.default_weight < 0:
            raise BadInput(f"the default weight must be a finite number >= 0, got {a.default_weight}")
        inputs = []
        for s in a.inputs:
            if "=" not in s:
                raise BadInput(f"expected LOCALE=FILE, got {s!r}")
            inputs.append(tuple(s.split("=", 1)))
        locales = sorted(loc for loc, _ in inputs)
        if len(set(locales)) != len(locales):
            raise BadInput("a locale is given more than once")
        paths = dict(inputs)
        weights = {loc: given.get(loc, a.default_weight) for loc in locales}
        if a.engine == "polars":
            if a.threads:
                os.environ["POLARS_MAX_THREADS"] = str(a.threads)  # read once, when polars is imported
            merge_polars(locales, paths, weights, a.output)
        else:
            merge_duckdb(locales, paths, weights, a.output, a.threads)
    except BadInput as e:
        print(f"peers_votes.py: error: {e}", file=sys.stderr)
        return 65
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
