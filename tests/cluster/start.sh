#!/usr/bin/env bash
# Brings up the nbtether mini-cluster on this machine (Debian 12, as root): munge,
# MariaDB + slurmdbd, slurmctld, two slurmd nodes c1/c2, a Grid Engine qmaster with
# execution daemons on the same two nodes, an OpenSSH login node on
# 127.0.0.1:2222 for the unprivileged user hpcuser, Lmod with a python module, and
# jupyterlab in hpcuser's home; two more login nodes that need a person (127.0.0.1:2223:
# key and TOTP code, 127.0.0.1:2224: password). Idempotent: daemons already running (pid file +
# kill -0) are left alone and files are rewritten only when their content changes,
# so a second run is quick and changes nothing. See README.md next to this file.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"
trap 'die "unexpected failure (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server openssh-server openssh-client lmod python3-venv procps
  libpam-google-authenticator oathtool gridengine-master gridengine-exec gridengine-client gcc
  libc6-dev)
declare -A NODE_ADDR=([c1]=127.0.0.2 [c2]=127.0.0.3)
declare -A NODE_PORT=([c1]=6821 [c2]=6822)
# Each execd listens on its own port: both run on this machine.
declare -A SGE_EXECD_PORT=([c1]=6445 [c2]=6446)
MODULE_ROOT=/opt/modulefiles
MODULE_BIN=/opt/apps/$PYTHON_MODULE/bin

# --- helpers ------------------------------------------------------------------

# Installs stdin as file $1 (mode $2, owner $3 as user:group), but only when the
# content differs. $4, optional, is the pid file of a daemon that reads the file:
# a running daemon keeps its old copy, so say that it needs a restart.
write_file() {
  local path=$1 mode=$2 owner=$3 reader_pid=${4:-} tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if ! cmp -s "$tmp" "$path"; then
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$path"
    echo "wrote $path"
    if [[ -n $reader_pid ]] && is_running "$reader_pid"; then
      echo "NOTE: $path changed while its daemon runs: run stop.sh, then start.sh, to apply it" >&2
    fi
  fi
  rm -f "$tmp"
}

# Starts a daemon with "$@" unless pid file $2 names a live process, then waits for
# the pid file. Its output is appended to its log ($3), never to our stdout: a
# daemon holding our stdout open would hang whoever reads it (pytest's subprocess).
start_daemon() {
  local name=$1 pidfile=$2 log=$3
  shift 3
  if is_running "$pidfile"; then
    echo "$name: already running (pid $(<"$pidfile"))"
    return
  fi
  echo "$name: starting"
  # The log belongs to the owner of the daemon's directory, so a daemon that drops
  # privileges can still reopen it.
  [[ -e $log ]] || install -m 0640 -o "$(stat -c %U "$(dirname "$log")")" /dev/null "$log"
  "$@" </dev/null >>"$log" 2>&1 || die "$name did not start" "$log"
  wait_until 30 "$name to write $pidfile" "$log" is_running "$pidfile"
}

# Runs $1 in a login shell of the test user on the login node, as the tests do.
login_shell() {
  ssh -F /dev/null -p "$LOGIN_PORT" -i "$STATE/id_ed25519" -o IdentitiesOnly=yes \
    -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$STATE/known_hosts" \
    -o ConnectTimeout=10 "$TEST_USER@$LOGIN_ADDR" "bash -lc $(printf %q "$1")"
}

# --- machine setup ---------------------------------------------------------------

install_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] ||
      missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  forbid_service_starts
  # gridengine-master's postinst creates the cell (/var/lib/gridengine/default) and its
  # spool when told to configure it; the qmaster names itself when it starts.
  debconf-set-selections <<'EOF'
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string localhost
EOF
  # The package lists may be missing (fresh image) or stale: refresh them only then.
  apt-get install -qy "${missing[@]}" || { apt-get -q update && apt-get install -qy "${missing[@]}"; }
}

# Package scripts would start the distribution's munged/mariadbd, which would hold
# the sockets our own daemons need; a policy-rc.d answering 101 forbids that.
forbid_service_starts() {
  [[ -e /usr/sbin/policy-rc.d ]] && return
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
}

