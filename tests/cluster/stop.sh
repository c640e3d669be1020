#!/usr/bin/env bash
# Stops what start.sh started, each daemon by its pid file (never by name), in the
# reverse order of starting, and waits until its process is gone. Jobs of the test
# user are cancelled first so no slurmstepd (or sge_shepherd) outlives its daemon.
# Idempotent.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"
trap 'die "unexpected failure (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

no_jobs_left() { [[ -z $(squeue -h -u "$TEST_USER") ]]; }
no_sge_jobs_left() { [[ -z $(qstat -u "$TEST_USER") ]]; }

# Jobs run under slurmstepd, which slurmd does not take down with it; a cancelled
# job leaves squeue only once its steps have ended.
cancel_jobs() {
  is_running "$SLURMCTLD_PID" && ctld_up || return 0
  no_jobs_left && return 0
  echo "cancelling the jobs of $TEST_USER"
  scancel -u "$TEST_USER"
  wait_until 60 "the jobs of $TEST_USER to end" "$SLURM_DIR/slurmctld.log" no_jobs_left
}

# Grid Engine's jobs run under sge_shepherd, a child of their execd; deleting them first
# lets each execd end its jobs itself.
cancel_sge_jobs() {
  is_running "$SGE_QMASTER_PID" && qmaster_up || return 0
  no_sge_jobs_left && return 0
  echo "deleting the Grid Engine jobs of $TEST_USER"
  qdel -u "$TEST_USER" >/dev/null
  wait_until 60 "the Grid Engine jobs of $TEST_USER to end" "$SGE_SPOOL/qmaster/messages" \
    no_sge_jobs_left
}

# Waits up to $3 seconds for process $1 (program $2) to exit.
wait_exit() {
  local deadline=$((SECONDS + $3))
  while runs_program "$1" "$2"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# SIGTERM to the daemon in pid file $2, then up to 30 s for it to exit (SIGKILL
# after that). With $3 = children, its child processes are ended first.
stop_daemon() {
  local name=$1 pidfile=$2 pid prog
  if ! is_running "$pidfile"; then
    rm -f "$pidfile"
    return
  fi
  pid=$(<"$pidfile")
  prog=$(pidfile_program "$pidfile")
  echo "$name: stopping (pid $pid)"
  if [[ ${3:-} == children ]]; then
    pkill -TERM -P "$pid" || true
  fi
  kill -TERM "$pid"
  if ! wait_exit "$pid" "$prog" 30; then
    echo "$name: still running after 30s; sending SIGKILL" >&2
    kill -KILL "$pid"
    wait_exit "$pid" "$prog" 10 || die "$name (pid $pid) survived SIGKILL"
  fi
  rm -f "$pidfile"
}

user_gone() { ! pgrep -u "$TEST_USER" >/dev/null; }

# Whatever a login left behind (a shell, a remote watcher) belongs to the test
# user, who exists only for this cluster.
end_user_processes() {
  user_gone && return 0
  echo "ending the remaining processes of $TEST_USER"
  pkill -TERM -u "$TEST_USER" || true
  wait_until 10 "the processes of $TEST_USER to end" /dev/null user_gone
}

main() {
  [[ $EUID -eq 0 ]] || die "run me as root"
  cancel_jobs
  cancel_sge_jobs
  # Ending sshd's children closes the open logins, not only the listener.
  stop_daemon "sshd :$LOGIN_PORT" "$SSHD_PID" children
  stop_daemon "sshd :$MFA_PORT" "$MFA_PID" children
  stop_daemon "sshd :$PASSWORD_PORT" "$PASSWORD_PID" children
  if id "$TEST_USER" &>/dev/null; then
    end_user_processes
  fi
  local node
  for node in "${NODES[@]}"; do
    stop_daemon "slurmd $node" "$(slurmd_pid "$node")"
  done
  for node in "${NODES[@]}"; do
    stop_daemon "sge_execd $node" "$(sge_execd_pid "$node")"
  done
  stop_daemon sge_qmaster "$SGE_QMASTER_PID"
  stop_daemon slurmctld "$SLURMCTLD_PID"
  stop_daemon slurmdbd "$SLURMDBD_PID"
  stop_daemon mariadbd "$MARIADBD_PID"
  stop_daemon munged "$MUNGED_PID"
  echo "mini-cluster stopped"
}

main "$@"
