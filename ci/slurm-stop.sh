#!/usr/bin/env bash
# Stop the single-node SLURM started by ci/slurm-start.sh: slurmd, then
# slurmctld and munged, each by its PID file (SIGTERM, wait up to 10 s, then
# SIGKILL).  Jobs still queued are scancel'ed first.  Exits 0 if nothing runs.
set -uo pipefail

CTLD_PID=/var/run/slurmctld.pid
SLURMD_PID=/var/run/slurmd.pid
MUNGE_PID=/var/run/munge/munged.pid

log() { echo "[slurm-stop] $*"; }

. "$(dirname "$0")/slurm-lib.sh"

# Cancel jobs first, so their slurmstepd/job processes don't outlive slurmd
# (proctrack/linuxproc has no cgroup to clean them up).
if pid_of "$CTLD_PID" slurmctld >/dev/null && command -v squeue >/dev/null 2>&1; then
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

# stop NAME:PIDFILE ...  -- SIGTERM all, wait up to 10 s, SIGKILL leftovers
stop() {
    local spec name file pid left
    local -a names=() pids=() files=()
    for spec in "$@"; do
        name=${spec%%:*} file=${spec#*:}
        if pid=$(pid_of "$file" "$name"); then
            kill "$pid" 2>/dev/null || true
            names+=("$name") pids+=("$pid") files+=("$file")
        else
            rm -f "$file"
        fi
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    for _ in $(seq 1 100); do
        left=0
        for i in "${!pids[@]}"; do
            pid_of "${files[$i]}" "${names[$i]}" >/dev/null && left=1
        done
        [ $left = 0 ] && break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if pid_of "${files[$i]}" "${names[$i]}" >/dev/null; then
            log "${names[$i]} (pid ${pids[$i]}) still alive after 10 s; SIGKILL"
            kill -9 "${pids[$i]}" 2>/dev/null || true
        else
            log "stopped ${names[$i]} (pid ${pids[$i]})"
        fi
        rm -f "${files[$i]}"
    done
}

# slurmd first, while slurmctld still answers (otherwise its shutdown waits
# on timeouts); slurmctld and munged can then go together.
stop "slurmd:$SLURMD_PID"
stop "slurmctld:$CTLD_PID" "munged:$MUNGE_PID"
exit 0
