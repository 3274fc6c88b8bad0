# Deploy rehearsal: infra/template.yaml translated locally (aws-sam-translator), deployed into moto,
# and every function's debug binary run through it with its deployed environment and its own role
# (infra/rehearse, README "Before your first deploy"). No Docker, no network.
#   make rehearse       build the binaries if needed, then rehearse the real template
#   make test-rehearse  the rehearsal's tests (the real template, and each broken copy under
#                       infra/rehearse/faults/); in `make test`, which builds the binaries first

TEST_STEPS += test-rehearse

.PHONY: rehearse test-rehearse

rehearse: deps-python
	$(CARGO) build --workspace --bins
	cd infra && ../$(PY) -m rehearse

test-rehearse: deps-python
	cd infra && ../$(PY) -m unittest --quiet test_rehearse
