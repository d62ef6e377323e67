#!/bin/bash
# one run: $1 = workers (1 or 2), $2 = output file
set -u
W=$1; OUT=$2
D=/tmp/bw/srv-$W-$RANDOM; mkdir -p $D
PORT=$((20000 + RANDOM % 10000))
export CONFERENCE_TOKEN_SECRET=bench-secret-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
EXTRA=""
if [ "$W" -gt 1 ]; then EXTRA="--workers $W --redis-url redis://127.0.0.1:6379/0 --cluster-name bench$RANDOM --node-name b"; fi
cd $D; exec_dummy=1; python -m conference serve --host 127.0.0.1 --port $PORT --tls off --data-dir $D/data --ice-host 127.0.0.1 $EXTRA > $D/log.txt 2>&1 &
SRV=$!
for i in $(seq 1 60); do grep -q '"listening"' $D/log.txt 2>/dev/null && break; sleep 0.5; done
cd /work/main && python -m conference loadtest --url http://127.0.0.1:$PORT --meeting bench-$RANDOM --scenario ${SCEN:-briefing} --points ${POINTS:-20} --duration ${DUR:-20} --lean --secret $CONFERENCE_TOKEN_SECRET --no-progress > $OUT 2>&1
kill -TERM $SRV; wait $SRV
