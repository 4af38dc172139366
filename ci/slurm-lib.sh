# Shared by slurm-start.sh and slurm-stop.sh (sourced, not run).

# pid_of PIDFILE NAME: print the PID if it is a live (non-zombie) process
# called NAME; a stale file (dead or recycled PID) prints nothing.
pid_of() {
    local pid stat
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 2>/dev/null <"$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    stat=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ "$stat" != Z ] && [ -n "$stat" ] || return 1
    echo "$pid"
}
