#!/usr/bin/env bash
# The boundaries ARCHITECTURE.md states, checked on every `make test`:
# - the AWS SDK: a production crate (every crate under crates/ except ferry-aws, ferry-testkit and
#   ferry-demo) names no AWS SDK crate (aws-sdk-*, aws-smithy-*) in any dependency section, so every
#   SDK call and SDK error stays behind ferry-aws's types. ferry-testkit, tests/ and bench/ may: they
#   stand in for AWS (provision it, seed it, read behind the code under test) and inject its faults.
#   ferry-demo, a binary over ferry-testkit, needs none and may not either;
# - test support: no crate under crates/ except ferry-demo depends on ferry-testkit, and none on
#   ferry-demo, in any section (dependencies, dev-dependencies, build-dependencies, per target);
# - ferry-core depends on nothing that speaks AWS, Lambda or HTTP;
# - no source file under crates/*/src is over 500 lines, except those ARCHITECTURE.md names with
#   the reason (a line "Over 500 lines: `path`").
set -euo pipefail
cd "$(dirname "$0")/.."
status=0

# A dependency on `$1` (an extended regex of package names) in the manifest `$2`: its key, its own
# table (`[dependencies.NAME]`), or a renamed dependency's `package = "..."`.
depends_on() {
  grep -nE "^[[:space:]]*($1)[[:space:]]*(\.|=)|^\[.*dependencies\.($1)\]|package[[:space:]]*=[[:space:]]*\"($1)\"" "$2"
}

for toml in crates/*/Cargo.toml; do
  crate=$(basename "$(dirname "$toml")")
  case "$crate" in
    ferry-aws | ferry-testkit) ;;
    *)
      if depends_on 'aws-sdk-[a-z0-9-]+|aws-smithy-[a-z0-9-]+' "$toml"; then
        echo "$toml: only ferry-aws and the stand-ins of ferry-testkit name an AWS SDK crate" >&2
        status=1
      fi
      ;;
  esac
  [ "$crate" = ferry-demo ] && continue
  if depends_on 'ferry-testkit|ferry-demo' "$toml"; then
    echo "$toml: only ferry-demo, tests/ and bench/ may depend on test support (ferry-testkit); nothing depends on ferry-demo" >&2
    status=1
  fi
done

if grep -nE '^(aws-|lambda_|reqwest|axum|hyper|tokio)' crates/ferry-core/Cargo.toml; then
  echo "crates/ferry-core/Cargo.toml: ferry-core is pure: no AWS, Lambda, HTTP or runtime crates" >&2
  status=1
fi

while IFS= read -r file; do
  lines=$(wc -l < "$file")
  if [ "$lines" -gt 500 ] && ! grep -qF "Over 500 lines: \`$file\`" ARCHITECTURE.md; then
    echo "$file: $lines lines, over 500 (split it, or say why in ARCHITECTURE.md)" >&2
    status=1
  fi
done < <(find crates -path '*/src/*' -name '*.rs' | sort)

exit $status
