#!/usr/bin/env bash
# Slurm 22.05 cluster on localhost (munge + MariaDB + slurmdbd + slurmctld + one slurmd per node):
# node `$(hostname -s)` (partitions gpu, debug) and two 1-CPU nodes `<host>-n1`, `<host>-n2` (partition multi),
# for hpcnli's tests, CI and for trying the Slurm path on a laptop. Must run as root.
#
#   slurm/local-cluster.sh up       # install packages if missing, write config, start, wait
#   slurm/local-cluster.sh status   # daemons, sinfo, squeue; non-zero exit if not up
#   slurm/local-cluster.sh env      # prints: export SLURM_CONF=...
#   slurm/local-cluster.sh down     # stop everything this script started
#   slurm/local-cluster.sh clean    # down, then delete the state directory
#
#   eval "$(slurm/local-cluster.sh env)"; sbatch --partition gpu --wrap hostname
#
# Everything (config, spool, logs, MariaDB datadir, pid files) lives under
# ${HPCNLI_SLURM_DIR:-/tmp/hpcnli-slurm}. Ports 16817-16822 are used so a system Slurm or a
# leftover cluster elsewhere does not collide. The containers this targets have no init system,
# so every daemon is started by hand.
set -euo pipefail

DIR=${HPCNLI_SLURM_DIR:-/tmp/hpcnli-slurm}
ETC=$DIR/etc
RUN=$DIR/run
LOG=$DIR/log
CONF=$ETC/slurm.conf
MYCNF=$ETC/my.cnf
DBDATA=$DIR/mariadb
# MariaDB runs as `mysql`: its socket, pid file and log live in directories that user owns.
DBRUN=$RUN/mariadb
DBLOG=$LOG/mariadb
DBSOCK=$DBRUN/mariadb.sock
CLUSTER=hpcnli
CTLD_PORT=16817
SLURMD_PORT=16818
DBD_PORT=16819
DB_PORT=16820
DB_PASS=hpcnli-local # only reachable on 127.0.0.1; this is a throwaway test cluster
# Every daemon we start carries this variable, so `down` can find exactly ours (and nothing else)
# even if a pid file is lost.
MARKER=HPCNLI_LOCAL_SLURM=$DIR
NODE=$(hostname -s)
# Two more slurmd "nodes" on this host (Debian's Slurm is built with MULTIPLE_SLURMD): partition
# `multi`, where multi-node jobs (resources.nodes: 2) run as on a real cluster.
EXTRA_NODES=("$NODE-n1" "$NODE-n2")
EXTRA_PORTS=(16821 16822)
ALL_NODES=("$NODE" "${EXTRA_NODES[@]}")
WAIT_S=${HPCNLI_SLURM_WAIT_S:-120}

export SLURM_CONF=$CONF

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (daemons run as root/munge/mysql)"; }

# --- processes -------------------------------------------------------------------------------

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

pidfile_pid() { [[ -s $1 ]] && tr -dc '0-9' <"$1" || true; }

pidfile_of() { if [[ $1 == mariadbd ]]; then echo "$DBRUN/mariadbd.pid"; else echo "$RUN/$1.pid"; fi; }

daemon_running() { pid_alive "$(pidfile_pid "$(pidfile_of "$1")")"; }

slurmd_pidfile() { echo "$RUN/slurmd-$1.pid"; }  # one slurmd per node name (SlurmdPidFile=...-%n.pid)

slurmd_running() { pid_alive "$(pidfile_pid "$(slurmd_pidfile "$1")")"; }

all_slurmds_running() {
    local n
    for n in "${ALL_NODES[@]}"; do slurmd_running "$n" || return 1; done
}

# PIDs of processes whose environment carries our marker (i.e. started by this script for $DIR).
marked_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ ${p#/proc/} -eq $$ ]] && continue
        if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "$MARKER"; then
            echo "${p#/proc/}"
        fi
    done
}

