"""`make bench`: ferry against what users would otherwise run, and against the limits.

Generates seeded inputs, runs every side in the same process tree on this machine, measures wall
time and peak RSS (`wait4` rusage of each child) and writes BENCHMARKS.md. Expects the release
binaries built (the `bench` make target does that). Nothing here is a test: no speed is asserted.

    python bench/run.py [--quick] [--out BENCHMARKS.md]

`--quick` shrinks every input and run count, to try the harness itself in a minute. `--bin-dir`
points at another build (a debug one tries the harness without a release build; its numbers mean
nothing).
"""

import argparse
import csv
import datetime
import http.server
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = ROOT / "target" / "release"
DATA = ROOT / "target" / "bench-data"
PY = sys.executable
LOCALES = ["jp", "kr", "na", "tw"]
# Every Lambda binary of the workspace, with the package that builds it and its resource in
# infra/template.yaml (whose MemorySize it starts with).
LAMBDAS = [
    ("regional-normalizer", "regional-normalizer", "NormalizerFunction"),
    ("global-merger", "global-merger", "MergerFunction"),
    ("job-api", "job-invoker", "JobApiFunction"),
    ("job-worker", "job-invoker", "JobWorkerFunction"),
    ("notify-intake", "notify", "NotifyIntakeFunction"),
    ("notify-consumer", "notify", "NotifyConsumerFunction"),
    ("dlq-redrive", "notify", "DlqRedriveFunction"),
]


class Run:
    def __init__(self, wall, rss_kb, cpu, stdout):
        self.wall = wall
        self.rss = rss_kb * 1024
        self.cpu = cpu
        self.stdout = stdout