prepare_dirs() {
  install -d -m 0755 "$STATE" "$STATE/sessions.d" "$SSHD_DIR" "$MFA_DIR" "$PASSWORD_DIR"
  install -d -m 0700 "$STATE/state"
  install -d -m 0700 -o munge -g munge "$MUNGE_DIR"
  install -d -m 0750 -o mysql -g mysql "$MYSQL_DIR"
  install -d -m 0755 -o slurm -g slurm "$SLURM_DIR"
  install -d -m 0700 -o slurm -g slurm "$SLURM_DIR/ctld"
  local node
  for node in "${NODES[@]}"; do
    install -d -m 0755 "$SLURM_DIR/spool-$node"
  done
  # Standard runtime directories, lost at reboot: munge's socket, mariadb's
  # socket, sshd's privilege separation.
  install -d -m 0755 -o munge -g munge /run/munge
  install -d -m 0755 -o mysql -g mysql /run/mysqld
  install -d -m 0755 /run/sshd
}

# The node names must resolve to their own loopback addresses. /etc/hosts may be a
# bind mount (containers), so lines are appended, never the file replaced.
add_node_hosts() {
  local node
  for node in "${NODES[@]}"; do
    grep -Eq "^${NODE_ADDR[$node]//./\\.}[[:space:]]+$node([[:space:]]|$)" /etc/hosts ||
      echo "${NODE_ADDR[$node]} $node" >>/etc/hosts
  done
}

create_test_user() {
  id "$TEST_USER" &>/dev/null ||
    useradd --create-home --home-dir "$TEST_HOME" --shell /bin/bash "$TEST_USER"
  # useradd leaves the password locked ("!"), and sshd refuses a locked account even
  # for key logins; "*" means no password but not locked.
  [[ $(getent shadow "$TEST_USER" | cut -d: -f2) == '*' ]] || usermod -p '*' "$TEST_USER"
}

# A second user on the same nodes (a stranger to hpcuser): no login, no home to speak
# of; the tests run its processes with runuser, as another user's job would run.
create_neighbour_user() {
  id "$NEIGHBOUR_USER" &>/dev/null ||
    useradd --system --no-create-home --shell /usr/sbin/nologin "$NEIGHBOUR_USER"
}

# A site-style module name for Debian's Python 3.11, visible to every login shell
# (ssh bash -l, #!/bin/bash -l jobs) through Lmod's modulespath list.
setup_python_module() {
  install -d -m 0755 "$MODULE_BIN" "$MODULE_ROOT/${PYTHON_MODULE%/*}"
  ln -sfn /usr/bin/python3.11 "$MODULE_BIN/python"
  ln -sfn /usr/bin/python3.11 "$MODULE_BIN/python3"
  write_file "$MODULE_ROOT/$PYTHON_MODULE.lua" 0644 root:root <<EOF
-- Test cluster stand-in for a site-built Python: Debian's python3.11.
whatis("Name: python")
whatis("Version: ${PYTHON_MODULE#*/}")
prepend_path("PATH", "$MODULE_BIN")
EOF
  grep -qx "$MODULE_ROOT" /etc/lmod/modulespath || echo "$MODULE_ROOT" >>/etc/lmod/modulespath
}

# --- daemons -----------------------------------------------------------------------

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0600 /etc/munge/munge.key
  start_daemon munged "$MUNGED_PID" "$MUNGE_DIR/munged.log" \
    runuser -u munge -- munged --pid-file="$MUNGED_PID" --log-file="$MUNGE_DIR/munged.log"
  wait_until 20 "munge to issue credentials" "$MUNGE_DIR/munged.log" munge -n
}

