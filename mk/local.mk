# `make local`: moto, every resource the functions need and the notification provider on loopback,
# for `cargo lambda watch` at the workspace root (README, "Events and local invocation"). It prints
# the functions' environment, writes it to $(LOCAL_ENV) for `cargo lambda watch --env-file`, and runs
# until Ctrl-C. The bins are built as `make test` builds them, so watch reuses that build.

LOCAL_ENV ?= $${CARGO_TARGET_DIR:-$(CURDIR)/target}/ferry-local.env

.PHONY: local
local: deps
	$(CARGO) build --quiet --workspace --bins
	"$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug/ferry-demo" setup --env-file "$(LOCAL_ENV)"
