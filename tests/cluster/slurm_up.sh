#!/usr/bin/env bash
# Bring up a throw-away single-node SLURM cluster on localhost (Debian 12 packages, no systemd).
#
# WHY: the pipeline's SLURM profile must be tested against a real slurmctld/slurmd, and CI has
# neither a cluster nor GPUs. One node, two partitions (`cpu` default, `gpu`), N fake GPUs whose
# gres.conf File= entries point at character devices (slurm refuses plain files).
#
# Idempotent: when the daemons this script started are alive and the generated config is
# unchanged, it only checks that the node is up. A changed config (GPU count, cgroup mode)
# restarts the daemons (gres changes need a full restart, `scontrol reconfigure` is not enough).
#
# Exit codes: 0 up, 1 failed to come up (log tails printed), 3 packages unavailable.
#
# Knobs (environment):
#   BISMAP_SLURM_GPUS=1        number of fake GPUs on the node (0 = no gpu gres at all)
#   BISMAP_SLURM_CGROUP=0      1 = proctrack/cgroup + task/cgroup with ConstrainRAMSpace, so
#                              sbatch --mem is enforced (OUT_OF_MEMORY); 0 = linuxproc, no enforcement
#   BISMAP_SLURM_CPUS=$(nproc) CPUs advertised for the node
#   BISMAP_SLURM_MEM_FRACTION=85   percent of the memory slurmd detects that is offered to jobs
#   BISMAP_SLURM_WAIT=30       seconds to wait for the node to become idle
#   BISMAP_SLURM_FORCE=0       1 = overwrite an /etc/slurm/slurm.conf this script did not write
#
# Everything this script starts is recorded under $STATE (pid files); slurm_down.sh stops
# exactly those, never by process name.
set -euo pipefail

GPUS="${BISMAP_SLURM_GPUS:-1}"
CGROUP="${BISMAP_SLURM_CGROUP:-0}"
# nproc honours OMP_NUM_THREADS (1 under the test suite): the node would get 1 CPU and a 2-task job never starts
CPUS="${BISMAP_SLURM_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}"
MEM_FRACTION="${BISMAP_SLURM_MEM_FRACTION:-85}"
WAIT="${BISMAP_SLURM_WAIT:-30}"
FORCE="${BISMAP_SLURM_FORCE:-0}"

NODE=localhost
STATE=/run/bismap-slurm                 # our pid files and markers
LOGDIR=/var/log/bismap-slurm
SPOOL=/var/spool/bismap-slurm
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARK="# written by bismap tests/cluster/slurm_up.sh"
MUNGE_PID=/run/munge/bismap-munged.pid  # munged runs as `munge` and cannot write into $STATE
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "slurm_up: ERROR: $*" >&2; exit 1; }
log() { echo "slurm_up: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (starts munged/slurmctld/slurmd and writes /etc/slurm)"
case "$GPUS" in ''|*[!0-9]*) die "BISMAP_SLURM_GPUS must be a non-negative integer, got '$GPUS'";; esac
case "$CGROUP" in 0|1) ;; *) die "BISMAP_SLURM_CGROUP must be 0 or 1, got '$CGROUP'";; esac

# --- 1. packages ------------------------------------------------------------------------------
need=()
for pkg in munge slurmctld slurmd slurm-client; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]} (apt-get --no-install-recommends)"
  export DEBIAN_FRONTEND=noninteractive
  # exit 3 = packages unavailable (tests skip on it instead of failing)
  command -v apt-get >/dev/null || { echo "slurm_up: ERROR: no apt-get to install ${need[*]}" >&2; exit 3; }
  apt-get update -q >/dev/null || { echo "slurm_up: ERROR: apt-get update failed" >&2; exit 3; }
  # policy-rc.d keeps apt from starting services; we start the daemons ourselves below.
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
    || { echo "slurm_up: ERROR: apt-get install ${need[*]} failed" >&2; exit 3; }
fi

alive() {  # alive <pidfile> <expected comm>: pid file names a running process with that name
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

dump_logs() {
  echo "----- sinfo -----" >&2; sinfo -N -l 2>&1 | tail -n 5 >&2 || true
  echo "----- scontrol show node -----" >&2; scontrol show node "$NODE" 2>&1 | tail -n 20 >&2 || true
  for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" "$LOGDIR/munged.log"; do
    echo "----- tail $f -----" >&2; tail -n 30 "$f" >&2 2>/dev/null || echo "(missing)" >&2
  done
}

# --- 2. generated config --------------------------------------------------------------------
mkdir -p "$STATE" "$LOGDIR" "$SPOOL/ctld" "$SPOOL/d" "$CONF_DIR"

detected_mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
[ -n "$detected_mem" ] || die "slurmd -C did not report RealMemory"
real_mem=$(( detected_mem * MEM_FRACTION / 100 ))   # must not exceed what slurmd detects

gres_files=()
if [ "$GPUS" -gt 0 ]; then
  if [ "$GPUS" -le 5 ]; then
    all=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom)
    gres_files=("${all[@]:0:$GPUS}")
  else  # more fake GPUs than handy devices: make /dev/null-like char nodes
    mkdir -p "$STATE/fakegpu"
    for ((i = 0; i < GPUS; i++)); do
      [ -c "$STATE/fakegpu/gpu$i" ] || mknod "$STATE/fakegpu/gpu$i" c 1 3
      gres_files+=("$STATE/fakegpu/gpu$i")
    done
  fi
fi

