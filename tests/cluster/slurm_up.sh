#!/usr/bin/env bash
# Start a single-node SLURM (Debian's slurmctld, slurmd, munge) for the cluster test: one node with the machine's
# CPUs and one GPU declared as a generic resource (no device behind it: jobs see `--gres=gpu:1` granted and fall
# back to CPU), no accounting database (the executor plugin queries job states with squeue).
# Needs root. Installs the packages when missing. Usage: tests/cluster/slurm_up.sh <state-dir>; prints the
# SLURM_CONF to export. Stop with tests/cluster/slurm_down.sh <state-dir>.
set -euo pipefail
STATE=$(realpath -m "${1:?state directory}")
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p "$STATE"/{ctld,spool,log}
HOST=$(hostname -s)
CPUS=$(nproc)
cat >"$STATE/slurm.conf" <<CONF
ClusterName=defectbench-test
SlurmctldHost=$HOST
SlurmctldPort=6917
SlurmdPort=6918
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SlurmctldParameters=enable_configless
ReturnToService=2
MinJobAge=3600
GresTypes=gpu
MpiDefault=none
MailProg=/bin/true
NodeName=$HOST CPUs=$CPUS RealMemory=65536 Gres=gpu:1 State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=$HOST Name=gpu File=/dev/null Count=1" >"$STATE/gres.conf"
export SLURM_CONF="$STATE/slurm.conf"
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
slurmctld -c
slurmd -c --conf-server "$HOST:6917"  # configless: jobs get SLURM_CONF pointing at its cached copy
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "the SLURM node did not become idle; logs in $STATE/log" >&2
sinfo -N -l >&2 || true
exit 1