# stop_pid NAME PID: TERM, wait up to 20s, then KILL.
stop_pid() {
    local name=$1 pid=$2 i
    pid_alive "$pid" || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
    log "$name did not exit on TERM, killing"
    kill -KILL "$pid" 2>/dev/null || true
}

# wait_for DESC CMD...: retry CMD until it succeeds or WAIT_S passes; give up early if
# WATCH_PID is set and that process died.
WATCH_PID=
wait_for() {
    local desc=$1 deadline=$((SECONDS + WAIT_S))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        if [[ -n $WATCH_PID ]] && ! pid_alive "$WATCH_PID"; then
            WATCH_PID=
            return 1
        fi
        sleep 0.5
    done
    WATCH_PID=
    log "$desc: ok"
}

fail_with_log() {
    log "ERROR: $1; last lines of $2:"
    tail -n 30 "$2" >&2 2>/dev/null || true
    exit 1
}

# --- install ---------------------------------------------------------------------------------

install_packages() {
    local missing=0 b
    for b in slurmctld slurmd slurmdbd sinfo sacct sacctmgr munged mariadbd mariadb-install-db mariadb; do
        command -v "$b" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    log "installing slurm-wlm munge slurmdbd mariadb-server"
    apt-get update
    # Post-install scripts may fail to start services (no init system); we start them ourselves.
    DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge slurmdbd mariadb-server
}

# --- config ----------------------------------------------------------------------------------

write_config() {
    local cpus mem_mb real_mem
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    # A bit below total: slurmd drains the node if it reports less than RealMemory.
    real_mem=$((mem_mb * 95 / 100))

    mkdir -p "$ETC" "$RUN" "$LOG" "$DBRUN" "$DBLOG" "$DIR/spool/ctld" "$DIR/gpu"
    for n in "${ALL_NODES[@]}"; do mkdir -p "$DIR/spool/d-$n"; done
    # MariaDB runs as `mysql` and must traverse the tree down to its datadir/socket.
    chmod 755 "$DIR" "$RUN" "$LOG"
    chown mysql:mysql "$DBRUN" "$DBLOG"
    # Fake GPUs: gres needs File= to exist, else the node goes INVAL (count lower than configured).
    : >"$DIR/gpu/gpu0"
    : >"$DIR/gpu/gpu1"

    cat >"$CONF" <<EOF
# Generated by slurm/local-cluster.sh; rewritten on every 'up'.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d-%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
# No cgroups / PMIx in containers and on most laptops.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# CPU+memory granularity with a small per-CPU default, so array tasks share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# Quick recovery after restarts; keep finished jobs in squeue/scontrol for 5 minutes.
SlurmdTimeout=30
SlurmctldTimeout=30
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
# Batch jobs are requeueable by default (scontrol requeue <id> works).
JobRequeue=1
NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem Gres=gpu:2 State=UNKNOWN
NodeName=${EXTRA_NODES[0]} NodeHostname=$NODE NodeAddr=127.0.0.1 Port=${EXTRA_PORTS[0]} CPUs=1 RealMemory=$((real_mem / 4)) State=UNKNOWN
NodeName=${EXTRA_NODES[1]} NodeHostname=$NODE NodeAddr=127.0.0.1 Port=${EXTRA_PORTS[1]} CPUs=1 RealMemory=$((real_mem / 4)) State=UNKNOWN
PartitionName=gpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=debug Nodes=$NODE MaxTime=INFINITE State=UP
PartitionName=multi Nodes=${EXTRA_NODES[0]},${EXTRA_NODES[1]} MaxTime=INFINITE State=UP
EOF

    cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/gpu/gpu0
NodeName=$NODE Name=gpu File=$DIR/gpu/gpu1
EOF

    # slurmdbd has no config flag: it reads slurmdbd.conf next to \$SLURM_CONF, and insists on 600.
    (
        umask 077
        cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$ETC/slurmdbd.conf"

    # Own my.cnf so the system's /etc/mysql config (socket in /run/mysqld, etc.) is not read.
    cat >"$MYCNF" <<EOF
[mysqld]
datadir=$DBDATA
socket=$DBSOCK
port=$DB_PORT
bind-address=127.0.0.1
pid-file=$DBRUN/mariadbd.pid
log-error=$DBLOG/error.log
skip-name-resolve
innodb_buffer_pool_size=64M
[client]
socket=$DBSOCK
user=root
EOF
    chmod 644 "$MYCNF"
}

# --- daemons ---------------------------------------------------------------------------------

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        log "munged already running (not ours; left alone on down)"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
        chown munge:munge /etc/munge/munge.key
    fi
    # No init system: /run/munge is not created for us.
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    runuser -u munge -- env "$MARKER" munged
    wait_for "munged" munge_ok || fail_with_log "munged did not start" /var/log/munge/munged.log
    # Remember that it is ours, so `down` stops it and nothing else.
    pidfile_pid /run/munge/munged.pid >"$RUN/munged.ours"
}

