#!/usr/bin/env bash
# Stop what .ci/slurm-up.sh started, by the PIDs it recorded (nothing else is touched).
set -uo pipefail

STATE=${SLURM_STATE:-/run/echo-lstm-slurm}
for daemon in slurmd slurmctld munged; do
  file="$STATE/$daemon.pid"
  [ -s "$file" ] || continue
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$file"
done
echo "slurm-down: stopped"
