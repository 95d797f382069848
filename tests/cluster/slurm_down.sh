#!/usr/bin/env bash
# Stop the throw-away SLURM cluster started by slurm_up.sh.
#
# WHY by pid file: the machine is shared; only the daemons whose pid files slurm_up.sh wrote
# under /run/bismap-slurm are stopped (never pkill/killall by name). Jobs are cancelled first
# so no slurmstepd or in-job snakemake outlives its daemon.
#
#   --keep-munge    leave munged running (used by slurm_up.sh when it restarts slurm only)
#   --purge-state   also delete spool dirs and logs (next start is from a clean state)
set -uo pipefail

STATE=/run/bismap-slurm
LOGDIR=/var/log/bismap-slurm
SPOOL=/var/spool/bismap-slurm
KEEP_MUNGE=0
PURGE=0
for arg in "$@"; do
  case "$arg" in
    --keep-munge) KEEP_MUNGE=1 ;;
    --purge-state) PURGE=1 ;;
    *) echo "slurm_down: unknown option $arg" >&2; exit 2 ;;
  esac
done
log() { echo "slurm_down: $*"; }

alive() {  # alive <pid> <expected comm>
  [ -d "/proc/$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

stop() {  # stop <pidfile> <comm>: TERM, wait up to 10 s, then KILL; only that exact pid
  local pidfile="$1" comm="$2" pid
  [ -s "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if alive "$pid" "$comm"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" "$comm" || break; sleep 0.1; done
    if alive "$pid" "$comm"; then
      log "$comm ($pid) ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    log "stopped $comm ($pid)"
  fi
  rm -f "$pidfile"
}

# Cancel jobs while slurmctld is still there, and give them a moment to leave the node.
if [ -s "$STATE/slurmctld.pid" ] && alive "$(cat "$STATE/slurmctld.pid")" slurmctld; then
  scancel --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 50); do
    [ -z "$(squeue -h -t running,completing,pending -o %i 2>/dev/null)" ] && break
    sleep 0.2
  done
fi

stop "$STATE/slurmd.pid" slurmd
stop "$STATE/slurmctld.pid" slurmctld
if [ "$KEEP_MUNGE" = 0 ]; then
  stop "$STATE/munged.pid" munged
fi

if [ "$PURGE" = 1 ]; then
  rm -rf "$SPOOL" "$LOGDIR"
  log "purged $SPOOL and $LOGDIR"
fi
exit 0
