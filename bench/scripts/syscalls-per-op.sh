#!/bin/bash
# System calls, context switches and CPU per operation of one bench
# workload's three daemons (issue 16; bench-results/event-loop.md).
#
#   bench/scripts/syscalls-per-op.sh BENCH ours|reference WORKLOAD OUTDIR
#   python3 bench/scripts/per-op.py OUTDIR
#
# Starts `BENCH --daemon D --only WORKLOAD`, finds the cluster's three
# daemons (by the cluster directory in their CTDB_BASE, taken from the
# first worker's --socket), and runs `perf stat --per-thread` on them from
# the workload's start until its last worker exits. Set PERF_RECORD=1
# (and PERF_ARGS, e.g. "-F 1999") for a `perf record` instead.
set -u
B=$1; D=$2; W=$3; O=$4
mkdir -p "$O"
"$B" --daemon "$D" --only "$W" --out "$O/bench" > "$O/bench.log" 2>&1 &
BP=$!
for _ in $(seq 1200); do grep -q "$D: $W" "$O/bench.log" && break; sleep 0.05; done
sock=""
for _ in $(seq 400); do
  sock=$(for c in $(pgrep -P $BP); do tr '\0' '\n' < /proc/$c/cmdline 2>/dev/null | grep -A1 -- '^--socket$' | tail -1; done | head -1)
  [ -n "$sock" ] && break; sleep 0.02
done
dir=${sock%/node.*}
pids=""
for p in $(pgrep -x ctdbd); do
  pp=$(awk '{print $4}' /proc/$p/stat 2>/dev/null)
  [ "$(cat /proc/$pp/comm 2>/dev/null)" = ctdbd ] && continue   # a daemon's child
  tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -q "^CTDB_BASE=$dir/" && pids="$pids,$p"
done
pids=${pids#,}
echo "$dir $pids" > "$O/pids"
uptime > "$O/load"
cat > "$O/waitw.sh" <<EOW
#!/bin/bash
while pgrep -P $BP -f ' worker ' >/dev/null; do sleep 0.05; done
EOW
chmod +x "$O/waitw.sh"
if [ -n "${PERF_RECORD:-}" ]; then
  perf record ${PERF_ARGS:--F 1999} -p "$pids" -o "$O/perf.data" -- "$O/waitw.sh" >/dev/null 2>&1
else
  perf stat --per-thread -e raw_syscalls:sys_enter,context-switches,task-clock,'syscalls:sys_enter_*' \
    -p "$pids" -o "$O/perf.txt" -- "$O/waitw.sh" >/dev/null 2>&1
fi
uptime >> "$O/load"
wait $BP
