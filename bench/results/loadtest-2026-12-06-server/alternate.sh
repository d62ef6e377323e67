#!/bin/bash
# The before/after runs of this section: $1 = the "before" checkout (git worktree add
# /tmp/server-before 75df63b), $2 = how many alternations (3); env RT=1 for the runs at a
# real-time priority (run.sh), TAG names the files (rt or pinned).  40 points, 30 s,
# the server on core 0 and this tree's lean generator on core 1, before first.
set -u
BEFORE=$1; N=${2:-3}; TAG=${TAG:-pinned}
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$(cd "$HERE/../../.." && pwd)
for i in $(seq 1 $N); do
  for v in before after; do
    if [ $v = before ]; then SRC=$BEFORE; else SRC=$TREE; fi
    PIN=1 POINTS=40 DUR=30 bash $HERE/run.sh $SRC $HERE/$TAG-$v-40-$i.txt
    echo "$v $i: $(grep -E '^server CPU' $HERE/$TAG-$v-40-$i.txt)"
  done
done
