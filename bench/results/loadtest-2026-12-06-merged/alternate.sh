#!/bin/bash
# The merged tree against main before this session's merges (8e64d6b: the lean generator
# reading headers, ICE restart, system DTLS, but not the per-packet path, the suite speed,
# the recording handover or the gated relays): $1 = the "before" checkout
# (git worktree add /tmp/server-before 8e64d6b), $2 = alternations (2).  40 points, 30 s,
# the server on core 0 and this tree's lean generator on core 1 (PIN=1), normal priority,
# before first.  One run is ../loadtest-2026-12-06-server/run.sh.
set -u
BEFORE=$1; N=${2:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$(cd "$HERE/../../.." && pwd)
for i in $(seq 1 $N); do
  for v in before after; do
    if [ $v = before ]; then SRC=$BEFORE; else SRC=$TREE; fi
    PIN=1 POINTS=${POINTS:-40} DUR=30 bash $HERE/../loadtest-2026-12-06-server/run.sh $SRC $HERE/pinned-$v-${POINTS:-40}-$((i + ${FIRST:-0})).txt
    echo "$v $i: $(grep -E '^server CPU' $HERE/pinned-$v-${POINTS:-40}-$((i + ${FIRST:-0})).txt)"
  done
done
