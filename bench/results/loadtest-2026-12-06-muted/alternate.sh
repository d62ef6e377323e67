#!/bin/bash
# Open and muted microphones alternating, the same server tree (this one), $1 rounds;
# env as ../loadtest-2026-12-06-server/run.sh (POINTS, DUR, PIN, SCEN, WORKERS).
set -u
HERE=$(cd "$(dirname "$0")" && pwd); TREE=$(cd "$HERE/../../.." && pwd)
for i in $(seq 1 ${1:-3}); do
  bash "$HERE/../loadtest-2026-12-06-server/run.sh" "$TREE" "$HERE/open-${POINTS:-40}-$i.txt"
  LTARGS=--muted bash "$HERE/../loadtest-2026-12-06-server/run.sh" "$TREE" "$HERE/muted-${POINTS:-40}-$i.txt"
done
