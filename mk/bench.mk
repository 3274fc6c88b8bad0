# Benchmarks against the approaches users would otherwise pick (`make bench`, never part of `make test`):
#   bench/run.py generates seeded inputs under target/bench-data/, times every side in one run and
#   writes BENCHMARKS.md. Python baselines (pandas, XlsxWriter, openpyxl) come from
#   bench/requirements.txt into .venv; GNU time measures each child's peak RSS.

APT_PACKAGES += time
BENCH_STEPS += bench-run

# The drivers and the CLI must build; a Lambda package that does not build yet is reported as
# missing in BENCHMARKS.md rather than failing the run.
BENCH_REQUIRED := -p ferry-cli -p ferry-bench
BENCH_LAMBDAS := regional-normalizer global-merger job-invoker notify

.PHONY: bench-run bench-quick

$(VENV)/.bench-installed: bench/requirements.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

bench-run: $(VENV)/.bench-installed
	$(CARGO) build --release --quiet $(BENCH_REQUIRED)
	@for p in $(BENCH_LAMBDAS); do $(CARGO) build --release --quiet -p $$p || echo "bench: $$p does not build; its functions are reported as missing" >&2; done
	@# The deployed arm64 zips, built fresh so that their sizes belong to this run.
	rm -f target/lambda/*/bootstrap.zip
	$(MAKE) --no-print-directory build || echo "bench: make build failed; arm64 zip sizes are reported as not built" >&2
	$(PY) bench/run.py

# A minute's run on small inputs, to try the harness; writes target/bench-data/BENCHMARKS-quick.md.
bench-quick: deps $(VENV)/.bench-installed
	$(CARGO) build --release --quiet $(BENCH_REQUIRED)
	$(PY) bench/run.py --quick --out target/bench-data/BENCHMARKS-quick.md
