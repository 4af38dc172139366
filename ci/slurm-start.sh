#!/usr/bin/env bash
# Install (if needed) and start a single-node SLURM on this machine, without
# systemd.  Meant for CI containers/VMs running Debian (tested: Debian 12,
# slurm-wlm 22.05) as root.
#
#   ci/slurm-start.sh          # idempotent; exits 0 quickly if already up
#
# What it does:
#   * apt-get install slurm-wlm + munge (skipped when already installed)
#   * creates the munge key if absent (owner munge, mode 0400)
#   * writes /etc/slurm/slurm.conf: one node (this host, CPUs/RealMemory from
#     `slurmd -C`), the partition `debug` (the default), select/cons_tres +
#     CR_Core_Memory so several small jobs share the node, proctrack/linuxproc +
#     task/none so no cgroups are needed; and two partitions on the same node
#     that model two node sizes (docs/slurm.md, "Nodes of different sizes"):
#     `small` (a job may ask for at most SLURM_SMALL_MEM_MB, MaxMemPerNode) and
#     `big` (the whole node)
#   * on a SLURM already running whose slurm.conf lacks them (written by an
#     older version of this script), rewrites it and runs `scontrol reconfigure`:
#     running jobs and the `debug` partition are not touched
#   * starts munged (as user munge), slurmctld, slurmd (detached, PID files in
#     /var/run), then polls `sinfo` until the node is idle (timeout 60 s).
#
# Environment overrides:
#   SLURM_START_TIMEOUT   seconds to wait for the node to become idle (60)
#   SLURM_MEM_RESERVE_MB  MB subtracted from `slurmd -C` RealMemory (>=5%, min 256)
#   SLURM_SMALL_MEM_MB    memory limit of a job in partition `small` (2048)
#   SLURM_WAIT_SCHED      1 (default): also wait for the first scheduler cycle
#                         (~3 s after slurmctld starts); 0: return once idle
#
# Stop with ci/slurm-stop.sh.
set -euo pipefail

T0=$(date +%s.%N)
TIMEOUT=${SLURM_START_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
CTLD_PID=/var/run/slurmctld.pid
SLURMD_PID=/var/run/slurmd.pid
MUNGE_PID=/var/run/munge/munged.pid
MUNGE_KEY=/etc/munge/munge.key

log() { echo "[slurm-start] $*"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

if [ "$(id -u)" -ne 0 ]; then
    echo "[slurm-start] must run as root" >&2
    exit 1
fi

. "$(dirname "$0")/slurm-lib.sh"
# pid_alive PIDFILE NAME: the file names a live (non-zombie) process called NAME
pid_alive() { pid_of "$1" "$2" >/dev/null; }

node_state() { timeout 5 sinfo -h -o %t 2>/dev/null | head -n1 || true; }

# --- already running? -------------------------------------------------------
if command -v sinfo >/dev/null 2>&1 &&
   pid_alive "$MUNGE_PID" munged && pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd; then
    st=$(node_state)
    case "$st" in
        idle|mix|mixed|alloc|allocated|comp|completing)
            if grep -q '^PartitionName=big ' "$CONF" 2>/dev/null; then
                log "already running (node state: $st)"
                exit 0
            fi
            # an older slurm.conf without the two sizes: add them below, then
            # reconfigure the running daemons (jobs keep running)
            log "already running (node state: $st); adding partitions small and big"
            RECONFIGURE=1 ;;
        *)
            log "daemons running but node state is '${st:-?}'; restarting"
            "$(dirname "$0")/slurm-stop.sh" || true ;;
    esac
fi

# --- packages ---------------------------------------------------------------
pkgs_ok() {
    local p
    for p in slurm-wlm slurmctld slurmd slurm-client munge; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}
if ! pkgs_ok; then
    log "installing slurm-wlm + munge via apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || log "apt-get update failed; trying the install anyway"
    apt-get install -y --no-install-recommends slurm-wlm munge
fi

# --- munge ------------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /var/run/munge
chown munge:munge /etc/munge /var/lib/munge /var/log/munge /var/run/munge
chmod 0700 /etc/munge /var/log/munge
chmod 0711 /var/lib/munge
chmod 0755 /var/run/munge
if [ ! -s "$MUNGE_KEY" ]; then
    log "creating munge key $MUNGE_KEY"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$MUNGE_KEY" --force
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
fi
chown munge:munge "$MUNGE_KEY"
chmod 0400 "$MUNGE_KEY"

# --- slurm dirs -------------------------------------------------------------
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
chown slurm:slurm /var/spool/slurmctld "$LOGDIR"
chown root:root /var/spool/slurmd
chmod 0755 /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"

# --- slurm.conf -------------------------------------------------------------
# slurmd -C prints e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105";
# its NodeName is exactly the name slurmd will look for in slurm.conf.
HW=$(slurmd -C | head -n1)
hwval() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$HW"; }
NODE=$(hwval NodeName)
CPUS=$(hwval CPUs)
SOCKETS=$(hwval SocketsPerBoard)
CORES=$(hwval CoresPerSocket)
THREADS=$(hwval ThreadsPerCore)
MEM=$(hwval RealMemory)
NODE=${NODE:-$(hostname -s)}
RESERVE=${SLURM_MEM_RESERVE_MB:-$(( MEM / 20 > 256 ? MEM / 20 : 256 ))}
REALMEM=$(( MEM - RESERVE ))
[ "$REALMEM" -ge 256 ] || REALMEM=$(( MEM * 9 / 10 ))
# Default memory per CPU for jobs that don't ask for --mem (otherwise a job
# without --mem would take the whole node's memory with CR_Core_Memory).
DEFMEM=$(( REALMEM / CPUS ))
# the small node size: a job in partition small may ask for this much at most
SMALLMEM=${SLURM_SMALL_MEM_MB:-2048}
[ "$SMALLMEM" -le "$REALMEM" ] || SMALLMEM=$(( REALMEM / 2 ))
# the node name must resolve; on normal Debian hosts it is in /etc/hosts
if ! getent hosts "$NODE" >/dev/null 2>&1; then
    log "warning: '$NODE' does not resolve; adding it to /etc/hosts as 127.0.0.1"
    echo "127.0.0.1 $NODE" >>/etc/hosts
