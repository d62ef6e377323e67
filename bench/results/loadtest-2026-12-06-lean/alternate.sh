#!/bin/bash
# Alternate the generator of 75df63b ("before": a checkout at $BEFORE) and of the commit
# measured ("after": a checkout at $AFTER) against this tree's server, K rounds (default
# 3) at POINTS (default 20).  The text reports go to $RESULTS (default: here) as
# {before,after}-N-R.txt, the JSON reports to $RAW (default /tmp/lean-raw: ~200 kB each);
# then: python summary.py $RAW --json $RESULTS/summary-N.json
# The "before" checkout is 75df63b plus the commit that makes the load test report the
# generator's packets (runner/report/sim only: no change to what the points do):
#   git worktree add /tmp/lean-before 75df63b && cd /tmp/lean-before && git cherry-pick 1268a50
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BEFORE=${BEFORE:-/tmp/lean-before}; AFTER=${AFTER:-/tmp/lean-after}
RESULTS=${RESULTS:-$HERE}; RAW=${RAW:-/tmp/lean-raw}; N=${POINTS:-20}; K=${K:-3}
mkdir -p "$RAW"
for r in $(seq 1 $K); do
  for side in before after; do
    tree=$BEFORE; [ $side = after ] && tree=$AFTER
    POINTS=$N "$HERE/run.sh" "$tree" "$RAW/$side-$N-$r"
    mv "$RAW/$side-$N-$r.txt" "$RESULTS/$side-$N-$r.txt"
    echo "$side $N $r: $(grep 'load generator' "$RESULTS/$side-$N-$r.txt")"
  done
done
