#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the `slurm` tests (CI runs it as root; so can you, on a laptop or
# in a container): Debian's slurm-wlm 22.05 packages, munged (as user munge), slurmctld and slurmd started
# directly (a container has no systemd), a slurm.conf with this machine's CPUs and memory. Idempotent: what runs
# already is left alone. The PIDs go to $SLURM_STATE (default /run/echo-lstm-slurm) for .ci/slurm-down.sh.
set -euo pipefail

STATE=${SLURM_STATE:-/run/echo-lstm-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by echo-lstm's .ci/slurm-up.sh"

[ "$(id -u)" -eq 0 ] || { echo "error: .ci/slurm-up.sh needs root (it installs packages and starts daemons)" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    munge slurm-wlm slurmctld slurmd slurm-client
fi

host=$(hostname -s)
getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts  # slurmctld must resolve its host
mkdir -p "$STATE" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd

alive() { [ -s "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

# The cluster's config: one node, this machine as `slurmd -C` sees it. No cgroups (proctrack/linuxproc,
# task/none: containers rarely delegate them) and no accounting (sacct is unavailable; submitit only warns).
# DefMemPerCPU: without it a job is given the whole node's memory and jobs run one at a time.
node=$(slurmd -C | head -1)
wanted="$MARK
ClusterName=echo
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
  echo "error: $CONF exists and was not written by this script: it is left alone (a cluster of yours?)" >&2
  exit 2
fi
[ -f "$CONF" ] && [ "$(cat "$CONF")" = "$wanted" ] || printf '%s\n' "$wanted" >"$CONF"

if ! alive munged; then
  [ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; }
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi
alive slurmctld || slurmctld -c  # -c: a clean start, no jobs left from an earlier cluster
alive slurmd || slurmd

for _ in $(seq 60); do  # the node registers within seconds
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*) echo "slurm-up: one-node cluster up ($node); PIDs in $STATE"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "error: the SLURM node did not become ready (sinfo: ${state:-no answer}); see $STATE/*.log" >&2
exit 1
