#!/bin/bash
# One run: two nodes (two `conference serve` on one Redis), a province briefing spread
# over them, the nodes' /metrics read every second (relayed media by kind and mode).
# $1 = the source tree the nodes run (the load generator runs from this worktree),
# $2 = output prefix.  POINTS (20) and DUR (20) from the environment.
set -u
SRC=$1; OUT=$2
HERE=$(cd "$(dirname "$0")/../../.." && pwd)
D=/tmp/rg/srv-$RANDOM; mkdir -p $D
export CONFERENCE_TOKEN_SECRET=bench-secret-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
CLUSTER=bench$RANDOM
PIDS=()
for N in 1 2; do
  PORT=$((20000 + RANDOM % 10000)); eval PORT$N=$PORT
  mkdir -p $D/n$N
  (cd $D/n$N && PYTHONPATH=$SRC exec python -m conference serve --host 127.0.0.1 --port $PORT \
     --tls off --data-dir $D/n$N/data --ice-host 127.0.0.1 --redis-url redis://127.0.0.1:6379/0 \
     --cluster-name $CLUSTER --node-name n$N > $D/n$N/log.txt 2>&1) &
  PIDS+=($!)
done
for N in 1 2; do
  for i in $(seq 1 60); do grep -q '"listening"' $D/n$N/log.txt 2>/dev/null && break; sleep 0.5; done
done
( while true; do
    for N in 1 2; do
      eval P=\$PORT$N
      T=$(date +%s.%N)
      curl -s http://127.0.0.1:$P/metrics | grep '^conference_relay_' | sed "s/^/$T n$N /"
    done
    sleep 1
  done ) > $OUT-metrics.txt &
SCRAPER=$!
cd $HERE && PYTHONPATH=$HERE python -m conference loadtest --url http://127.0.0.1:$PORT1 --node http://127.0.0.1:$PORT2 \
  --meeting bench-$RANDOM --scenario province --points ${POINTS:-20} --duration ${DUR:-20} --lean \
  --secret $CONFERENCE_TOKEN_SECRET --no-progress --json $D/report.json > $OUT.txt 2>&1
kill $SCRAPER
for P in "${PIDS[@]}"; do kill -TERM $P; done
wait