new_conf="$(mktemp)"; new_gres="$(mktemp)"; new_cg="$(mktemp)"
trap 'rm -f "$new_conf" "$new_gres" "$new_cg"' EXIT
{
  echo "$MARK (gpus=$GPUS cgroup=$CGROUP)"
  cat <<EOF
ClusterName=bismap
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ReturnToService=2
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmdSpoolDir=$SPOOL/d
StateSaveLocation=$SPOOL/ctld
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
# squeue is the only status source without slurmdbd: keep finished jobs visible long enough
# (the snakemake plugin needs MinJobAge >= 3 x its status interval).
MinJobAge=600
# scancel: SIGTERM, then SIGKILL after KillWait seconds
KillWait=5
InactiveLimit=0
EOF
  if [ "$CGROUP" = 1 ]; then
    echo "ProctrackType=proctrack/cgroup"
    echo "TaskPlugin=task/cgroup,task/affinity"
  else
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
  fi
  if [ "$GPUS" -gt 0 ]; then
    echo "GresTypes=gpu"
    echo "NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$real_mem Gres=gpu:fake:$GPUS State=UNKNOWN"
  else
    echo "NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$real_mem State=UNKNOWN"
  fi
  echo "PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP"
  echo "PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP"
} >"$new_conf"
{
  echo "$MARK"
  if [ "$GPUS" -gt 0 ]; then
    (IFS=,; echo "NodeName=$NODE Name=gpu Type=fake File=${gres_files[*]}")
  fi
} >"$new_gres"
{
  echo "$MARK"
  # Never ConstrainDevices: the fake GPUs are /dev/null etc., which every job needs.
  cat <<EOF
CgroupPlugin=autodetect
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainDevices=no
EOF
} >"$new_cg"

if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARK" && [ "$FORCE" != 1 ]; then
  die "$CONF was not written by this script; set BISMAP_SLURM_FORCE=1 to overwrite it"
fi

same_conf=1
cmp -s "$new_conf" "$CONF" || same_conf=0
cmp -s "$new_gres" "$CONF_DIR/gres.conf" || same_conf=0
if [ "$CGROUP" = 1 ]; then cmp -s "$new_cg" "$CONF_DIR/cgroup.conf" || same_conf=0; fi

wait_node() {  # wait_node <accepted states regex>: poll sinfo until the node is in one of them
  local state="" t0=$SECONDS
  while (( SECONDS - t0 < WAIT )); do
    state="$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1 || true)"
    if [[ "$state" =~ ^($1)$ ]]; then echo "$state"; return 0; fi
    sleep 0.3
  done
  echo "slurm_up: ERROR: node $NODE is '${state:-unreachable}' after ${WAIT}s, expected $1" >&2
  dump_logs
  return 1
}

if [ "$same_conf" = 1 ] && alive "$STATE/slurmctld.pid" slurmctld && alive "$STATE/slurmd.pid" slurmd; then
  # Already up with this config: running jobs are fine (mix/alloc), a broken node is not.
  state="$(wait_node 'idle|mix|mixed|alloc|allocated|comp|completing')" || exit 1
  log "already up ($state): slurmctld=$(cat "$STATE/slurmctld.pid") slurmd=$(cat "$STATE/slurmd.pid") gpus=$GPUS cgroup=$CGROUP"
  exit 0
fi

# Something differs or is down: stop whatever we started before, then start fresh.
if [ -e "$STATE/slurmctld.pid" ] || [ -e "$STATE/slurmd.pid" ]; then
  log "config changed or daemons down: restarting"
  bash "$HERE/slurm_down.sh" --keep-munge
fi

install -m 644 "$new_conf" "$CONF"
install -m 644 "$new_gres" "$CONF_DIR/gres.conf"
if [ "$CGROUP" = 1 ]; then install -m 644 "$new_cg" "$CONF_DIR/cgroup.conf"
elif [ -e "$CONF_DIR/cgroup.conf" ] && head -n 1 "$CONF_DIR/cgroup.conf" | grep -qF "$MARK"; then
  rm -f "$CONF_DIR/cgroup.conf"
fi

# --- 3. munge ---------------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munge already works (reusing the running munged)"
else
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
  touch "$LOGDIR/munged.log"; chown munge:munge "$LOGDIR/munged.log"
  rm -f "$MUNGE_PID"
  runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" --log-file="$LOGDIR/munged.log" \
    || { dump_logs; die "munged failed to start"; }
  for _ in $(seq 50); do [ -s "$MUNGE_PID" ] && break; sleep 0.1; done
  cp "$MUNGE_PID" "$STATE/munged.pid"   # recorded: we started it, slurm_down.sh stops it
  munge -n | unmunge >/dev/null || { dump_logs; die "munge -n | unmunge fails"; }
fi

# --- 4. slurm daemons -------------------------------------------------------------------------
/usr/sbin/slurmctld -c || { dump_logs; die "slurmctld failed to start"; }       # -c: drop old queue
/usr/sbin/slurmd -N "$NODE" || { dump_logs; die "slurmd failed to start"; }
state="$(wait_node 'idle')" || exit 1
alive "$STATE/slurmctld.pid" slurmctld || { dump_logs; die "slurmctld died"; }
alive "$STATE/slurmd.pid" slurmd || { dump_logs; die "slurmd died"; }
log "up ($state): munged=$(cat "$STATE/munged.pid" 2>/dev/null || echo reused) slurmctld=$(cat "$STATE/slurmctld.pid") slurmd=$(cat "$STATE/slurmd.pid") gpus=$GPUS cgroup=$CGROUP partitions: cpu (default), gpu"