fi

NEWCONF=$(mktemp /tmp/slurm-conf.XXXXXX)
cat >"$NEWCONF" <<EOF
# Written by cpldask ci/slurm-start.sh -- single-node SLURM for CI.
ClusterName=cpldask
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOGDIR}/slurmctld.log
SlurmdLogFile=${LOGDIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# batch_sched_delay defaults to 3 s: every sbatch would wait up to 3 s for a
# scheduling pass
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# short timeouts: CI wants fast turnaround
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=10
InactiveLimit=0
KillWait=5
MinJobAge=30
Waittime=0
TCPTimeout=2
# nodes / partitions
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} SocketsPerBoard=${SOCKETS} CoresPerSocket=${CORES} ThreadsPerCore=${THREADS} RealMemory=${REALMEM} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=${DEFMEM}
# two node sizes on the one node (cpldask's tests of workers of different sizes)
PartitionName=small Nodes=${NODE} MaxTime=INFINITE State=UP DefMemPerCPU=$(( SMALLMEM < DEFMEM ? SMALLMEM : DEFMEM )) MaxMemPerNode=${SMALLMEM}
PartitionName=big Nodes=${NODE} MaxTime=INFINITE State=UP DefMemPerCPU=${DEFMEM}
EOF
if ! cmp -s "$NEWCONF" "$CONF"; then
    [ -f "$CONF" ] && cp -p "$CONF" "$CONF.bak"
    install -m 0644 "$NEWCONF" "$CONF"
    log "wrote $CONF (node $NODE: CPUs=$CPUS RealMemory=$REALMEM of $MEM MB)"
fi
rm -f "$NEWCONF"
if [ "${RECONFIGURE:-0}" = 1 ]; then
    scontrol reconfigure
    for _ in $(seq 1 50); do
        sinfo -h -p big -o %P 2>/dev/null | grep -q big && break
        sleep 0.2
    done
    log "reconfigured: partitions $(sinfo -h -o %P | tr '\n' ' ')after $(elapsed) s"
    exit 0
fi

# --- start daemons ----------------------------------------------------------
if pid_alive "$MUNGE_PID" munged; then
    log "munged already running (pid $(cat "$MUNGE_PID"))"
else
    rm -f "$MUNGE_PID" /var/run/munge/munge.socket.2 /var/run/munge/munge.socket.2.lock
    # munged daemonizes itself and writes $MUNGE_PID
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
done
if ! munge -n | unmunge >/dev/null; then
    log "munge does not work"; tail -n 30 /var/log/munge/munged.log 2>/dev/null || true
    exit 1
fi

# slurmctld: -c clears saved job/node state so every start is a clean slate;
# -i ignores state-file errors.  Both daemons background themselves.
if pid_alive "$CTLD_PID" slurmctld; then
    log "slurmctld already running (pid $(cat "$CTLD_PID"))"
else
    rm -f "$CTLD_PID"
    /usr/sbin/slurmctld -c -i
fi
if pid_alive "$SLURMD_PID" slurmd; then
    log "slurmd already running (pid $(cat "$SLURMD_PID"))"
else
    rm -f "$SLURMD_PID"
    /usr/sbin/slurmd
fi

# --- wait for idle ----------------------------------------------------------
deadline=$(( $(date +%s) + TIMEOUT ))
st=""
while :; do
    st=$(node_state)
    [ "$st" = idle ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "node not idle after ${TIMEOUT}s (state: '${st:-?}')"
        sinfo -N -l 2>&1 || true
        scontrol show node 2>&1 || true
        for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" /var/log/munge/munged.log; do
            echo "===== $f"; tail -n 40 "$f" 2>/dev/null || true
        done
        exit 1
    fi
    # ReturnToService=2 should do this, but a stale DOWN/DRAIN from an
    # earlier run can be cleared by hand too.
    case "$st" in
        down*|drain*|drng*|fail*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
done
log "node $NODE idle (CPUs=$CPUS RealMemory=$REALMEM) after $(elapsed) s"

# slurmctld runs its first main-scheduler cycle ~3 s after start; jobs
# submitted before that sit in PD (Reason=None) until then.  Wait for it so
# callers see jobs start immediately (sdiag "Total cycles" >= 1).
if [ "${SLURM_WAIT_SCHED:-1}" = 1 ]; then
    sched_cycles() {
        timeout 5 sdiag 2>/dev/null |
            awk '/Main schedule statistics/{m=1} m && /Total cycles:/{print $3; exit}'
    }
    while :; do
        c=$(sched_cycles)
        [ -z "$c" ] && break            # sdiag format unknown: don't wait
        [ "$c" -ge 1 ] 2>/dev/null && break
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "warning: scheduler has not run a cycle yet; continuing"
            break
        fi
        sleep 0.2
    done
fi
log "SLURM up (scheduler active) after $(elapsed) s"
