#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on localhost, for tests and CI.
#
#   launchers/slurm/local_cluster.sh start DIR   # prints `export SLURM_CONF=DIR/slurm.conf`
#   launchers/slurm/local_cluster.sh stop DIR    # cancels jobs, stops every daemon it started
#
# Needs Debian's munge, slurmctld, slurmd and slurm-client (22.05); installs nothing.
# Everything lives under DIR: its own munge key and socket (no dependence on /etc/munge or
# a system munged), slurm.conf, state, spool, logs and the daemons' PIDs. No cgroups needed
# (proctrack/linuxproc, task/none). Ports are picked free, so clusters can run side by side.
# `start` on a running cluster only reprints SLURM_CONF; a failed `start` stops what it began
# and prints the daemons' logs; `stop` is safe on a half-started or absent cluster.
# Messages go to stderr; stdout carries only the export line, so `eval "$(... start DIR)"` works.
# Env: LOCAL_SLURM_START_TIMEOUT (s, default 30).
# LOCAL_SLURM_NODES="node0=ADDR@NETNS node1=ADDR@NETNS ...": several nodes instead of localhost,
# each slurmd in its network namespace with that hostname (tests/netns.py makes them), the
# controller on the first; run clients there too: `ip netns exec NETNS sbatch ...`.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
cmd=$1
[[ $cmd == stop && ! -d $2 ]] && exit 0   # nothing was ever started there
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
CONF=$DIR/slurm.conf
PIDS=$DIR/pids
MUNGE_SOCKET=$DIR/munge/munge.socket
if [[ $cmd == start ]] && ((${#DIR} > 70)); then
    # munged's and slurmstepd's UNIX sockets live under DIR; their paths must fit in 108 bytes
    echo "local_cluster: DIR path too long for UNIX sockets (${#DIR} > 70 chars): $DIR" >&2
    exit 1
fi
log() { echo "local_cluster: $*" >&2; }

# name -> address and network namespace of each node (one localhost node by default)
declare -A ADDR NETNS
NAMES=()
for spec in ${LOCAL_SLURM_NODES:-localhost=127.0.0.1@}; do
    name=${spec%%=*}; rest=${spec#*=}
    NAMES+=("$name"); ADDR[$name]=${rest%@*}; NETNS[$name]=${rest#*@}
done
HEAD=${NAMES[0]}
# The prefix that runs a command on NODE: in its network namespace, with its hostname and its
# /etc/hosts (from /etc/netns/NETNS/, as `ip netns exec` would bind it; not `ip netns exec`
# itself, whose fresh /sys lacks the cgroup tree slurmd needs). None for localhost. Each step
# execs the next, so a daemon started behind it keeps the PID that `$!` gives.
prefix() {
    PREFIX=()
    [[ -z ${NETNS[$1]} ]] || PREFIX=(nsenter "--net=/run/netns/${NETNS[$1]}" unshare --uts --mount sh -c \
        'mount --bind "/etc/netns/$1/hosts" /etc/hosts && hostname "$0" && shift && exec "$@"' "$1" "${NETNS[$1]}")
}
on() { prefix "$1"; shift; "${PREFIX[@]}" "$@"; }   # a client command on NODE

# PID exists and is not a zombie (an exited daemon stays a zombie until init reaps it).
running() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [[ ${st:0:1} != Z ]]; }
alive() { [[ -f $PIDS/$1 ]] && running "$(cat "$PIDS/$1")"; }

# A TCP port nobody listens on (bash's /dev/tcp connect fails), from a random start below
# the ephemeral range and below rescue.sbatch's MASTER_PORTs (20000-29999).
free_port() {
    local p=$((10000 + RANDOM % 9000)) i
    for ((i = 0; i < 200; i++, p++)); do
        [[ " ${USED_PORTS:-} " == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS="${USED_PORTS:-} $p"; echo "$p"; return 0
        fi
    done
    return 1
}

print_logs() {
    local f
    for f in "$DIR"/log/*; do
        [[ -f $f ]] || continue
        echo "----- $f (last 40 lines) -----" >&2
        tail -n 40 "$f" >&2
    done
}

# Send SIG to PID and wait up to SECS for it to exit.
kill_wait() {
    local pid=$1 sig=$2 secs=$3 i
    kill "-$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < secs * 10; i++)); do
        running "$pid" || return 0
        sleep 0.1
    done
    return 1
}

stop() {
    local name pid i shutdown=0
    if [[ -f $CONF ]] && alive slurmctld; then
        export SLURM_CONF=$CONF
        # Cancel jobs first: `scontrol shutdown` would leave running steps (slurmstepd and the
        # job's processes) behind.
        local jobs
        jobs=$(on "$HEAD" timeout 10 squeue -h -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            on "$HEAD" timeout 10 scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 300; i++)); do   # KillWait is 5 s; give jobs up to 30 s to end
                [[ -z $(on "$HEAD" timeout 5 squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.1
            done
        fi
        on "$HEAD" timeout 10 scontrol shutdown >/dev/null 2>&1 && shutdown=1
    fi
    # Whatever did not go down by itself: TERM, then KILL. munged last (slurm needs it).
    for name in "${NAMES[@]/#/slurmd-}" slurmctld munged; do
        [[ -f $PIDS/$name ]] || continue
        pid=$(cat "$PIDS/$name")
        if running "$pid"; then
            # `scontrol shutdown` lets them exit on their own within a few seconds
            if ((shutdown)) && [[ $name != munged ]]; then kill_wait "$pid" 0 10 || true; fi
            kill_wait "$pid" TERM 10 || kill_wait "$pid" KILL 5 || log "could not kill $name ($pid)"
        fi
        rm -f "$PIDS/$name"
    done
    # Job steps that outlived their slurmd (a job that would not die): this cluster's
    # slurmstepd processes hold a DIR/log/slurmd-NODE.log open (their environment is empty).
    # Kill each with its process tree; nothing else is touched.
    local fd steps=() tree
    for fd in /proc/[0-9]*/fd/*; do
        [[ $(readlink "$fd" 2>/dev/null) == "$DIR"/log/slurmd-*.log ]] || continue
        pid=${fd#/proc/}; pid=${pid%%/*}
        [[ $({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) == slurmstepd* ]] && steps+=("$pid")
    done
    if ((${#steps[@]})); then
        tree=$(ps -eo pid=,ppid= | awk -v roots="${steps[*]}" '
            { kids[$2] = kids[$2] " " $1 }
            END { n = split(roots, q, " "); for (i = 1; i <= n; i++) { print q[i];
                  m = split(kids[q[i]], k, " "); for (j = 1; j <= m; j++) q[++n] = k[j] } }' | sort -u)
        log "killing leftover job steps: ${tree//$'\n'/ }"
        # shellcheck disable=SC2086
        kill -KILL $tree 2>/dev/null || true
    fi
}

start() {
    if [[ -f $CONF ]] && alive munged && alive slurmctld && alive "slurmd-$HEAD" &&
        SLURM_CONF=$CONF on "$HEAD" timeout 5 sinfo -h >/dev/null 2>&1; then
        log "already running"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    stop   # clear a half-started earlier attempt
    mkdir -p "$DIR"/{state,spool,log,munge,tmp} "$PIDS"
    # munged refuses group/world-writable directories on the paths to its key and socket
    chmod 700 "$DIR/munge"
    chmod go-w "$DIR"

    local missing=() b
    for b in munged mungekey slurmctld slurmd sinfo sbatch scontrol; do
        command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] || missing+=("$b")
    done
    if ((${#missing[@]})); then
        log "missing: ${missing[*]} (apt-get install munge slurmctld slurmd slurm-client)"
        return 1
    fi
    export PATH=$PATH:/usr/sbin

    # Our own munge key and munged: works as root in CI and beside a system munged.
    [[ -s $DIR/munge/munge.key ]] || mungekey --create --keyfile="$DIR/munge/munge.key" --bits=1024
    chmod 600 "$DIR/munge/munge.key"

    local user ncpu mem_mb ctld_port slurmd_port
    user=$(id -un)
    ncpu=$(nproc)
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))   # 90% of RAM, in MB
    ctld_port=$(free_port)
    slurmd_port=$(free_port)

    cat >"$CONF" <<EOF
# Generated by launchers/slurm/local_cluster.sh: single-node test cluster under $DIR
ClusterName=rescuelocal
SlurmctldHost=$HEAD(${ADDR[$HEAD]})
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also the delay before a requeued job may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
TmpFS=$DIR/tmp
SlurmctldPidFile=$DIR/slurmctld.pidfile
SlurmdPidFile=$DIR/slurmd-%n.pidfile
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: track processes by parent PID, no task binding, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Schedule every second: a requeued job starts again soon after it becomes eligible.
SchedulerParameters=bf_interval=1,sched_interval=1
# Use the node description below even where the hardware looks different (containers).
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs leave the controller after 4 s (else sbatch --wait polls for up to 32 s).
MinJobAge=4
# TERM -> KILL grace for ended/cancelled/requeued jobs.
KillWait=5
InactiveLimit=0
JobRequeue=1
$(for n in "${NAMES[@]}"; do echo "NodeName=$n NodeAddr=${ADDR[$n]} CPUs=$ncpu RealMemory=$mem_mb State=UNKNOWN"; done)
PartitionName=debug Nodes=$(IFS=,; echo "${NAMES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$CONF

    # Daemons run in the foreground (-D/-F) in their own session, stdio to log files, so the
    # PID we save is the daemon's and no caller's pipe is held open.
    setsid munged --foreground --force --key-file="$DIR/munge/munge.key" \
        --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
        </dev/null >>"$DIR/log/munged.out" 2>&1 &
    echo $! >"$PIDS/munged"
    local i ok=0
    for ((i = 0; i < 100; i++)); do
        if munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
            ok=1; break
        fi
        alive munged || break
        sleep 0.1
    done
    if ((!ok)); then log "munged did not come up"; print_logs; stop; return 1; fi

    # -c: start from empty state (a previous cluster's jobs are not wanted).
    # (ip netns exec, unshare and sh exec into the daemon: the saved PID is the daemon's)
    prefix "$HEAD"
    "${PREFIX[@]}" setsid slurmctld -D -c -f "$CONF" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 &
    echo $! >"$PIDS/slurmctld"
    local node
    for node in "${NAMES[@]}"; do
        mkdir -p "$DIR/spool/$node"
        prefix "$node"
        "${PREFIX[@]}" setsid slurmd -D -N "$node" -f "$CONF" </dev/null >>"$DIR/log/slurmd-$node.out" 2>&1 &
        echo $! >"$PIDS/slurmd-$node"
    done

    local timeout=${LOCAL_SLURM_START_TIMEOUT:-30} state="" up
    for ((i = 0; i < timeout * 10; i++)); do
        state=$(on "$HEAD" timeout 5 sinfo -h -N -o %t 2>/dev/null | sort -u | tr '\n' ' ' || true)
        [[ $state == "idle " ]] && break
        up=1
        for node in slurmctld "${NAMES[@]/#/slurmd-}"; do alive "$node" || up=0; done
        ((up)) || break
        sleep 0.1
    done
    if [[ $state != "idle " ]]; then
        log "node not idle after ${timeout}s (state: '${state}')"
        print_logs
        stop
        return 1
    fi
    log "cluster up: $CONF (ports $ctld_port/$slurmd_port, $ncpu CPUs, ${mem_mb} MB)"
    echo "export SLURM_CONF=$CONF"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