start_mariadb() {
  # skip-networking: slurmdbd, its only client, comes over the standard socket.
  # slurmdbd logs an error for a buffer pool below 512M, half its recommendation.
  write_file "$MYSQL_DIR/my.cnf" 0644 root:root "$MARIADBD_PID" <<EOF
[mysqld]
user = mysql
datadir = $MYSQL_DIR/data
pid-file = $MARIADBD_PID
log-error = $MYSQL_DIR/mariadbd.log
socket = /run/mysqld/mysqld.sock
skip-networking
innodb_buffer_pool_size = 512M
innodb_lock_wait_timeout = 900
EOF
  if [[ ! -d $MYSQL_DIR/data/mysql ]]; then
    echo "mariadb: creating the data directory"
    mariadb-install-db --defaults-file="$MYSQL_DIR/my.cnf" --skip-test-db \
      --auth-root-authentication-method=socket >"$MYSQL_DIR/install.log" 2>&1 ||
      die "mariadb-install-db failed" "$MYSQL_DIR/install.log"
  fi
  # mariadbd does not daemonize itself; setsid --fork detaches it from this script.
  start_daemon mariadbd "$MARIADBD_PID" "$MYSQL_DIR/mariadbd.log" \
    setsid --fork mariadbd --defaults-file="$MYSQL_DIR/my.cnf"
  wait_until 60 "mariadb to accept connections" "$MYSQL_DIR/mariadbd.log" mariadb-admin ping
  # slurmdbd runs as the slurm user and is authenticated by the socket's peer uid,
  # so there is no database password to generate or keep.
  mariadb <<'SQL'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

write_slurm_configs() {
  local node
  {
    cat <<EOF
# nbtether mini-cluster (written by tests/cluster/start.sh: edit that instead)
ClusterName=$CLUSTER_NAME
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
StateSaveLocation=$SLURM_DIR/ctld
SlurmctldPidFile=$SLURMCTLD_PID
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
# Two slurmd on one machine: each one's files carry its node name (%n).
SlurmdSpoolDir=$SLURM_DIR/spool-%n
SlurmdPidFile=$SLURM_DIR/slurmd-%n.pid
SlurmdLogFile=$SLURM_DIR/slurmd-%n.log
# Let each node advertise the CPUs/memory below, not the machine's 2 cores.
SlurmdParameters=config_overrides
# No cgroups here: track processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job without --mem would take a whole node's memory.
DefMemPerCPU=1000
SchedulerType=sched/backfill
KillWait=5
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageEnforce=associations,limits,qos

EOF
    for node in "${NODES[@]}"; do
      echo "NodeName=$node NodeAddr=${NODE_ADDR[$node]} Port=${NODE_PORT[$node]} CPUs=16 RealMemory=12000 State=UNKNOWN"
    done
    # LLN: spread jobs over the least loaded node, so two jobs land on c1 and c2.
    echo "PartitionName=cpu Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE LLN=YES State=UP"
    echo "PartitionName=short Nodes=$(IFS=,; echo "${NODES[*]}") MaxTime=00:05:00 State=UP"
  } | write_file /etc/slurm/slurm.conf 0644 root:root "$SLURMCTLD_PID"

  # slurmdbd reads this from the directory of slurm.conf and refuses it unless it is
  # 0600 and owned by SlurmUser.
  write_file /etc/slurm/slurmdbd.conf 0600 slurm:slurm "$SLURMDBD_PID" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=$SLURMDBD_PID
LogFile=$SLURM_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
}

start_slurmdbd() {
  start_daemon slurmdbd "$SLURMDBD_PID" "$SLURM_DIR/slurmdbd.log" slurmdbd
  wait_until 60 "slurmdbd to answer sacctmgr" "$SLURM_DIR/slurmdbd.log" sacctmgr -n list cluster
}

# True when the sacctmgr query "$@" lists nothing.
sacctmgr_lacks() { [[ -z $(sacctmgr -n -P "$@") ]]; }

# Adds an accounting object: "$1" describes it, "$@" after it are sacctmgr's arguments.
sacctmgr_add() {
  echo "accounting: adding $1"
  shift
  sacctmgr -i add "$@" >/dev/null
}

# The cluster, QOS, account and user association that AccountingStorageEnforce
# requires before hpcuser may submit. sacctmgr refuses duplicates: add only what lacks.
ensure_accounting() {
  if sacctmgr_lacks list cluster where name="$CLUSTER_NAME" format=cluster; then
    sacctmgr_add "cluster $CLUSTER_NAME" cluster "$CLUSTER_NAME"
  fi
  if sacctmgr_lacks list qos where name=normal format=name; then
    sacctmgr_add "qos normal" qos normal
  fi
  if sacctmgr_lacks list account where name=research format=account; then
    sacctmgr_add "account research" account research cluster="$CLUSTER_NAME" \
      description="test research group" organization=nbtether
  fi
  if sacctmgr_lacks list assoc where user="$TEST_USER" account=research format=user; then
    sacctmgr_add "user $TEST_USER to account research" user "$TEST_USER" account=research \
      defaultaccount=research cluster="$CLUSTER_NAME" qos=normal defaultqos=normal
  fi
}

start_slurmctld() {
  start_daemon slurmctld "$SLURMCTLD_PID" "$SLURM_DIR/slurmctld.log" slurmctld
  wait_until 60 "slurmctld to answer scontrol ping" "$SLURM_DIR/slurmctld.log" ctld_up
}

start_slurmds() {
  local node
  for node in "${NODES[@]}"; do
    start_daemon "slurmd $node" "$(slurmd_pid "$node")" "$SLURM_DIR/slurmd-$node.log" \
      slurmd -N "$node"
  done
}

render_sshd_config() {
  cat <<EOF
# Login node of the nbtether mini-cluster (written by tests/cluster/start.sh)
ListenAddress $LOGIN_ADDR:$LOGIN_PORT
HostKey $SSHD_DIR/ssh_host_ed25519_key
PidFile $SSHD_PID
AllowUsers $TEST_USER
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding yes
# The daemon multiplexes many channels (commands, watchers, tunnels) on one connection.
MaxSessions 50
# Tests may open many connections at once; the default 10:30:100 drops some early.
MaxStartups 100
X11Forwarding no
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
LogLevel VERBOSE
EOF
  # OpenSSH >= 9.8 penalises clients whose connections fail (as tests provoke) by
  # refusing them for a while; older versions reject the keyword, so probe it.
  if /usr/sbin/sshd -t -f /dev/null -h "$SSHD_DIR/ssh_host_ed25519_key" \
    -o PerSourcePenalties=no 2>/dev/null; then
    echo "PerSourcePenalties no"
  fi
}

start_login_node() {
  [[ -f $SSHD_DIR/ssh_host_ed25519_key ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "nbtether-testcluster login node" \
      -f "$SSHD_DIR/ssh_host_ed25519_key"
  # The tests play the user's laptop: they run as root and hold the user's key.
  [[ -f $STATE/id_ed25519 ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "nbtether tests" -f "$STATE/id_ed25519"
  write_file "$STATE/known_hosts" 0644 root:root \
    <<<"[$LOGIN_ADDR]:$LOGIN_PORT $(cut -d' ' -f1,2 "$SSHD_DIR/ssh_host_ed25519_key.pub")"
  install -d -m 0700 -o "$TEST_USER" -g "$TEST_USER" "$TEST_HOME/.ssh"
  write_file "$TEST_HOME/.ssh/authorized_keys" 0600 "$TEST_USER:$TEST_USER" <"$STATE/id_ed25519.pub"

  render_sshd_config | write_file "$SSHD_DIR/sshd_config" 0644 root:root "$SSHD_PID"
  /usr/sbin/sshd -t -f "$SSHD_DIR/sshd_config" || die "$SSHD_DIR/sshd_config is invalid"
  start_daemon "sshd :$LOGIN_PORT" "$SSHD_PID" "$SSHD_DIR/sshd.log" \
    /usr/sbin/sshd -f "$SSHD_DIR/sshd_config" -E "$SSHD_DIR/sshd.log"
}

# sshd_config lines that the login nodes needing a person share with each other.
sshd_config_common() {
  cat <<EOF
HostKey $SSHD_DIR/ssh_host_ed25519_key
AllowUsers $TEST_USER
AllowTcpForwarding yes
MaxSessions 50
X11Forwarding no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
EOF
  if /usr/sbin/sshd -t -f /dev/null -h "$SSHD_DIR/ssh_host_ed25519_key" \
    -o PerSourcePenalties=no 2>/dev/null; then
    echo "PerSourcePenalties no"
  fi
}

# The login nodes that need a person share the main one's host key, in a file of their own.
write_person_known_hosts() {
  local port host_key
  host_key=$(cut -d' ' -f1,2 "$SSHD_DIR/ssh_host_ed25519_key.pub")
  for port in "$MFA_PORT" "$PASSWORD_PORT"; do
    echo "[$LOGIN_ADDR]:$port $host_key"
  done | write_file "$PERSON_KNOWN_HOSTS" 0644 root:root
}

# A second login node that asks for the key, then a TOTP code (PAM, google-authenticator).
# The secret is fixed so tests compute the codes (oathtool). DISALLOW_REUSE is left out
# on purpose: a code may be used again within its 30 s window, so tests log in several
# times without waiting for the next window; a real site may forbid that.
start_mfa_login_node() {
  write_file "$TEST_HOME/.google_authenticator" 0600 "$TEST_USER:$TEST_USER" <<EOF
$TOTP_SECRET
" TOTP_AUTH
" WINDOW_SIZE 3
EOF
  # noskewadj: the module never rewrites the secret file, so reruns find it unchanged.
  write_file /etc/pam.d/sshd_mfa 0644 root:root <<EOF
# Two-factor login node of the nbtether mini-cluster (written by tests/cluster/start.sh)
auth    required pam_google_authenticator.so noskewadj
account required pam_unix.so
session required pam_unix.so
EOF
  ln -sfn /usr/sbin/sshd "$MFA_DIR/sshd_mfa"
  {
    cat <<EOF
# Two-factor login node of the nbtether mini-cluster (written by tests/cluster/start.sh)
ListenAddress $LOGIN_ADDR:$MFA_PORT
PidFile $MFA_PID
AuthenticationMethods publickey,keyboard-interactive
PasswordAuthentication no
KbdInteractiveAuthentication yes
UsePAM yes
EOF
    sshd_config_common
  } | write_file "$MFA_DIR/sshd_config" 0644 root:root "$MFA_PID"
  "$MFA_DIR/sshd_mfa" -t -f "$MFA_DIR/sshd_config" || die "$MFA_DIR/sshd_config is invalid"
  # Started by the link's absolute path: sshd re-executes itself by that name.
  start_daemon "sshd :$MFA_PORT" "$MFA_PID" "$MFA_DIR/sshd.log" \
    "$MFA_DIR/sshd_mfa" -f "$MFA_DIR/sshd_config" -E "$MFA_DIR/sshd.log"
}

# A third login node that takes a password and nothing else. PAM (service sshd_password)
# checks it against the test password, so the account's own password stays unset.
start_password_login_node() {
  write_file "$PASSWORD_DIR/check-password" 0700 root:root <<EOF
#!/bin/bash
# pam_exec expose_authtok: the password arrives on stdin, ended by a NUL byte.
IFS= read -r -d '' password
[[ \$password == '$TEST_PASSWORD' ]]
EOF
  write_file /etc/pam.d/sshd_password 0644 root:root <<EOF
# Password-only login node of the nbtether mini-cluster (written by tests/cluster/start.sh)
auth    required pam_exec.so quiet expose_authtok $PASSWORD_DIR/check-password
account required pam_unix.so
session required pam_unix.so
EOF
  ln -sfn /usr/sbin/sshd "$PASSWORD_DIR/sshd_password"
  {
    cat <<EOF
# Password-only login node of the nbtether mini-cluster (written by tests/cluster/start.sh)
ListenAddress $LOGIN_ADDR:$PASSWORD_PORT
PidFile $PASSWORD_PID
AuthenticationMethods password
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM yes
EOF
    sshd_config_common
  } | write_file "$PASSWORD_DIR/sshd_config" 0644 root:root "$PASSWORD_PID"
  "$PASSWORD_DIR/sshd_password" -t -f "$PASSWORD_DIR/sshd_config" ||
    die "$PASSWORD_DIR/sshd_config is invalid"
  start_daemon "sshd :$PASSWORD_PORT" "$PASSWORD_PID" "$PASSWORD_DIR/sshd.log" \
    "$PASSWORD_DIR/sshd_password" -f "$PASSWORD_DIR/sshd_config" -E "$PASSWORD_DIR/sshd.log"
}

# --- Grid Engine ---------------------------------------------------------------------

# Grid Engine identifies hosts by name and checks that a client's source address resolves
# to the name it claims. Clients on the login node claim this machine's host name but
# connect from 127.0.0.1 (`localhost`): the aliases file makes the two one host.
write_sge_host_aliases() {
  local aliases=localhost name
  for name in $(hostname) $(hostname -s); do
    [[ $name == localhost || " $aliases " == *" $name "* ]] || aliases+=" $name"
  done
  write_file "$SGE_ROOT/$SGE_CELL/common/host_aliases" 0644 sgeadmin:sgeadmin \
    "$SGE_QMASTER_PID" <<<"$aliases"
}

start_qmaster() {
  install -d -m 0755 -o sgeadmin -g sgeadmin "$SGE_DIR" "$SGE_SPOOL/execd"
  write_sge_host_aliases
  start_daemon sge_qmaster "$SGE_QMASTER_PID" "$SGE_DIR/sge_qmaster.log" \
    env SGE_QMASTER_PIDFILE="$SGE_QMASTER_PID" /usr/sbin/sge_qmaster
  wait_until 60 "sge_qmaster to answer qstat" "$SGE_SPOOL/qmaster/messages" qmaster_up
}

configure_sge() {
  local node tmp
  tmp=$(mktemp -d)
  for node in "${NODES[@]}"; do
    qconf -sh | grep -qx "$node" || qconf -ah "$node" >/dev/null
  done
  qconf -ss | grep -qx localhost || qconf -as localhost >/dev/null
  # Each execd marks its jobs' processes with a group id from gid_range and kills a job by
  # that id. Both execds run on this one machine, so they need ranges that do not overlap,
  # or ending a job on one node kills the job that drew the same id on the other.
  local first=65400 size=50
  for node in "${NODES[@]}"; do
    printf 'gid_range %s-%s\n' "$first" "$((first + size - 1))" >"$tmp/$node"
    if qconf -sconf "$node" &>/dev/null; then
      qconf -Mconf "$tmp/$node" >/dev/null
    else
      qconf -Aconf "$tmp/$node" >/dev/null
    fi
    first=$((first + size))
  done
  # Schedule every 2 s instead of 15 s, so tests wait for jobs, not for the scheduler.
  qconf -ssconf | sed -E 's/^(schedule_interval +).*/\10:0:2/' >"$tmp/sconf"
  qconf -ssconf | cmp -s - "$tmp/sconf" || qconf -Msconf "$tmp/sconf" >/dev/null
  cat >"$tmp/smp" <<'EOF'
pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
  qconf -sp smp &>/dev/null || qconf -Ap "$tmp/smp" >/dev/null
  if ! qconf -sq "$SGE_QUEUE" &>/dev/null; then
    echo "grid engine: adding queue $SGE_QUEUE on ${NODES[*]}"
    qconf -sq | sed -E -e "s/^(qname +).*/\1$SGE_QUEUE/" -e "s/^(hostlist +).*/\1${NODES[*]}/" \
      >"$tmp/queue"
    qconf -Aq "$tmp/queue" >/dev/null
  fi
  rm -rf "$tmp"
  # Sixteen slots per node, as the SLURM nodes advertise. Jobs run bash as a login shell
  # (`-S /bin/bash`, and bash is in login_shells), which gives them `module` as on a site.
  # No load threshold: this machine's load says nothing about the nodes' capacity.
  sge_queue_attr slots 16
  sge_queue_attr pe_list smp
  sge_queue_attr shell /bin/bash
  sge_queue_attr load_thresholds NONE
}

# Sets attribute $1 of the queue to $2 unless it has that value.
sge_queue_attr() {
  [[ $(qconf -sq "$SGE_QUEUE" | awk -v key="$1" '$1 == key { print $2 }') == "$2" ]] ||
    qconf -rattr queue "$1" "$2" "$SGE_QUEUE" >/dev/null
}

start_execds() {
  local node shim=$SGE_DIR/bind_source.so
  if [[ ! -f $shim || $HERE/bind_source.c -nt $shim ]]; then
    gcc -shared -fPIC -O2 -Wall -o "$shim" "$HERE/bind_source.c" -ldl
  fi
  for node in "${NODES[@]}"; do
    # Its own UTS namespace gives each execd its node's host name; the shim its address.
    start_daemon "sge_execd $node" "$(sge_execd_pid "$node")" "$SGE_DIR/sge_execd-$node.log" \
      env SGE_EXECD_PORT="${SGE_EXECD_PORT[$node]}" SGE_EXECD_PIDFILE="$(sge_execd_pid "$node")" \
      NBT_SOURCE_ADDR="${NODE_ADDR[$node]}" LD_PRELOAD="$shim" \
      unshare --uts sh -c 'hostname "$1" && exec /usr/sbin/sge_execd' sh "$node"
  done
}

# Every execution host of the queue reports its load: its queue instance shows no state
# letters (`au`, alarm and unknown, until its execd has reported).
sge_nodes_usable() {
  [[ $(qstat -f -q "$SGE_QUEUE" | awk '/@/ && NF == 5 { n++ } END { print n + 0 }') == "${#NODES[@]}" ]]
}

# --- the user's software and the daemon's config ----------------------------------

# As a cluster user would: a venv from the module's Python, over an ssh login.
install_jupyter() {
  local venv=$TEST_HOME/jupyter_env
  login_shell "$venv/bin/jupyter-lab --version" &>/dev/null && return
  echo "jupyterlab: installing into $venv (takes a minute)"
  login_shell "module load $PYTHON_MODULE && python -m venv $venv \
    && $venv/bin/pip install --progress-bar off jupyterlab" \
    >"$STATE/jupyter-install.log" 2>&1 ||
    die "installing jupyterlab as $TEST_USER failed" "$STATE/jupyter-install.log"
}

write_daemon_config() {
  write_file "$STATE/config.yaml" 0644 root:root <<EOF
sessions_dir: $STATE/sessions.d
state_dir: $STATE/state
clusters:
  $CLUSTER_NAME:
    host: $LOGIN_ADDR
    port: $LOGIN_PORT
    user: $TEST_USER
    identity_file: $STATE/id_ed25519
    known_hosts: $STATE/known_hosts
  $CLUSTER_NAME-mfa:
    host: $LOGIN_ADDR
    port: $MFA_PORT
    user: $TEST_USER
    identity_file: $STATE/id_ed25519
    known_hosts: $PERSON_KNOWN_HOSTS
  $CLUSTER_NAME-password:
    host: $LOGIN_ADDR
    port: $PASSWORD_PORT
    user: $TEST_USER
    known_hosts: $PERSON_KNOWN_HOSTS
  sge:
    kind: sge
    host: $LOGIN_ADDR
    port: $LOGIN_PORT
    user: $TEST_USER
    identity_file: $STATE/id_ed25519
    known_hosts: $STATE/known_hosts
EOF
}

# --- readiness -----------------------------------------------------------------------

# sinfo lines "c1 idle" for the cpu partition; a "*" suffix marks a node not responding.
node_states() { sinfo -h -N -p cpu -o '%N %T'; }

# A node that responds but was set down or drained (say, by a test that failed
# before resuming it) stays so; bring it back so every session starts usable.
resume_downed_nodes() {
  local node state
  while read -r node state; do
    if [[ $state =~ ^(down|drain|drained|draining|fail|failing)$ ]]; then
      echo "resuming $node (was $state)"
      scontrol update nodename="$node" state=resume
    fi
  done < <(node_states)
}

# Every node idle, or busy with jobs left from earlier sessions, and responding.
nodes_usable() {
  local node state up=0
  while read -r node state; do
    [[ $state =~ ^(idle|mixed|allocated)$ ]] && up=$((up + 1))
  done < <(node_states)
  ((up == ${#NODES[@]}))
}

nodes_responding() {
  local states
  states=$(node_states) && [[ -n $states && $states != *'*'* ]]
}

wait_until_ready() {
  local log=$SLURM_DIR/slurmctld.log
  wait_until 60 "slurmd on ${NODES[*]} to register with slurmctld" "$log" nodes_responding
  resume_downed_nodes
  wait_until 30 "nodes ${NODES[*]} to be idle" "$log" nodes_usable
  wait_until 60 "sge_execd on ${NODES[*]} to report to sge_qmaster" \
    "$SGE_SPOOL/qmaster/messages" sge_nodes_usable
  login_shell "module load $PYTHON_MODULE && python --version" >/dev/null ||
    die "ssh login to $TEST_USER@$LOGIN_ADDR:$LOGIN_PORT with the module failed" "$SSHD_DIR/sshd.log"
}

print_summary() {
  cat <<EOF

nbtether mini-cluster is up (${SECONDS}s). State, configs and logs: $STATE
$(sinfo -h -N -p cpu -o '  node %N: %T, %c CPUs, %m MB memory')
  grid engine: queue $SGE_QUEUE on ${NODES[*]} (qstat -f), cluster \`sge\` in the config
  login:   ssh -p $LOGIN_PORT -i $STATE/id_ed25519 -o UserKnownHostsFile=$STATE/known_hosts $TEST_USER@$LOGIN_ADDR
  daemon:  nbtether --config $STATE/config.yaml run
  logs:    $STATE/{munge,mysql,slurm,sge,sshd}/*.log, $SGE_SPOOL/{qmaster,execd/*}/messages
  stop:    bash $HERE/stop.sh
EOF
}

main() {
  [[ $EUID -eq 0 ]] || die "run me as root (I install packages and start system daemons)"
  install_packages
  prepare_dirs
  add_node_hosts
  create_test_user
  create_neighbour_user
  setup_python_module
  start_munge
  start_mariadb
  write_slurm_configs
  start_slurmdbd
  ensure_accounting
  start_slurmctld
  start_slurmds
  start_qmaster
  configure_sge
  start_execds
  start_login_node
  write_person_known_hosts
  start_mfa_login_node
  start_password_login_node
  install_jupyter
  write_daemon_config
  wait_until_ready
  print_summary
}

main "$@"
