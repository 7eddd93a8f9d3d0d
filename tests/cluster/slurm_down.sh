#!/usr/bin/env bash
# Stop the daemons tests/cluster/slurm_up.sh started (by the pid files in its state directory).
set -uo pipefail
STATE=$(realpath -m "${1:?state directory}")
for daemon in slurmd slurmctld; do
  if [[ -f "$STATE/$daemon.pid" ]]; then
    kill "$(cat "$STATE/$daemon.pid")" 2>/dev/null
  fi
done
