#!/usr/bin/env bash
# Stop the single-node SLURM started by ci/slurm-start.sh: slurmd, slurmctld,
# munged, each by its PID file (SIGTERM, wait up to 10 s, then SIGKILL).
# Exits 0 if nothing was running.
set -uo pipefail

log() { echo "[slurm-stop] $*"; }

# Cancel jobs still in the queue first, so their slurmstepd/job processes
# don't outlive slurmd (proctrack/linuxproc has no cgroup to clean them up).
if [ -s /var/run/slurmctld.pid ] && kill -0 "$(cat /var/run/slurmctld.pid)" 2>/dev/null &&
   command -v squeue >/dev/null 2>&1; then
    jobs=$(timeout 5 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        timeout 5 scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 50); do
            [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local name=$1 pidfile=$2 pid
    if [ ! -s "$pidfile" ]; then
        return 0
    fi
    pid=$(cat "$pidfile" 2>/dev/null)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) did not exit after 10 s; SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
        sleep 0.2
    else
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

stop_pidfile slurmd /var/run/slurmd.pid
stop_pidfile slurmctld /var/run/slurmctld.pid
stop_pidfile munged /var/run/munge/munged.pid
exit 0
