#!/usr/bin/env bash
# The demo over several seeds, each a run of its own (runs/seed<N>/ beside the checkout, or
# under $RUNS), then the seed table: each score per seed, their spread and sd, and the spread
# the questions alone would give. README's demo table and docs/demo.md are made with it.
#
#   scripts/demo_seeds.sh 0 1 2
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-$root/runs}
[ $# -ge 2 ] || { echo "usage: $0 SEED SEED [SEED ...]" >&2; exit 2; }
tables=()
for seed in "$@"; do
    "$root/.venvs/core/bin/snakemake" --snakefile "$root/Snakefile" --directory "$runs/seed$seed" \
        --cores all --config "seed=$seed"
    tables+=("$seed=$runs/seed$seed")
done
"$root/.venvs/core/bin/python" -m shadowft.report seeds "${tables[@]}"
