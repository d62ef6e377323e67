#!/bin/bash
# Profile the server during a 40-point briefing: $1 = the server's source tree, $2 = output
# prefix.  The server runs on core 0, this tree's lean generator on core 1 (as run.sh, PIN=1);
# py-spy samples the server (Python frames, idle samples left out) and perf the same
# process (C and kernel frames) for SAMPLE
# seconds from WAIT seconds after the generator starts (the join phase is over by then).
set -u
SRC=$1; OUT=$2
D=/tmp/bw/prof-$RANDOM; mkdir -p $D
PORT=$((20000 + RANDOM % 10000))
export CONFERENCE_TOKEN_SECRET=bench-secret-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
HERE=$(cd "$(dirname "$0")/../../.." && pwd)
SERVE="python -m conference"
# MODE=cprofile: a CPU-time cProfile of the same window instead (bench/profile_server.py)
if [ "${MODE:-pyspy}" = cprofile ]; then SERVE="python $SRC/bench/profile_server.py $OUT.prof"; fi
# MODE=loop: the event loop's CPU time by callback (this tree's bench/loop_profile.py)
if [ "${MODE:-pyspy}" = loop ]; then SERVE="python $HERE/bench/loop_profile.py $OUT.loop.json"; fi
RTP=""; [ "${RT:-0}" = 1 ] && RTP="chrt -f 10"  # RT=1: both at a real-time priority (run.sh)
cd $D; PYTHONPATH=$SRC taskset -c 0 $RTP $SERVE serve --host 127.0.0.1 --port $PORT --tls off --data-dir $D/data --ice-host 127.0.0.1 > $D/log.txt 2>&1 &
SRV=$!
for i in $(seq 1 60); do grep -q '"listening"' $D/log.txt 2>/dev/null && break; sleep 0.5; done
cd $HERE && PYTHONPATH=$HERE taskset -c 1 $RTP python -m conference loadtest --url http://127.0.0.1:$PORT --meeting prof-$RANDOM --scenario briefing --points ${POINTS:-40} --duration ${DUR:-45} --lean --secret $CONFERENCE_TOKEN_SECRET --no-progress > $OUT.loadtest.txt 2>&1 &
GENPID=$!
sleep ${WAIT:-22}
if [ "${MODE:-pyspy}" = cprofile ] || [ "${MODE:-pyspy}" = loop ]; then
  kill -USR1 $SRV; sleep ${SAMPLE:-25}; kill -USR2 $SRV
elif [ "${PERF:-1}" = 1 ]; then
  perf record -F 499 -g -p $SRV -o $OUT.perf.data -- sleep ${SAMPLE:-25} > $OUT.perf.log 2>&1 &
  PERFPID=$!
fi
[ "${MODE:-pyspy}" = pyspy ] && py-spy record --pid $SRV --duration ${SAMPLE:-25} --rate ${RATE:-200} --format raw --output $OUT.pyspy.txt --nonblocking > $OUT.pyspy.log 2>&1
[ "${MODE:-pyspy}" = pyspy ] && [ "${PERF:-1}" = 1 ] && wait $PERFPID
wait $GENPID
kill -TERM $SRV; wait $SRV
