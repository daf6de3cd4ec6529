#!/usr/bin/env bash
# Short fuzzing run of every cargo-fuzz target (libFuzzer, AddressSanitizer): replays the
# corpus in fuzz/corpus/<target>/, then mutates for FUZZ_SECONDS (default 10) per target.
# Exits non-zero, printing the input, when a target crashes, panics, times out (10 s per
# input) or passes 2 GiB of memory.
#
# Usage: fuzz/smoke.sh [TARGET...]          (default: every target)
#   FUZZ_SECONDS=600 fuzz/smoke.sh api      (a long run of one target)
#
# Needs cargo-fuzz (installed from crates.io when missing) and a nightly toolchain, or the
# stable one with RUSTC_BOOTSTRAP=1 (used when no nightly is installed). Builds go to
# $FUZZ_TARGET_DIR (default ~/.cache/statecar/target-fuzz); the first takes minutes.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-10}"
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/statecar/target-fuzz}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  # The sanitizer and coverage flags are unstable; the stable compiler accepts them with this.
  export RUSTC_BOOTSTRAP=1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  echo "==> fuzzing $t for ${seconds}s (corpus fuzz/corpus/$t)"
  mkdir -p "$work/$t" "$work/artifacts/$t"
  # New inputs go to the temporary corpus; the committed one is only read.
  if ! cargo "${toolchain[@]}" fuzz run --target-dir "$target_dir" "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 2>"$work/$t.log"; then
    tail -n 60 "$work/$t.log"
    for f in "$work/artifacts/$t"/*; do
      [ -f "$f" ] || continue
      echo "--- failing input $(basename "$f") (base64):"
      base64 -w 0 "$f"; echo
      cp "$f" "artifacts-$t-$(basename "$f")" 2>/dev/null || true
    done
    echo "fuzz target $t failed; the input is saved as fuzz/artifacts-$t-*" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb)' "$work/$t.log" || true
done
echo "==> fuzz smoke passed: ${targets[*]}"
