"""The vote contract in Python + pandas: what the original Lambda did, made faithful to ferry's rules.

Same command line as `ferry votes merge` / `ferry votes normalize`, same rules (README, "Data
contract"): header naming `kseq` and `score` in any case and order, optional UTF-8 BOM, quoted
fields, `kseq` an opaque non-empty string, `score` finite and >= 0, duplicate keys summed; share,
minmax, zscore (population std) or rank (average rank, descending) per locale; global score the sum
over locales, in alphabetical order, of weight x normalised value; sorted by score descending, then
key ascending. Written the way a Python engineer would: vectorised pandas, no per-row Python loops.
"""

import argparse
import csv
import io
import os
import sys

import numpy as np
import pandas as pd
from vote_header import BadInput, header_columns, parse_weights


def read_tally(path: str) -> pd.Series:
    """Summed score per key (index: kseq, first-seen order)."""
    with open(path, "rb") as f:
        body = f.read()
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    width, kseq_at, score_at = header_columns(body.split(b"\n", 1)[0], path)
    cols = {"kseq": kseq_at, "score": score_at}
    try:
        df = pd.read_csv(
            io.BytesIO(body),
            header=0,
            names=[f"c{i}" for i in range(width)],
            usecols=[cols["kseq"], cols["score"]],
            dtype={f"c{cols['kseq']}": str, f"c{cols['score']}": "float64"},
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8",
            engine="c",
        )
    except ValueError as e:
        raise BadInput(f"{path}: {e}") from e
    df.columns = ["kseq" if c == f"c{cols['kseq']}" else "score" for c in df.columns]
    if (df["kseq"] == "").any():
        line = int(np.argmax((df["kseq"] == "").to_numpy())) + 2
        raise BadInput(f"{path}: line {line}: field `kseq` is empty")
    score = df["score"].to_numpy()
    if not np.isfinite(score).all():
        raise BadInput(f"{path}: field `score` is not finite")
    if (score < 0).any():
        raise BadInput(f"{path}: field `score` is negative")
    return df.groupby("kseq", sort=False)["score"].sum()


def normalize(method: str, raw: pd.Series) -> pd.Series:
    if raw.empty:
        return raw.astype("float64")
    top = raw.abs().max()
    v = raw / top if top > 1e150 else raw
    if method == "share":
        total = v.sum()
        return v * 0.0 if total == 0 else v / total
    if method == "minmax":
        lo, hi = v.min(), v.max()
        return v * 0.0 + 1.0 if hi == lo else (v - lo) / (hi - lo)
    if method == "zscore":
        mean = v.mean()
        std = v.std(ddof=0)
        if std == 0 or std <= np.finfo(float).eps * abs(mean):
            return v * 0.0
        return (v - mean) / std
    if method == "rank":
        n = len(v)
        return (n - v.rank(method="average", ascending=False) + 1) / n
    raise BadInput(f"unknown method {method!r}")


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Score descending, then key ascending."""
    return df.sort_values(["score", "kseq"], ascending=[False, True], kind="stable")


def locale_result(method: str, path: str) -> pd.DataFrame:
    raw = read_tally(path)
    out = pd.DataFrame({"kseq": raw.index, "score": normalize(method, raw).to_numpy(), "raw": raw.to_numpy()})
    return ordered(out)


def merge(method: str, inputs: list, weights: dict, default_weight: float) -> pd.DataFrame:
    locales = sorted(loc for loc, _ in inputs)
    if len(set(locales)) != len(locales):
        raise BadInput("a locale is given more than once")
    paths = dict(inputs)
    parts = []
    for loc in locales:
        res = locale_result(method, paths[loc])
        w = weights.get(loc, default_weight)
        parts.append(pd.Series(w * res["score"].to_numpy(), index=res["kseq"].to_numpy(), name=loc))
    wide = pd.concat(parts, axis=1, join="outer", sort=False).fillna(0.0)
    total = np.zeros(len(wide))
    for loc in locales:  # alphabetical, as the contract sums
        total = total + wide[loc].to_numpy()
    out = pd.DataFrame({"kseq": wide.index.to_numpy(), "score": total})
    for loc in locales:
        out[loc] = wide[loc].to_numpy()
    return ordered(out)


def write(df: pd.DataFrame, out):
    if out is None:
        df.to_csv(sys.stdout, index=False, lineterminator="\n")
        return
    tmp = f"{out}.{os.getpid()}.tmp"
    df.to_csv(tmp, index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    os.replace(tmp, out)


def main(argv):
    p = argparse.ArgumentParser(prog="baseline_votes.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("normalize")
    n.add_argument("--method", "-m", default="share")
    n.add_argument("file")
    n.add_argument("--output", "-o")
    m = sub.add_parser("merge")
    m.add_argument("--method", "-m", default="share")
    m.add_argument("--weight", "-w", action="append", default=[])
    m.add_argument("--default-weight", type=float, default=1.0)
    m.add_argument("inputs", nargs="+")
    m.add_argument("--output", "-o")
    a = p.parse_args(argv)
    try:
        if a.cmd == "normalize":
            write(locale_result(a.method, a.file), a.output)
        else:
            weights = parse_weights(a.weight)
            inputs = [tuple(s.split("=", 1)) for s in a.inputs]
            write(merge(a.method, inputs, weights, a.default_weight), a.output)
    except BadInput as e:
        print(f"baseline_votes.py: error: {e}", file=sys.stderr)
        return 65
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
