#!/usr/bin/env bash
# The boundaries ARCHITECTURE.md states, checked on every `make test`:
# - ferry-aws is the only crate under crates/ that depends on an AWS SDK crate (aws-sdk-*,
#   aws-smithy-*), so every SDK call and SDK error stays behind its types;
# - ferry-core depends on nothing that speaks AWS, Lambda or HTTP;
# - no source file under crates/*/src is over 500 lines, except those ARCHITECTURE.md names with
#   the reason (a line "Over 500 lines: `path`").
set -euo pipefail
cd "$(dirname "$0")/.."
status=0

for toml in crates/*/Cargo.toml; do
  crate=$(basename "$(dirname "$toml")")
  [ "$crate" = ferry-aws ] && continue
  if grep -nE '^(aws-sdk-|aws-smithy-)' "$toml"; then
    echo "$toml: only ferry-aws may depend on the AWS SDK" >&2
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