db() { mariadb --defaults-file="$MYCNF" "$@"; }

start_mariadb() {
    if [[ ! -d $DBDATA/mysql ]]; then
        log "initialising MariaDB in $DBDATA"
        mkdir -p "$DBDATA"
        chown mysql:mysql "$DBDATA"
        runuser -u mysql -- test -x "$DBDATA" ||
            die "user mysql cannot reach $DBDATA; choose HPCNLI_SLURM_DIR under a world-traversable path"
        mariadb-install-db --defaults-file="$MYCNF" --user=mysql --skip-test-db \
            >"$DBLOG/install.log" 2>&1 || fail_with_log "mariadb-install-db failed" "$DBLOG/install.log"
    fi
    if ! daemon_running mariadbd; then
        # mariadbd does not daemonise; setsid detaches it from our session (CI step groups etc.).
        env "$MARKER" setsid mariadbd --defaults-file="$MYCNF" --user=mysql \
            </dev/null >>"$DBLOG/stdout.log" 2>&1 &
        WATCH_PID=$!
    fi
    wait_for "mariadb" db -e 'SELECT 1' || fail_with_log "mariadb did not start" "$DBLOG/error.log"
    db <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

cluster_registered() { sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; }

start_slurmdbd() {
    daemon_running slurmdbd || env "$MARKER" slurmdbd
    wait_for "slurmdbd" sacctmgr -n list cluster || fail_with_log "slurmdbd did not answer" "$LOG/slurmdbd.log"
    # slurmctld needs the cluster known to slurmdbd before it first registers.
    if ! cluster_registered; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        log "registered cluster $CLUSTER"
    fi
}

node_state() { sinfo -h -n "${1:-$NODE}" -o '%T' 2>/dev/null | head -n 1; }
node_usable() {
    local n
    for n in "${ALL_NODES[@]}"; do [[ $(node_state "$n") =~ ^(idle|mixed|allocated|completing)$ ]] || return 1; done
}

start_slurm() {
    daemon_running slurmctld || env "$MARKER" slurmctld
    wait_for "slurmctld" scontrol ping || fail_with_log "slurmctld did not answer" "$LOG/slurmctld.log"
    # -N: node name as configured, whatever the kernel hostname resolves to; one slurmd per node.
    local n
    for n in "${ALL_NODES[@]}"; do
        slurmd_running "$n" || env "$MARKER" slurmd -N "$n"
    done
    if ! wait_for "nodes ${ALL_NODES[*]} idle" node_usable; then
        for n in "${ALL_NODES[@]}"; do log "node $n: $(node_state "$n")"; done
        fail_with_log "the nodes did not become idle" "$LOG/slurmd-$NODE.log"
    fi
    wait_for "sacct" sacct -n -X -S now-1minutes || fail_with_log "sacct did not answer" "$LOG/slurmdbd.log"
}

healthy() {
    munge_ok && daemon_running mariadbd && daemon_running slurmdbd && daemon_running slurmctld &&
        all_slurmds_running && scontrol ping >/dev/null 2>&1 && node_usable &&
        sacct -n -X -S now-1minutes >/dev/null 2>&1
}

# --- commands --------------------------------------------------------------------------------

cmd_env() { echo "export SLURM_CONF=$CONF"; }

cmd_up() {
    require_root
    if [[ -f $CONF ]] && healthy; then
        log "already up and healthy ($DIR)"
        cmd_env
        return 0
    fi
    local start=$SECONDS
    install_packages
    # A half-up cluster (crash, killed daemon, changed config) is restarted cleanly; data is kept.
    if [[ -n $(marked_pids) || -f $RUN/munged.ours ]]; then
        log "partially up; restarting"
        cmd_down
    fi
    write_config
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    log "up in $((SECONDS - start))s; node $NODE (partitions gpu, the default, and debug), nodes ${EXTRA_NODES[*]} (partition multi); state in $DIR"
    log "run this (or eval \"\$($0 env)\"):"
    cmd_env
}

cmd_down() {
    require_root
    local jobs pid name i n
    # Cancel jobs first: slurmstepd outlives slurmd by design, and would otherwise linger.
    if daemon_running slurmctld; then
        jobs=$(squeue -h -o '%A' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
            # shellcheck disable=SC2086 # one id per word
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -z $(squeue -h -o '%A' 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    # Reverse start order, so nothing logs errors about a vanished dependency.
    for n in "${ALL_NODES[@]}"; do
        stop_pid slurmd "$(pidfile_pid "$(slurmd_pidfile "$n")")"
        rm -f "$(slurmd_pidfile "$n")"
    done
    for name in slurmctld slurmdbd mariadbd; do
        stop_pid "$name" "$(pidfile_pid "$(pidfile_of "$name")")"
        rm -f "$(pidfile_of "$name")"
    done
    if [[ -f $RUN/munged.ours ]]; then
        stop_pid munged "$(pidfile_pid "$RUN/munged.ours")"
        rm -f "$RUN/munged.ours"
    fi
    # Anything else we started (slurmstepd, slurmscriptd, a daemon whose pid file was lost).
    for pid in $(marked_pids); do
        stop_pid "$(cat "/proc/$pid/comm" 2>/dev/null || echo '?')" "$pid"
    done
    log "down"
}

cmd_status() {
    local name pid up=1
    for name in mariadbd slurmdbd slurmctld "${ALL_NODES[@]/#/slurmd:}"; do
        if [[ $name == slurmd:* ]]; then pid=$(pidfile_pid "$(slurmd_pidfile "${name#slurmd:}")"); else
            pid=$(pidfile_pid "$(pidfile_of "$name")"); fi
        if pid_alive "$pid"; then
            printf '%-14s running (pid %s)\n' "$name" "$pid"
        else
            printf '%-14s not running\n' "$name"
            up=0
        fi
    done
    if munge_ok; then
        printf '%-10s running%s\n' munged "$([[ -f $RUN/munged.ours ]] && echo ' (started by this script)')"
    else
        printf '%-10s not running\n' munged
        up=0
    fi
    echo "SLURM_CONF=$CONF"
    if ((up)); then
        echo "--- sinfo"
        sinfo || up=0
        echo "--- squeue"
        squeue || up=0
        node_usable || up=0
    fi
    ((up)) || { echo "local cluster is NOT up"; return 1; }
}

cmd_clean() {
    cmd_down
    log "removing $DIR"
    rm -rf -- "$DIR"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
clean) cmd_clean ;;
*)
    echo "usage: $0 up|down|status|env|clean   (state in \$HPCNLI_SLURM_DIR, default /tmp/hpcnli-slurm)" >&2
    exit 2
    ;;
esac
