#!/usr/bin/env bash
# Issue 20's fair test, CPU reduced version (protocol: docs/_drafts/fixes.md, section
# "results/ablation — the fair test"). One run at a time, niced; interleaved so that
# whatever finishes first gives both arms. Re-running resumes every unfinished run from its
# checkpoint (ablate resumes; checkpoints every 50 steps) and reuses every finished eval.json.
set -u
cd "$(dirname "$0")/../../.."
OUT=docs/archive/fair_test/cpu96
PY=${PY:-/work/main/.venv/bin/python}
# the code of one commit, frozen, so later edits in the worktree do not change running arms
COMMIT=${COMMIT:-$(git rev-parse HEAD)}
SNAP=/tmp/collapsekit_fair_$COMMIT
if [ ! -d "$SNAP" ]; then mkdir -p "$SNAP" && git archive "$COMMIT" collapsekit | tar -x -C "$SNAP"; fi
echo "=== code: commit $COMMIT ($SNAP)" >&2
export PYTHONPATH=$SNAP OMP_NUM_THREADS=2
for seeds in 1 2 3; do
  for method in mocov2 local+zca; do
    echo "=== $(date -u +%FT%TZ) $method seeds=$seeds" >&2
    nice -n 10 "$PY" -m collapsekit ablate --budget fair96 --methods "$method" \
      --seeds "$seeds" --out "$OUT" --device cpu --quiet || exit $?
  done
done
echo "=== $(date -u +%FT%TZ) done" >&2
