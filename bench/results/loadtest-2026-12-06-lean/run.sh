#!/bin/bash
# One run of the lean generator against this tree's server: $1 = the generator's
# source tree (a checkout: "before" and "after" side by side), $2 = output prefix
# (writes $2.txt and $2.json); env POINTS (20), DUR (20), SCEN (briefing),
# PIN=1: the server on core 0 and the generator on core 1 (taskset).
set -u
GEN=$1; OUT=$2
D=/tmp/bw/lean-$RANDOM; mkdir -p $D
PORT=$((20000 + RANDOM % 10000))
export CONFERENCE_TOKEN_SECRET=bench-secret-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
HERE=$(cd "$(dirname "$0")/../../.." && pwd)
SPIN=""; GPIN=""
if [ "${PIN:-0}" = 1 ]; then SPIN="taskset -c 0"; GPIN="taskset -c 1"; fi
cd $D; PYTHONPATH=$HERE $SPIN python -m conference serve --host 127.0.0.1 --port $PORT --tls off --data-dir $D/data --ice-host 127.0.0.1 > $D/log.txt 2>&1 &
SRV=$!
for i in $(seq 1 60); do grep -q '"listening"' $D/log.txt 2>/dev/null && break; sleep 0.5; done
cd $GEN && PYTHONPATH=$GEN $GPIN python -m conference loadtest --url http://127.0.0.1:$PORT --meeting lean-$RANDOM --scenario ${SCEN:-briefing} --points ${POINTS:-20} --duration ${DUR:-20} --lean --secret $CONFERENCE_TOKEN_SECRET --no-progress --json $OUT.json > $OUT.txt 2>&1
kill -TERM $SRV; wait $SRV
rm -rf $D
