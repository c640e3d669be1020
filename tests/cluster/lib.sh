# shellcheck shell=bash disable=SC2034  # the scripts that source this use the names
# Shared by start.sh and stop.sh: where the mini-cluster keeps its state, and how
# to tell whether one of its daemons runs. Sourcing it has no side effects.

STATE=/var/lib/nbtether-testcluster
CLUSTER_NAME=testbed
TEST_USER=hpcuser
TEST_HOME=/home/$TEST_USER
# Another unprivileged user with processes on the nodes, for the tests of a shared node.
NEIGHBOUR_USER=nbneighbour
LOGIN_ADDR=127.0.0.1
LOGIN_PORT=2222
# Login nodes that need a person: the key and a TOTP code, or a password alone.
MFA_PORT=2223
PASSWORD_PORT=2224
TOTP_SECRET=NBTETHERMFATESTSECRET234
TEST_PASSWORD=nbtether-test-password
NODES=(c1 c2)
PYTHON_MODULE=python/3.11.6-gcc-13.2.0

# One directory per daemon, owned by the user the daemon runs as, holding its pid
# file and log (and data): a daemon that drops privileges can still write there.
MUNGE_DIR=$STATE/munge
MYSQL_DIR=$STATE/mysql
SLURM_DIR=$STATE/slurm
SSHD_DIR=$STATE/sshd
MFA_DIR=$STATE/sshd-mfa
PASSWORD_DIR=$STATE/sshd-password
SGE_DIR=$STATE/sge

MUNGED_PID=$MUNGE_DIR/munged.pid
MARIADBD_PID=$MYSQL_DIR/mariadbd.pid
SLURMDBD_PID=$SLURM_DIR/slurmdbd.pid
SLURMCTLD_PID=$SLURM_DIR/slurmctld.pid
SSHD_PID=$SSHD_DIR/sshd.pid
# sshd started as sshd_mfa (a link) takes its PAM service, and its process name, from it.
MFA_PID=$MFA_DIR/sshd_mfa.pid
PASSWORD_PID=$PASSWORD_DIR/sshd_password.pid
PERSON_KNOWN_HOSTS=$STATE/known_hosts_person
SGE_QMASTER_PID=$SGE_DIR/sge_qmaster.pid

# Grid Engine from Debian's gridengine-* packages: its root and cell are theirs.
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SGE_SPOOL=/var/spool/gridengine
SGE_QUEUE=cpu  # named like the SLURM partition, so one session file fits both

slurmd_pid() { echo "$SLURM_DIR/slurmd-$1.pid"; }
sge_execd_pid() { echo "$SGE_DIR/sge_execd-$1.pid"; }

# The program a pid file belongs to, from its name: slurmd-c1.pid -> slurmd.
pidfile_program() {
  local name=${1##*/}
  echo "${name%%[-.]*}"
}

# True when process $1 is a live $2. Checking the name keeps a stale pid file (its
# pid reused after a reboot) from counting; a zombie has exited, so it does not count.
runs_program() {
  [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] &&
    [[ $(sed -E 's/.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# True when pid file $1 names a live process of its daemon.
is_running() {
  [[ -s $1 ]] && runs_program "$(<"$1")" "$(pidfile_program "$1")"
}

ctld_up() { [[ $(scontrol ping 2>/dev/null) == *"is UP"* ]]; }
qmaster_up() { qstat -u '*' >/dev/null 2>&1; }

# Prints an error (and the tail of a log, if given) and exits non-zero.
die() {
  echo "${0##*/}: ERROR: $1" >&2
  if [[ -n ${2:-} && -f $2 ]]; then
    echo "--- last lines of $2 ---" >&2
    tail -n 30 "$2" >&2
  fi
  exit 1
}

# Runs "$@" every half second until it succeeds; dies after $1 seconds, naming
# what was awaited ($2) and showing the tail of log $3.
wait_until() {
  local timeout=$1 what=$2 log=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what" "$log"
    sleep 0.5
  done
}