def run(cmd, env=None):
    """Runs `cmd` to completion: wall time from spawn to exit, and its peak RSS.

    The RSS comes from GNU time rather than this process's own `wait4`: Linux carries a parent's RSS
    at fork into the child's `ru_maxrss`, and this Python has pandas loaded."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        p = subprocess.run(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", rss.name, *[str(c) for c in cmd]], stdout=out, stderr=err, env=env, cwd=ROOT
        )
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if p.returncode != 0:
            raise SystemExit(f"bench: {' '.join(map(str, cmd))} exited {p.returncode}:\n{errors[-2000:]}")
        rss_kb, user, system = rss.read().split()[-3:]
    return Run(wall, int(rss_kb), float(user) + float(system), text)


def series(name, cmd, runs, env=None):
    results = []
    for i in range(runs):
        r = run(cmd, env)
        results.append(r)
        print(f"  {name} run {i + 1}/{runs}: {r.wall:.2f} s, {r.rss / 2**20:.0f} MiB", flush=True)
    return results


def med(rs):
    return statistics.median(r.wall for r in rs)


def peak(rs):
    return max(r.rss for r in rs)


def cpu(rs):
    return statistics.median(r.cpu for r in rs)


def mib(b):
    return f"{b / 2**20:,.0f} MiB"


def secs(s):
    return f"{s * 1000:,.0f} ms" if s < 1 else f"{s:,.2f} s"


def spread(rs):
    walls = [r.wall for r in rs]
    return f"{secs(min(walls))} – {secs(max(walls))}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok):
    return "met" if ok else "**missed**"


# ---------------------------------------------------------------- votes (cases 1 and 2)


def read_result(path):
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        header = next(r)
        return header, [(row[0], [float(x) for x in row[1:]]) for row in r]


def same_result(a_path, b_path):
    """Equal up to float rounding: same header, same keys with the same values (relative 1e-9), and
    the same order except where two scores are equal up to that rounding."""
    ha, ra = read_result(a_path)
    hb, rb = read_result(b_path)
    if ha != hb or len(ra) != len(rb):
        return f"header or row count differs: {ha} {len(ra)} vs {hb} {len(rb)}"
    close = lambda x, y: math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15)
    by_key = dict(rb)
    for key, vals in ra:
        other = by_key.get(key)
        if other is None or not all(close(x, y) for x, y in zip(vals, other)):
            return f"key {key!r}: {vals} vs {other}"
    for i, ((ka, va), (kb, vb)) in enumerate(zip(ra, rb)):
        if ka != kb and not close(va[0], vb[0]):
            return f"row {i + 2}: {ka!r} vs {kb!r}"
    return None


def votes_args(d):
    return [f"{loc}={d / (loc + '.csv')}" for loc in LOCALES]


def check_votes_contract(bench_bin):
    """ferry and the pandas baseline must agree before their times mean anything."""
    d = DATA / "check"
    run([bench_bin, "gen-votes", "--seed", "2", "--keys", "3000", "--variety", "--out", d])
    checked = []
    for method in ["share", "minmax", "zscore", "rank"]:
        extra = ["--method", method, "--weight", "kr=2", "--weight", "na=0.5"]
        a, b = d / f"ferry-{method}.csv", d / f"pandas-{method}.csv"
        run([REL / "ferry", "votes", "merge", *extra, *votes_args(d), "-o", a])
        run([PY, ROOT / "bench/baseline_votes.py", "merge", *extra, *votes_args(d), "-o", b])
        problem = same_result(a, b)
        if problem:
            raise SystemExit(f"bench: pandas baseline and ferry disagree ({method}): {problem}")
        checked.append(method)
    return checked


def bench_votes(args, bench_bin, md):
    d = DATA / ("votes-quick" if args.quick else "votes")
    gen = run([bench_bin, "gen-votes", "--seed", "1", "--keys", str(args.keys), "--out", d])
    files = [d / f"{loc}.csv" for loc in LOCALES]
    size = sum(f.stat().st_size for f in files)
    mb = size / 1e6
    print(f"votes: {gen.stdout.strip()}", flush=True)
    methods = check_votes_contract(bench_bin)

    ferry_out, pandas_out = d / "ferry-global.csv", d / "pandas-global.csv"
    ferry = series("ferry votes merge", [REL / "ferry", "votes", "merge", *votes_args(d), "-o", ferry_out], args.runs)
    pandas = series(
        "pandas merge", [PY, ROOT / "bench/baseline_votes.py", "merge", *votes_args(d), "-o", pandas_out], args.slow_runs
    )
    problem = same_result(ferry_out, pandas_out)
    if problem:
        raise SystemExit(f"bench: full-size outputs differ: {problem}")
    rows_out = sum(1 for _ in open(ferry_out, "rb")) - 1

    speed = med(pandas) / med(ferry)
    memory = peak(ferry) / peak(pandas)
    md.append("## 1. Normalise and merge four regional files\n")
    md.append(
        f"Four regional uploads of {args.keys:,} distinct keys each ({mb:,.1f} MB in all, opencsv-quoted, "
        f"seed 1), merged with the default `share` method into {rows_out:,} global rows. "
        f"Before timing, both sides merged a small input exercising the contract's corners (BOM, header "
        f"case and order, duplicate keys, quotes in keys, fractional scores) with every method "
        f"({', '.join(methods)}) and weights, and agreed; the full-size outputs agree too "
        f"(same keys, values equal to 1e-9, same order).\n"
    )
    md.append(
        table(
            ["implementation", "runs", "median wall", "range", "median CPU (user+sys)", "peak RSS", "input MB/s"],
            [
                ["`ferry votes merge` (Rust)", len(ferry), secs(med(ferry)), spread(ferry), secs(cpu(ferry)), mib(peak(ferry)), f"{mb / med(ferry):,.1f}"],
                ["Python + pandas (`bench/baseline_votes.py`)", len(pandas), secs(med(pandas)), spread(pandas), secs(cpu(pandas)), mib(peak(pandas)), f"{mb / med(pandas):,.1f}"],
            ],
        )
    )
    md.append(
        f"\nferry is **{speed:.1f}x faster** (goal: 10x, {verdict(speed >= 10)}) and uses "
        f"**{memory:.2f}x the memory** of pandas (goal: at most 0.5x, {verdict(memory <= 0.5)}).\n"
    )

    md.append("## 2. Throughput against the limit\n")
    md.append("The same four files; each step adds work on top of the previous one.\n")
    cat = series("cat", ["sh", "-c", 'cat "$@" > /dev/null', "cat", *files], args.runs)
    wc = series("wc -l", ["wc", "-l", *files], args.runs)
    parse = series("parse + sum", [bench_bin, "parse-sum", *files], args.runs)
    tally = series("read_tally", [bench_bin, "read-tally", *files], args.runs)
    phases = run([bench_bin, "merge-phases", *votes_args(d)]).stdout.strip()
    rows = [
        ["`cat > /dev/null` (bytes from the page cache)", cat],
        ["`wc -l`", wc],
        ["parse CSV + sum `score` (`ferry-bench parse-sum`, csv crate, one thread per file)", parse],
        ["`ferry_core::csv::read_tally` (header, validation, duplicate summing)", tally],
        ["`ferry votes merge` (read, normalise, merge, sort, write)", ferry],
    ]
    md.append(
        table(
            ["step", "median wall", "peak RSS", "MB/s", "share of the merge's time"],
            [[n, secs(med(r)), mib(peak(r)), f"{mb / med(r):,.0f}", f"{med(r) / med(ferry):.0%}"] for n, r in rows],
        )
    )
    md.append(f"\nOne timed pass of the merge's phases (`ferry-bench merge-phases`, same calls as the CLI): {phases}.\n")


# ---------------------------------------------------------------- xlsx (case 3)


def bench_xlsx(args, bench_bin, md):
    d = DATA / ("xlsx-quick" if args.quick else "xlsx")
    d.mkdir(parents=True, exist_ok=True)
    staged = d / "rows.jsonl"
    run([bench_bin, "gen-rows", "--seed", "1", "--rows", str(args.xlsx_rows), "--out", staged])
    mb = staged.stat().st_size / 1e6
    rust = series("job-invoker xlsx", [bench_bin, "xlsx", staged, d / "rust.xlsx"], args.xlsx_runs)
    xw = series("XlsxWriter", [PY, ROOT / "bench/baseline_xlsx.py", "xlsxwriter", staged, d / "xlsxwriter.xlsx"], args.slow_xlsx_runs)
    op = series("openpyxl", [PY, ROOT / "bench/baseline_xlsx.py", "openpyxl", staged, d / "openpyxl.xlsx"], args.slowest_xlsx_runs)
    for name, path in [("rust", "rust.xlsx"), ("xlsxwriter", "xlsxwriter.xlsx"), ("openpyxl", "openpyxl.xlsx")]:
        with zipfile.ZipFile(d / path) as z:
            if "xl/worksheets/sheet1.xml" not in z.namelist():
                raise SystemExit(f"bench: {name} wrote no first worksheet")
    speed = med(xw) / med(rust)
    md.append("## 3. Export to xlsx\n")
    md.append(
        f"{args.xlsx_rows:,} rows x 10 columns (ints, decimals, text; seed 1), staged as JSON lines "
        f"({mb:,.0f} MB) the way the export worker stages them. Every side reads the staged file row by "
        f"row and writes one worksheet. Rust: `job_invoker::export::xlsx::build` (rust_xlsxwriter, "
        f"constant-memory worksheets).\n"
    )
    rows = [
        ["`job-invoker` xlsx writer (Rust)", rust],
        ["Python XlsxWriter (`constant_memory`)", xw],
        ["Python openpyxl (`write_only`)", op],
    ]
    md.append(
        table(
            ["implementation", "runs", "median wall", "range", "median CPU (user+sys)", "peak RSS", "file size"],
            [
                [n, len(r), secs(med(r)), spread(r), secs(cpu(r)), mib(peak(r)), mib((d / f).stat().st_size)]
                for (n, r), f in zip(rows, ["rust.xlsx", "xlsxwriter.xlsx", "openpyxl.xlsx"])
            ],
        )
    )
    md.append(
        f"\nThe worker's writer is **{speed:.1f}x faster** than XlsxWriter (goal: 5x, {verdict(speed >= 5)}) "
        f"and {med(op) / med(rust):.1f}x faster than openpyxl; its peak RSS is {mib(peak(rust))} "
        f"(goal: under 256 MB, {verdict(peak(rust) < 256e6)}).\n"
    )

    bench_rollover(args, bench_bin, d, md)


EXCEL_ROWS = 1_048_576


def bench_rollover(args, bench_bin, d, md):
    """Not a timing: the worker's writer at Excel's real row limit, read back with calamine."""
    md.append("### Sheet rollover at Excel's limit\n")
    if args.quick:
        md.append("Not run with `--quick` (it needs more than 1,048,576 rows).\n")
        return
    rows = EXCEL_ROWS + 51_424
    staged = d / "rollover.jsonl"
    run([bench_bin, "gen-rows", "--seed", "2", "--rows", str(rows), "--out", staged])
    built = run([bench_bin, "xlsx", staged, d / "rollover.xlsx"])
    back = run([bench_bin, "xlsx-read-back", d / "rollover.xlsx"]).stdout.strip()
    staged.unlink()
    # Sheet 1: the header and 1,048,575 rows; sheet 2: the header and the rest, ids continuing.
    first_sheet = EXCEL_ROWS - 1
    expect = (
        f"Sheet1 rows {EXCEL_ROWS} header id first 1 last {first_sheet} contiguous true; "
        f"Sheet2 rows {rows - first_sheet + 1} header id first {first_sheet + 1} last {rows} contiguous true"
    )
    ok = back == expect and built.stdout.strip() == f"rows {rows} sheets 2"
    md.append(
        f"{rows:,} rows through the same writer with Excel's limit (1,048,576 rows a sheet, header included), "
        f"{built.wall:.1f} s, peak RSS {mib(built.rss)}; read back with calamine: `{back}`. "
        f"{'As expected: the first sheet is full, the second holds the rest, every id once and in order.' if ok else '**Not as expected**: wanted `' + expect + '`.'}\n"
    )
    print(f"  rollover: {back}", flush=True)


# ---------------------------------------------------------------- start-up (case 4)


class RuntimeStub(http.server.ThreadingHTTPServer):
    """Just enough of the Lambda Runtime API to see a function ask for its first event."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.first_next = None
        self.asked = threading.Event()
        self.release = threading.Event()


class StubHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        now = time.perf_counter()
        if self.path.endswith("/runtime/invocation/next") and not self.server.asked.is_set():
            self.server.first_next = now
            self.server.asked.set()
        # Hold the request like an idle Lambda would, until the function is stopped.
        self.server.release.wait(10)
        self.send_response(503)
        self.end_headers()

    def do_POST(self):
        self.send_response(202)
        self.end_headers()

    def log_message(self, *_):
        pass


def lambda_env(port):
    local = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/bench",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        # Every client points at the stub: nothing leaves loopback.
        "AWS_ENDPOINT_URL": local,
        "FERRY_JOBS_TABLE": "jobs",
        "FERRY_EXPORT_BUCKET": "exports",
        "FERRY_JOB_WORKER_FUNCTION": "job-worker",
        "FERRY_NOTIFY_TABLE": "notifications",
        "FERRY_NOTIFY_QUEUE_URL": f"{local}/000000000000/notify",
        "FERRY_NOTIFY_DLQ_URL": f"{local}/000000000000/notify-dlq",
        "FERRY_PROVIDER_URL": f"{local}/provider",
    }
    return env


def startup_once(binary, name, memory_mb):
    stub = RuntimeStub()
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    env = lambda_env(stub.server_address[1])
    env["AWS_LAMBDA_FUNCTION_NAME"] = name
    # The memory the template gives it: a function checks its caps against that at start.
    env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = str(memory_mb)
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([str(binary)], env=env, stdout=subprocess.DEVNULL, stderr=err)
        asked = stub.asked.wait(10)
        p.kill()
        p.wait()
        stub.release.set()
        stub.shutdown()
        stub.server_close()
        if not asked:
            err.seek(0)
            return None, err.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return stub.first_next - t0, None


def polars_in(package):
    r = subprocess.run(
        ["cargo", "tree", "--offline", "-p", package, "-i", "polars", "-e", "normal", "--depth", "0"],
        cwd=ROOT, capture_output=True, text=True,
    )
    return r.returncode == 0 and "polars" in r.stdout


def bench_startup(args, md):
    md.append("## 4. Start-up\n")
    md.append(
        "Time from `exec` of each Lambda binary (release build for this host, **x86_64**, not the arm64 "
        "deploy target) to its first `GET /2018-06-01/runtime/invocation/next` on a local Runtime API "
        "stub (Python `http.server` on 127.0.0.1), so it includes reading the environment, building the SDK "
        f"clients and the runtime's first request. {args.startup_runs} starts each.\n"
    )
    template = (ROOT / "infra" / "template.yaml").read_text()
    rows, missing, failed = [], [], []
    for binary, package, resource in LAMBDAS:
        path = REL / binary
        if not path.exists():
            missing.append(binary)
            continue
        times, memory_mb = [], memory_of(template, resource)
        for _ in range(args.startup_runs):
            t, problem = startup_once(path, binary, memory_mb)
            if problem:
                failed.append(f"`{binary}`: {problem[0]}")
                break
            times.append(t)
        if not times:
            continue
        size = path.stat().st_size
        with tempfile.TemporaryDirectory() as tmp:
            z = Path(tmp) / "bootstrap.zip"
            with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
                zf.write(path, "bootstrap")
            zsize = z.stat().st_size
        arm = ROOT / "target" / "lambda" / binary / "bootstrap.zip"
        arm_size = mib(arm.stat().st_size) if arm.exists() else "not built"
        med_t, max_t = statistics.median(times), max(times)
        rows.append(
            [f"`{binary}`", secs(med_t), secs(max_t), verdict(med_t < 0.05), mib(size), mib(zsize), arm_size, "yes" if polars_in(package) else "no"]
        )
        print(f"  {binary}: median {med_t * 1000:.1f} ms, max {max_t * 1000:.1f} ms", flush=True)
    header = ["function", "median", "slowest", "goal: median < 50 ms", "binary", "zip (bootstrap, deflate)", "arm64 zip (deployed)", "polars linked"]
    md.append(table(header, rows))
    md.append(
        "\n`binary` and `zip` are the x86_64 host build timed here, zipped as `bootstrap`. `arm64 zip` is the "
        "deploy artifact, written during this run by `make build` (`cargo lambda build --release --arm64 "
        "--output-format zip`); `make bench` removes old zips first, so `not built` means that build failed. "
        "`polars linked` is `cargo tree -p <package> -i polars` (only `job-invoker`, whose `job-worker` reads "
        "datasets, should say yes; `job-api` shares that package and so its dependency tree, but the "
        "linker drops what it does not call: compare the binary sizes).\n"
    )
    if missing:
        md.append(f"Not built when this ran, so not measured: {', '.join(f'`{m}`' for m in missing)}.\n")
    if failed:
        md.append("Did not reach the Runtime API: " + "; ".join(failed) + "\n")


