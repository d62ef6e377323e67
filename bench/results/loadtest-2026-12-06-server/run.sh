#!/bin/bash
# one run: $1 = the server's source tree (a checkout: "before" and "after" side by side),
# $2 = output file (absolute); env POINTS (20), DUR (20), SCEN (briefing), WORKERS (1), FLOOR, PROCS,
# PIN=1: the server on core 0 and the generator on core 1 (taskset); RT=1: both at a
# real-time priority besides (chrt -f 10: they run as soon as they can, as on an idle
# machine, while the other work on this shared machine waits).
# The load generator is this tree's (`--lean`) unless GEN names another checkout; LTARGS:
# more options for it (e.g. --muted).
set -u
SRC=$1; OUT=$2; W=${WORKERS:-1}
D=/tmp/bw/srv-$RANDOM; mkdir -p $D
PORT=$((20000 + RANDOM % 10000))
export CONFERENCE_TOKEN_SECRET=bench-secret-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
EXTRA=""
if [ "$W" -gt 1 ]; then EXTRA="--workers $W --redis-url redis://127.0.0.1:6379/0 --cluster-name bench$RANDOM --node-name b"; fi
HERE=$(cd "$(dirname "$0")/../../.." && pwd)
SPIN=""; GPIN=""
if [ "${PIN:-0}" = 1 ]; then SPIN="taskset -c 0"; GPIN="taskset -c 1"; fi
if [ "${RT:-0}" = 1 ]; then SPIN="$SPIN chrt -f 10"; GPIN="$GPIN chrt -f 10"; fi
cd $D; PYTHONPATH=$SRC $SPIN python -m conference serve --host 127.0.0.1 --port $PORT --tls off --data-dir $D/data --ice-host 127.0.0.1 $EXTRA > $D/log.txt 2>&1 &
SRV=$!
for i in $(seq 1 60); do grep -q '"listening"' $D/log.txt 2>/dev/null && break; sleep 0.5; done
GEN=${GEN:-$HERE}
# with workers the load test finds every process listening on the port (the supervisor's
# pid would say 0 %); FLOOR: --floor-period
SPID="--server-pid $SRV"; if [ "$W" -gt 1 ]; then SPID=""; fi
cd $GEN && PYTHONPATH=$GEN $GPIN python -m conference loadtest --url http://127.0.0.1:$PORT --meeting bench-$RANDOM --scenario ${SCEN:-briefing} --points ${POINTS:-20} --duration ${DUR:-20} --lean ${FLOOR:+--floor-period $FLOOR} ${PROCS:+--processes $PROCS} ${LTARGS:-} --secret $CONFERENCE_TOKEN_SECRET $SPID --no-progress ${JSON:+--json $JSON} > $OUT 2>&1
kill -TERM $SRV; wait $SRV