# ---------------------------------------------------------------- memory (case 6)


def memory_of(template, function):
    """The `MemorySize` (MB) `infra/template.yaml` gives `function`."""
    return int(re.search(rf"\n  {function}:\n(?:    .*\n|\n)*?      MemorySize: (\d+)", template).group(1))


def bench_memory(args, bench_bin, md):
    """Each capped function's peak RSS on the largest input its caps allow, beside the memory it is given."""
    template = (ROOT / "infra" / "template.yaml").read_text()

    def worker_setting(name):
        return int(re.search(rf"\n  JobWorkerFunction:\n(?:    .*\n|\n)*?          {name}: \"(\d+)\"", template).group(1))

    def row(function, what, size, r, memory):
        return [function, what, mib(r.rss), f"{r.rss / size:.2f}x", f"{memory:,} MB", f"{1 - r.rss / (memory * 2**20):.0%}"]

    cap = int(re.search(r"\n  MaxInputBytes:\n(?:    .*\n)*?    Default: (\d+)", template).group(1))
    memory = memory_of(template, "NormalizerFunction")
    size = cap // 64 if args.quick else cap
    d = DATA / ("memory-quick" if args.quick else "memory")
    # gen-votes rows take about 21.5 bytes: an upload just under the cap.
    run([bench_bin, "gen-votes", "--seed", "1", "--keys", str(size // 22), "--locales", "jp", "--out", d])
    upload = d / "jp.csv"
    r = run([bench_bin, "normalize-peak", upload])
    rows = [row("`NormalizerFunction`", f"one upload of {mib(upload.stat().st_size)}", upload.stat().st_size, r, memory)]
    notes = [r.stdout.strip()]

    # The export worker at the template's caps: FERRY_JOB_READ_AHEAD objects held at once, each just
    # under FERRY_JOB_MAX_OBJECT_BYTES (the Parquet ones by what they decode to: their rows take
    # about 1.27x as many bytes decoded as in CSV).
    read_ahead, object_cap = worker_setting("FERRY_JOB_READ_AHEAD"), worker_setting("FERRY_JOB_MAX_OBJECT_BYTES")
    worker_memory = memory_of(template, "JobWorkerFunction")
    object_size = object_cap // 64 if args.quick else object_cap
    run([bench_bin, "gen-dataset", "--seed", "1", "--bytes", str(object_size - (1 << 20)), "--out", d, "--name", "csv"])
    run([bench_bin, "gen-dataset", "--seed", "2", "--bytes", str(int(object_size * 0.75)), "--out", d, "--name", "pq"])
    for fmt, f in [("csv", d / "csv.csv"), ("parquet", d / "pq.parquet")]:
        r = run([bench_bin, "dataset-peak", "--format", fmt] + [f] * read_ahead)
        decoded = int(re.search(r"decoded (\d+) bytes", r.stdout).group(1))
        rows.append(row("`JobWorkerFunction`", f"{read_ahead} {fmt} objects of {mib(decoded // read_ahead)}{' decoded' if fmt == 'parquet' else ''}", decoded, r, worker_memory))
        notes.append(r.stdout.strip())
    md.append("## 6. Memory at the caps\n")
    md.append(
        f"Peak RSS beside the memory `infra/template.yaml` gives each function; `ferry_core::budget` sizes that memory "
        f"from the caps the template sets. `ferry-bench normalize-peak` (the normalizer's `ferry-core` calls, in its "
        f"order) on one upload {'of 1/64 of' if args.quick else 'just under'} `MaxInputBytes` ({mib(cap)}). "
        f"`ferry-bench dataset-peak` (the export worker's `job_invoker::export::dataset` read of each object, as "
        f"`read_object` takes it) on `FERRY_JOB_READ_AHEAD` = {read_ahead} objects at once, each "
        f"{'1/64 of' if args.quick else 'just under'} `FERRY_JOB_MAX_OBJECT_BYTES` ({mib(object_cap)}): "
        f"order rows of 10 columns, every frame held until all are parsed (the read-ahead's worst case). "
        f"Per input byte is per byte of the upload or CSV, per decoded byte of Parquet.\n"
    )
    md.append(table(["function", "input", "peak RSS", "per input byte", "configured memory", "headroom"], rows))
    md.append("\n" + "\n\n".join(notes) + "\n")


# ---------------------------------------------------------------- consumer (case 5)


def bench_consumer(args, bench_bin, md):
    import re

    md.append("## 5. Notification consumer, per batch\n")
    md.append(
        f"The real `notify::consumer::process` (the `notify-consumer` handler minus the Lambda runtime) on "
        f"{args.consumer_batches:,} batches of 10 valid notifications, after 100 untimed warm-up batches, "
        "with real SDK and provider clients against in-process endpoints that answer at once: a DynamoDB "
        "stand-in that accepts every `UpdateItem` and a provider that accepts every message, both on their "
        "own thread. Each record costs three HTTP round trips on loopback (claim, send, status); the driver "
        "checks that every record came out `sent` and that the stand-ins saw exactly 2 writes and 1 send "
        "per record. Process CPU includes the stand-ins.\n"
    )
    pat = re.compile(r"median ([0-9.]+) ms, p90 ([0-9.]+) ms, p99 ([0-9.]+) ms per batch; process CPU ([0-9.]+) ms per batch")
    rows, meds = [], []
    for i in range(args.runs):
        r = run([bench_bin, "consumer", "--batches", args.consumer_batches])
        m = pat.search(r.stdout)
        if not m:
            raise SystemExit(f"bench: unexpected consumer summary: {r.stdout!r}")
        med_ms, p90, p99, cpu_ms = map(float, m.groups())
        meds.append((med_ms, p90, p99, cpu_ms, r.rss))
        print(f"  consumer run {i + 1}/{args.runs}: median {med_ms:.3f} ms per batch", flush=True)
    meds.sort()
    med_ms, p90, p99, cpu_ms, _ = meds[len(meds) // 2]
    rows.append(["`notify::consumer::process`, 10 records, concurrency 8", len(meds), f"{med_ms:.2f} ms", f"{p90:.2f} ms", f"{p99:.2f} ms", f"{cpu_ms:.2f} ms", f"{med_ms / 10 * 1000:.0f} µs", mib(max(x[4] for x in meds))])
    md.append(table(["handler", "runs", "median per batch", "p90", "p99", "process CPU per batch", "per record", "peak RSS"], rows))
    md.append(
        "\nThe run shown is the one with the median of the runs' medians. No goal is set for this case; at a "
        "Lambda billed per millisecond, this is the part of a batch that is the handler's own work rather "
        "than waiting on DynamoDB or the provider.\n"
    )


# ---------------------------------------------------------------- batch (case 7)

# Published prices, US East (N. Virginia): aws.amazon.com/step-functions/pricing and
# aws.amazon.com/lambda/pricing. Free tiers left out.
SFN_PER_TRANSITION = 0.025 / 1000  # Standard workflows: $0.025 per 1,000 state transitions
SFN_EXPRESS_PER_REQUEST = 1.00 / 1e6  # Express workflows: $1.00 per million requests
SFN_EXPRESS_PER_GB_S = 0.00001667  # Express duration, first 1,000 GB-hours a month ($0.06 per GB-hour)
LAMBDA_ARM_PER_GB_S = 0.0000133334  # Lambda duration, arm64 (the deploy target), first 6 billion GB-s
LAMBDA_PER_REQUEST = 0.20 / 1e6
TARGET_DELAY_MS = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid):
    """User plus system CPU seconds of a running process so far (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Moto:
    """A fresh moto (the local AWS) from the project's .venv on a free loopback port, started as
    scripts/with-moto.sh starts it, but beside the measured process rather than around it: GNU time
    then measures the driver alone."""

    def __enter__(self):
        port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=self.log, stderr=self.log
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise SystemExit("bench: moto did not start")
                time.sleep(0.1)

    def __exit__(self, *_):
        stop(self.proc)
        self.log.close()


def batch_once(bench_bin, target, items_file, concurrency, per_call):
    with Moto() as moto:
        env = dict(
            os.environ,
            AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
            AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
        )
        cpu0 = proc_cpu(moto.proc.pid), proc_cpu(target.pid)
        r = run([bench_bin, "batch", "--target", target.url, "--items-file", items_file,
                 "--concurrency", concurrency, "--items-per-request", per_call], env)
        cpu1 = proc_cpu(moto.proc.pid), proc_cpu(target.pid)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    summary.update(rss=r.rss, moto_cpu=cpu1[0] - cpu0[0], target_cpu=cpu1[1] - cpu0[1])
    return summary


def usd(x):
    """Cents, or two significant digits below a cent."""
    if x >= 0.01 or x <= 0:
        return f"${x:,.2f}"
    return f"${x:.{1 - math.floor(math.log10(x))}f}"


def bench_batch(args, bench_bin, md):
    q = args.quick
    d = DATA / ("batch-quick" if q else "batch")
    cases = [
        (10, 1, 500 if q else 5_000, args.runs),
        (100, 1, 2_000 if q else 20_000, args.runs),
        # The memory case: a large item file, 100 items a call.
        (100, 100, 20_000 if q else 1_000_000, 1),
    ]
    target = subprocess.Popen(
        [str(bench_bin), "batch-target", "--delay-ms", str(TARGET_DELAY_MS)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    target.url = target.stdout.readline().strip()
    rows = []
    try:
        if not target.url.startswith("http://"):
            raise SystemExit(f"bench: the batch target did not start: {target.url!r}")
        for concurrency, per_call, items, runs in cases:
            items_file = d / f"items-{items}.jsonl"
            run([bench_bin, "gen-items", "--seed", "1", "--items", items, "--out", items_file])
            results = []
            for i in range(runs):
                s = batch_once(bench_bin, target, items_file, concurrency, per_call)
                results.append(s)
                print(
                    f"  batch {items:,} items, concurrency {concurrency}, {per_call} a call, run {i + 1}/{runs}: "
                    f"{s['items_per_s']:,.0f} items/s, {s['cpu_us_per_item']:.1f} µs CPU per item, {s['wall_s']:.2f} s, "
                    f"{s['rss'] / 2**20:.0f} MiB; moto {s['moto_cpu']:.1f} s CPU, target {s['target_cpu']:.1f} s CPU",
                    flush=True,
                )
            results.sort(key=lambda s: s["items_per_s"])
            rows.append((results[len(results) // 2], max(s["rss"] for s in results), runs))
    finally:
        stop(target)

    template = (ROOT / "infra" / "template.yaml").read_text()
    try:
        worker_mb = memory_of(template, "JobWorkerFunction")
    except AttributeError:
        worker_mb = None
    md.append(f"## 7. Batch jobs against a target answering in {TARGET_DELAY_MS} ms\n")
    md.append(
        "One `batch` job per run through the real handlers: `job_invoker::api::handle` admits it (`POST /jobs`, "
        "which reads the item file whole to check every line) and `job_invoker::worker::handle` runs it, behind "
        "the local Lambda `Invoke` endpoint the tests use, both in the `ferry-bench batch` process, against a "
        "fresh moto (S3 and DynamoDB on loopback) per run. The items are a seeded JSON lines item file under "
        "`datasets/` of the job bucket (`ferry-bench gen-items`). The target runs in a process of its own "
        f"(`ferry-bench batch-target`: axum on 127.0.0.1, every call answered 200 after {TARGET_DELAY_MS} ms), so "
        "its CPU is not counted. Wall time and CPU run from the `POST /jobs` to the end of the last worker run; "
        "CPU is `getrusage(RUSAGE_SELF)` user + system of the driver process, so it includes the handlers' AWS "
        "SDK calls to moto (signing, HTTP, S3 range reads and multipart uploads, DynamoDB progress writes), "
        "which is their real work, and not moto's or the target's own CPU. Before it prints, the driver checks "
        "that the job succeeded, that the results file has one line per item with `seq` 0..N-1 and the "
        "input's ids in input order, all succeeded, and that the target saw exactly N / items-per-call calls "
        "carrying N items, no idempotency key twice, never more calls in flight than the concurrency.\n"
    )
    header = ["items", "concurrency", "items a call", "runs", "items/s", "ceiling", "CPU per item", "of which `POST /jobs`",
              "wall", "peak RSS", "most calls in flight", "worker runs"]
    table_rows = []
    for s, rss, runs in rows:
        ceiling = s["concurrency"] * s["items_per_request"] * 1000 / TARGET_DELAY_MS
        table_rows.append([
            f"{s['items']:,}", s["concurrency"], s["items_per_request"], runs, f"{s['items_per_s']:,.0f}", f"{ceiling:,.0f}",
            f"{s['cpu_us_per_item']:.1f} µs", f"{s['cpu_submit_s'] * 1e6 / s['items']:.1f} µs", secs(s["wall_s"]), mib(rss),
            s["target_max_in_flight"], s["worker_runs"],
        ])
    md.append(table(header, table_rows))
    memory_note = f" The worker is given {worker_mb:,} MB (`infra/template.yaml`)." if worker_mb else ""
    md.append(
        f"\nWith more than one run, the row is the run with the median items/s; peak RSS is the largest of its runs "
        f"(GNU `time`, the whole driver process: API, worker, the item file's upload in 8 MiB parts and the "
        f"streamed check of the results).{memory_note} `ceiling` is concurrency x items a call / {TARGET_DELAY_MS} ms, "
        "what the target's latency allows. `most calls in flight` is the target's count; below the concurrency, "
        "the worker never filled every slot at once. moto, the target and the driver share this machine's cores; "
        "moto answers S3 and DynamoDB from Python on loopback, not at the service's latency.\n"
    )
    moto_notes = "; ".join(
        f"{s['items']:,} items: moto {s['moto_cpu']:.1f} s, target {s['target_cpu']:.1f} s" for s, _, _ in rows
    )
    md.append(f"CPU outside the driver during the run shown (whole process life, upload and check included): {moto_notes}.\n")

    md.append("### The same runs as a Step Functions Distributed Map\n")
    md.append(
        "Published prices, US East (N. Virginia), free tiers left out. The Distributed Map reads the same item "
        "file (ItemReader) and starts one child workflow execution per call (per item, or per ItemBatcher batch "
        "of as many items as ferry sends in a call); the child is one Task state that makes the call (an HTTP "
        "Task, or a Lambda invoke whose own price is not counted here). Transitions assumed: 1 for the parent's Map state, then per child 1 for its start (Step "
        "Functions charges a transition for each child execution a Distributed Map starts) and 1 for its Task "
        "state; every call here succeeded first time, and each retry would add 1. Standard: $0.025 per 1,000 "
        "transitions. Express children instead: per child the start's transition ($0.000025), one request "
        "($1.00 per million) and its duration, a 20 ms call billed as 100 ms (rounded up) at the 64 MB minimum "
        "($0.00001667 per GB-second). Not counted on either side: S3 and DynamoDB requests, and the API's own "
        "price.\n"
    )
    price_rows = []
    for s, _, _ in rows:
        children = -(-s["items"] // s["items_per_request"])
        transitions = 1 + 2 * children
        standard = transitions * SFN_PER_TRANSITION
        express_child = SFN_PER_TRANSITION + SFN_EXPRESS_PER_REQUEST + 0.1 * (64 / 1024) * SFN_EXPRESS_PER_GB_S
        express = SFN_PER_TRANSITION + children * express_child
        row = [
            f"{s['items']:,}", f"{s['items_per_request']}", f"{children:,}",
            f"1 + 2 x {children:,} = {transitions:,} x $0.025 / 1,000 = **{usd(standard)}**",
            f"$0.000025 + {children:,} x ${express_child:.9f} = **{usd(express)}**",
        ]
        if worker_mb:
            gb_s = s["wall_s"] * worker_mb / 1024
            lam = gb_s * LAMBDA_ARM_PER_GB_S + s["worker_runs"] * LAMBDA_PER_REQUEST
            row.append(f"{s['wall_s']:.1f} s x {worker_mb / 1024:.3f} GB x $0.0000133334 + {s['worker_runs']} request = {usd(lam)}")
        price_rows.append(row)
    header = ["items", "items a child", "child executions", "Standard children", "Express children"]
    if worker_mb:
        header.append("ferry's job-worker Lambda for this run's wall time (arm64)")
    md.append(table(header, price_rows))
    unbatched = (1 + 2 * rows[-1][0]["items"]) * SFN_PER_TRANSITION
    md.append(
        f"\nWithout an ItemBatcher the last row is one child per item: 1 + 2 x {rows[-1][0]['items']:,} transitions, "
        f"{usd(unbatched)} Standard. The Lambda column prices the wall time measured here against moto at the "
        "worker's configured memory; on AWS it follows the target's latency and S3's, not moto's.\n"
    )


# ---------------------------------------------------------------- polars and DuckDB (case 8)

PEERS = [("polars", "Python + polars (lazy `scan_csv`)"), ("duckdb", "Python + DuckDB (SQL over `read_csv`)")]
# The goals against the faster peer.
PEER_SPEEDUP = 1.5
ONE_CORE_MB_S = 200


def peer_cmd(engine, d, out, threads=None, extra=()):
    cmd = [PY, ROOT / "bench/peers_votes.py", "--engine", engine]
    if threads:
        cmd += ["--threads", threads]
    return [*cmd, "merge", *extra, *votes_args(d), "-o", out]


def thread_env(one):
    """Each engine's own default (every core), or one thread for all three."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS", "POLARS_MAX_THREADS")}
    if one:
        env.update(RAYON_NUM_THREADS="1", POLARS_MAX_THREADS="1")
    return env


def check_peers_contract(bench_bin):
    """polars, DuckDB and ferry must agree on the contract's corners before their times mean anything."""
    d = DATA / "check"
    run([bench_bin, "gen-votes", "--seed", "2", "--keys", "3000", "--variety", "--out", d])
    weights = ["--weight", "kr=2", "--weight", "na=0.5"]
    ferry_out = d / "ferry-share-peers.csv"
    run([REL / "ferry", "votes", "merge", *weights, *votes_args(d), "-o", ferry_out])
    for engine, _ in PEERS:
        for threads in [None, 1]:
            out = d / f"{engine}-share-{threads or 'n'}.csv"
            run(peer_cmd(engine, d, out, threads, weights))
            problem = same_result(ferry_out, out)
            if problem:
                raise SystemExit(f"bench: {engine} and ferry disagree (share, {threads or 'default'} threads): {problem}")


def ratio_to(ferry_value, peers, key):
    """How many times ferry's `key` (median wall, CPU or peak RSS) the least of the peers' is, and which peer that is."""
    name, rs = min(peers, key=lambda p: key(p[1]))
    return key(rs) / ferry_value, name


def bench_peers_size(args, d, keys, runs, peer_runs, check_single, md):
    files = [d / f"{loc}.csv" for loc in LOCALES]
    mb = sum(f.stat().st_size for f in files) / 1e6
    sides = {}
    outs = {}
    for one in [False, True]:
        mode = "1 thread" if one else "all cores"
        tag = "1" if one else "n"
        env = thread_env(one)
        out = d / f"ferry-peers-{tag}.csv"
        outs[("ferry", one)] = out
        sides[("ferry", one)] = series(
            f"ferry votes merge ({mode})", [REL / "ferry", "votes", "merge", *votes_args(d), "-o", out], runs, env
        )
        for engine, _ in PEERS:
            out = d / f"{engine}-{tag}.csv"
            outs[(engine, one)] = out
            sides[(engine, one)] = series(f"{engine} merge ({mode})", peer_cmd(engine, d, out, 1 if one else None), peer_runs, env)
    reference = outs[("ferry", False)]
    compared = [k for k in outs if k != ("ferry", False) and (check_single or not k[1])]
    for engine, one in compared:
        problem = same_result(reference, outs[(engine, one)])
        if problem:
            raise SystemExit(f"bench: {engine} ({'1 thread' if one else 'all cores'}) and ferry disagree at {keys:,} keys: {problem}")
    rows_out = sum(1 for _ in open(reference, "rb")) - 1
    for out in outs.values():
        out.unlink()

    names = {"ferry": "`ferry votes merge` (Rust)", **dict(PEERS)}
    table_rows = []
    for one in [False, True]:
        for engine in ["ferry", *(e for e, _ in PEERS)]:
            rs = sides[(engine, one)]
            table_rows.append([
                names[engine], "1" if one else "all", len(rs), secs(med(rs)), spread(rs), secs(cpu(rs)), mib(peak(rs)),
                f"{mb / med(rs):,.1f}",
            ])
    md.append(
        f"Four regional files of {keys:,} distinct keys each ({mb:,.1f} MB in all, seed 1), {rows_out:,} global rows; "
        f"{'every side' if check_single else 'each peer on all cores'} wrote the same result as ferry on all cores "
        "(same keys, values equal to 1e-9, same order; the output of its last run).\n"
    )
    md.append(
        table(["implementation", "threads", "runs", "median wall", "range", "median CPU (user+sys)", "peak RSS", "input MB/s"], table_rows)
    )
    lines = []
    for one in [False, True]:
        ferry = sides[("ferry", one)]
        peers = [(engine, sides[(engine, one)]) for engine, _ in PEERS]
        wall, wall_peer = ratio_to(med(ferry), peers, med)
        work, work_peer = ratio_to(cpu(ferry), peers, cpu)
        memory, memory_peer = ratio_to(peak(ferry), peers, peak)
        if not one:
            lines.append(
                f"- All cores: the faster peer ({wall_peer}) takes **{wall:.2f}x** ferry's wall time and the thriftier "
                f"({work_peer}) **{work:.2f}x** its CPU (goal: at least {PEER_SPEEDUP}x each, "
                f"{verdict(wall >= PEER_SPEEDUP and work >= PEER_SPEEDUP)}); ferry's peak RSS is **{1 / memory:.2f}x** "
                f"the leaner peer's ({memory_peer}) (goal: at most 1x, {verdict(memory >= 1)})."
            )
        else:
            lines.append(
                f"- One thread each: the faster peer ({wall_peer}) takes **{wall:.2f}x** ferry's wall time (goal: at "
                f"least {PEER_SPEEDUP}x, that is {PEER_SPEEDUP}x faster than both, {verdict(wall >= PEER_SPEEDUP)}); the "
                f"thriftier ({work_peer}) {work:.2f}x its CPU; ferry's peak RSS is {1 / memory:.2f}x {memory_peer}'s."
            )
            speed = mb / med(ferry)
            lines.append(
                f"- Whole-merge throughput on one core: **{speed:,.0f} MB/s** of input (goal: {ONE_CORE_MB_S} MB/s, "
                f"{verdict(speed >= ONE_CORE_MB_S)})."
            )
    md.append("\n" + "\n".join(lines) + "\n")


def bench_peers(args, bench_bin, md):
    d = DATA / ("votes-quick" if args.quick else "votes")
    if "votes" in args.skip or not all((d / f"{loc}.csv").exists() for loc in LOCALES):
        run([bench_bin, "gen-votes", "--seed", "1", "--keys", str(args.keys), "--out", d])
    check_peers_contract(bench_bin)
    md.append("## 8. Against polars and DuckDB\n")
    md.append(
        "The four regional files of case 1, merged with the default `share` method and written sorted as CSV, by "
        "`ferry votes merge` and by the same contract written as a polars or DuckDB user would write it "
        "(`bench/peers_votes.py`: polars lazy `scan_csv` and `group_by`, DuckDB SQL over `read_csv`; the same "
        "header, validation, duplicate and missing-key rules, the same order, written to a temporary file and "
        "renamed). Each side runs once on every core (its own default) and once on one thread "
        "(`RAYON_NUM_THREADS=1`; `POLARS_MAX_THREADS=1`; DuckDB `SET threads = 1`). The peers' times include "
        "starting Python and importing the engine. Before timing, all three merged the small input of case 1's "
        "check (the contract's corners, with weights), the peers on every core and on one thread, and agreed.\n"
    )
    bench_peers_size(args, d, args.keys, args.runs, args.slow_runs, True, md)
    bench_lambda_paths(args, bench_bin, d, md)
    md.append("### Four times larger\n")
    if args.quick:
        md.append("Not run with `--quick`.\n")
        return
    big = DATA / "votes-4x"
    run([bench_bin, "gen-votes", "--seed", "1", "--keys", str(4 * args.keys), "--out", big])
    try:
        bench_peers_size(args, big, 4 * args.keys, args.slow_runs, args.slow_runs, False, md)
    finally:
        for loc in LOCALES:
            (big / f"{loc}.csv").unlink(missing_ok=True)


LAMBDA_PHASES = {
    "normalizer": ["read_tally_within", "locale_result"],
    "merger": ["read_locale_result", "merge", "to_csv"],
}


def bench_lambda_paths(args, bench_bin, d, md):
    """The two vote Lambdas' work without S3 or startup: `ferry-bench lambda-paths` on case 1's files."""
    template = (ROOT / "infra" / "template.yaml").read_text()
    memory = {"normalizer": memory_of(template, "NormalizerFunction"), "merger": memory_of(template, "MergerFunction")}
    results = d / "locale-results"
    results.mkdir(exist_ok=True)
    upload = d / f"{LOCALES[0]}.csv"
    inputs = []
    for loc in LOCALES:
        out = results / f"{loc}.csv"
        run([REL / "ferry", "votes", "normalize", d / f"{loc}.csv", "-o", out])
        inputs.append(f"{loc}={out}")
    cmd = [bench_bin, "lambda-paths", "--upload", upload, "--memory-mb", memory["normalizer"], "--runs", args.runs, *inputs]
    try:
        measured = []
        for one in [True, False]:
            r = run(cmd, thread_env(one))
            print(f"  lambda-paths ({'1 thread' if one else 'all cores'}): {r.stdout.strip()}", flush=True)
            measured.append(json.loads(r.stdout))
    finally:
        for loc in LOCALES:
            (results / f"{loc}.csv").unlink(missing_ok=True)
        results.rmdir()
    rows = []
    for path, phases in LAMBDA_PHASES.items():
        for m in measured:
            p = m[path]
            rows.append([
                f"{path} ({memory[path]:,} MB)", m["threads"], f"{p['input_mb']:,.1f} MB",
                ", ".join(f"`{ph}` {secs(p['phase_ms'][ph] / 1000)}" for ph in phases),
                secs(p["total_ms"] / 1000), secs(p["cpu_ms"] / 1000), f"{p['mb_s']:,.1f}",
            ])
    md.append("### The Lambda paths\n")
    md.append(
        f"`ferry-bench lambda-paths`: the public `ferry-core` calls the two vote handlers make, in their order, on "
        f"bodies already in memory (no S3, no startup), each path run {args.runs} times in one process: the "
        f"normalizer on the {LOCALES[0]} upload above (`csv::read_tally_within` within what "
        f"`budget::usable_bytes` leaves of the {memory['normalizer']:,} MB `infra/template.yaml` gives "
        "`NormalizerFunction`, then `normalize::locale_result` with `share`), and the merger on the four locale "
        "results `ferry votes normalize` makes of these files (each parsed in turn by `csv::read_locale_result`, "
        "then `merge::merge` with weight 1 and `Global::to_csv`). Phases and total are medians of wall "
        "time (the total also counts letting go of what the path built); CPU is the process's user + system time "
        "per run, every thread counted; MB/s is input over the median total.\n"
    )
    md.append(
        table(
            ["path (template memory)", "threads", "input", "phases (median wall)", "total", "CPU per run", "input MB/s"],
            rows,
        )
    )
    md.append("")


# ---------------------------------------------------------------- main


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    versions = []
    for name, module in [("pandas", "pandas"), ("numpy", "numpy"), ("XlsxWriter", "xlsxwriter"), ("openpyxl", "openpyxl"),
                         ("polars", "polars"), ("DuckDB", "duckdb")]:
        # Only the Python baselines need them: a run of the Rust cases alone may go without.
        try:
            versions.append(f"{name} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    return (
        f"{os.cpu_count()} x {cpu}, {mem / 2**30:.0f} GiB, {platform.system()} {platform.release()}; "
        f"{rustc}; Python {platform.python_version()}, {', '.join(versions)}"
    )


def main():
    global REL
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="small inputs, few runs: try the harness")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--runs", type=int, help="runs of each fast side (default 5; 3 for xlsx)")
    p.add_argument("--slow-runs", type=int, help="runs of each slow Python side (default 3; 2 for XlsxWriter)")
    p.add_argument("--skip", action="append", default=[], choices=["votes", "xlsx", "startup", "consumer", "memory", "batch", "peers"])
    p.add_argument("--bin-dir", default=str(REL), help="the built binaries (default: the release build)")
    args = p.parse_args()
    REL = Path(args.bin_dir).resolve()
    q = args.quick
    args.keys = 20_000 if q else 1_000_000
    args.runs, args.slow_runs = (2, 1) if q else (args.runs or 5, args.slow_runs or 3)
    args.xlsx_rows = 20_000 if q else 1_000_000
    args.xlsx_runs, args.slow_xlsx_runs, args.slowest_xlsx_runs = (1, 1, 1) if q else (args.runs or 3, args.slow_runs or 2, 1)
    args.startup_runs = 3 if q else 20
    args.consumer_batches = 200 if q else 2000

    bench_bin = REL / "ferry-bench"
    for b in [bench_bin, REL / "ferry"]:
        if not b.exists():
            raise SystemExit(f"bench: {b} is missing; run `make bench`, which builds it")
    DATA.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    md = [
        "# Benchmarks\n",
        "Generated by `make bench` (`bench/run.py`); do not edit by hand. Every number below comes from one run "
        "on one machine, all sides in the same run: medians over several runs, peak RSS the largest "
        "maximum resident set size (GNU `time`'s `%M`) of any run of that side.\n",
        f"- Run: {started:%Y-%m-%d %H:%M} UTC{' (--quick: small inputs)' if q else ''}; load average at start {load[0]:.2f}",
        f"- Machine: {machine()}",
        "- Inputs: generated by `ferry-bench` from fixed seeds under `target/bench-data/` (not committed).\n",
    ]
    if REL != ROOT / "target" / "release":
        shown = REL.relative_to(ROOT) if REL.is_relative_to(ROOT) else REL
        md.insert(-1, f"- Binaries: `{shown}`, not the release build: these numbers say nothing about ferry's speed.")
    if "votes" not in args.skip:
        bench_votes(args, bench_bin, md)
    if "xlsx" not in args.skip:
        bench_xlsx(args, bench_bin, md)
    if "startup" not in args.skip:
        bench_startup(args, md)
    if "consumer" not in args.skip:
        bench_consumer(args, bench_bin, md)
    if "memory" not in args.skip:
        bench_memory(args, bench_bin, md)
    if "batch" not in args.skip:
        bench_batch(args, bench_bin, md)
    if "peers" not in args.skip:
        bench_peers(args, bench_bin, md)
    notes = ROOT / "bench" / "FINDINGS.md"
    if notes.exists():
        md.append(notes.read_text())
    Path(args.out).write_text("\n".join(md).rstrip() + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
