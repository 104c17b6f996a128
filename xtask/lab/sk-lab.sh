#!/bin/bash
# sk-lab: host side of `cargo xtask lab` (spoolkeeper's three-host lab), run as root in the root
# namespace. Also installed as /var/lib/sk-lab/bin/sk-lab so that `sk-lab kill NODE` works as the
# spec's fencing command.
#
#   sk-lab up | down | status | exec HOST CMD... | cut HOST | heal HOST | kill HOST | boot HOST
#
# Every host is a network namespace sk-HOST plus a persistent mount and UTS namespace bound to
# files under $LAB/ns, entered with nsenter. Every value used here is a lab constant: nothing
# comes from a spec.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
umask 022

LAB=/var/lib/sk-lab
BR=sk-br0
BR_ADDR=10.77.0.1
HOSTS=(node-a node-b smtp-arch)
NODES=(node-a node-b)
VMAIL_UID=5000
POOL_SIZE=2G
PACKAGES=(zfs-fuse postfix dovecot-imapd dovecot-lmtpd openssh-server openssh-client iproute2 tcsh
  sanoid mbuffer iputils-arping zstd lz4)
# Service addresses of the instances (also in sk-instance and xtask/src/lab/mod.rs).
SERVICE_ADDRS=(10.77.0.21 10.77.0.22)

log() { echo "sk-lab: $*" >&2; }
die() { echo "sk-lab: error: $*" >&2; exit 1; }

host_addr() {
  case "$1" in
    node-a) echo 10.77.0.11 ;;
    node-b) echo 10.77.0.12 ;;
    smtp-arch) echo 10.77.0.13 ;;
    *) die "unknown host '$1' (hosts: ${HOSTS[*]})" ;;
  esac
}
is_node() { [ "$1" = node-a ] || [ "$1" = node-b ]; }
hdir() { echo "$LAB/hosts/$1"; }
netns_file() { echo "/run/netns/sk-$1"; }

# Run a command inside HOST (its net, mount and UTS namespaces) with a clean environment.
in_host() {
  local h=$1; shift
  nsenter --net="$(netns_file "$h")" --mount="$LAB/ns/$h.mnt" --uts="$LAB/ns/$h.uts" -- \
    env -i PATH="$PATH" HOME=/root LC_ALL=C TERM="${TERM:-dumb}" "$@"
}
host_exists() { [ -e "$(netns_file "$1")" ] && mountpoint -q "$LAB/ns/$1.mnt" 2>/dev/null; }
host_pids() { ip netns pids "sk-$1" 2>/dev/null || true; }

# ---------------------------------------------------------------- packages
ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
      missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing missing packages: ${missing[*]}"
  # Never let a package start its daemon in the root namespace.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confold "${missing[@]}" >&2 || rc=$?
  if [ $rc -ne 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || true
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confold "${missing[@]}" >&2 || rc=$?
  fi
  [ $made_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc -eq 0 ] || die "apt-get install failed (rc=$rc)"
}

# Wait until the given processes are really gone: an exiting process leaves its network
# namespace (and `ip netns pids`) before it is reaped.
wait_gone() {
  local p i alive
  for i in $(seq 1 200); do
    alive=0
    for p in "$@"; do
      if [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]; then alive=1; fi
    done
    [ $alive -eq 0 ] && return 0
    sleep 0.05
  done
  log "warning: processes still exiting: $*"
}

# ---------------------------------------------------------------- teardown
# Stop everything of one host: graceful first (nodes export their pool), then SIGTERM/SIGKILL of
# every process of its network namespace, then its namespaces.
teardown_host() {
  local h=$1 i pids
  if host_exists "$h" && [ -n "$(host_pids "$h")" ]; then
    if is_node "$h"; then
      timeout 60 nsenter --net="$(netns_file "$h")" --mount="$LAB/ns/$h.mnt" -- \
        zpool export -f zdata >/dev/null 2>&1 || true
    fi
  fi
  local seen=""
  for i in $(seq 1 100); do
    pids=$(host_pids "$h")
    [ -z "$pids" ] && break
    seen="$seen $pids"
    # shellcheck disable=SC2086
    if [ "$i" -le 40 ]; then kill -TERM $pids 2>/dev/null || true; else kill -KILL $pids 2>/dev/null || true; fi
    sleep 0.1
  done
  [ -z "$(host_pids "$h")" ] || die "processes of $h survive SIGKILL: $(host_pids "$h")"
  wait_gone $seen
  for ns in mnt uts; do
    if mountpoint -q "$LAB/ns/$h.$ns" 2>/dev/null; then umount "$LAB/ns/$h.$ns"; fi
  done
  if [ -e "$(netns_file "$h")" ]; then ip netns del "sk-$h"; fi
  if ip link show "sk-$h" >/dev/null 2>&1; then ip link del "sk-$h" 2>/dev/null || true; fi
}

teardown() {
  local h pids=() rc=0 p
  # hosts in parallel: zfs-fuse takes a second or two to export and exit
  for h in "${HOSTS[@]}"; do teardown_host "$h" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc -eq 0 ] || die "teardown failed (see above)"
  if ip link show "$BR" >/dev/null 2>&1; then ip link del "$BR"; fi
  # Namespace files of a crashed lab whose netns file is gone: unmount whatever remains.
  if [ -d "$LAB/ns" ]; then
    local f
    for f in "$LAB"/ns/*; do
      [ -e "$f" ] || continue
      if mountpoint -q "$f"; then umount "$f" || umount -l "$f"; fi
    done
    if mountpoint -q "$LAB/ns"; then umount "$LAB/ns" || umount -l "$LAB/ns"; fi
  fi
  if [ -d "$LAB" ]; then
    if findmnt -rn -o TARGET | grep "^$LAB" >/dev/null; then
      die "something is still mounted under $LAB: $(findmnt -rn -o TARGET | grep "^$LAB" | tr '\n' ' ')"
    fi
  fi
}

# ---------------------------------------------------------------- build
write_postfix_master() {
  cat >"$1/master.cf" <<'EOF'
# spoolkeeper lab: Debian's services without chroot (the host is a namespace, not a chroot)
smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}

write_postfix_main() {
  local h=$1 dir=$2
  cat >"$dir/main.cf" <<EOF
# spoolkeeper lab: $h
compatibility_level = 3.6
myhostname = $h.lab
mydomain = lab
myorigin = \$myhostname
mydestination =
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8 10.77.0.0/24
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
readme_directory = no
smtputf8_enable = no
enable_long_queue_ids = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
smtp_connect_timeout = 5s
lmtp_connect_timeout = 5s
maillog_file = /var/log/postfix.log
smtpd_banner = \$myhostname ESMTP
queue_run_delay = 15s
minimal_backoff_time = 15s
maximal_backoff_time = 60s
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
EOF
  if is_node "$h"; then
    # staff.lab is served by the staff instance's own Postfix (write_postfix_staff), not by
    # this one: mail for it reaching the node's Postfix is refused, never delivered unarchived.
    cat >>"$dir/main.cf" <<'EOF'
alternate_config_directories = /etc/postfix/staff
virtual_mailbox_domains = students.lab
virtual_transport = lmtp:inet:127.0.0.1:24
smtpd_reject_unlisted_recipient = no
transport_maps = inline:{archive.lab=smtp:[10.77.0.13]}
EOF
  else
    cat >>"$dir/main.cf" <<'EOF'
relay_domains = archive.lab
smtpd_recipient_restrictions = check_recipient_access inline:{archive.lab=HOLD}, permit_mynetworks, reject_unauth_destination
EOF
  fi
}

# The staff instance's own Postfix (multi-instance, `mail: { in: runtime, postfix: {
# config_directory: /etc/postfix/staff } }` in examples/lab.yaml): its queue lives on the
# instance's dataset, so it is replicated with the mail and a promoted replica comes up with
# the queue files the old active had; it listens on port 2525 and runs only where the
# instance runs (sk-instance starts and stops it).
write_postfix_staff() {
  local h=$1 dir=$2/staff
  mkdir -p "$dir"
  write_postfix_master "$dir"
  sed -i 's/^smtp      inet /2525      inet /' "$dir/master.cf"
  cat >"$dir/main.cf" <<EOF
# spoolkeeper lab: the staff instance's own Postfix on $h
compatibility_level = 3.6
queue_directory = /zdata/imap/staff/.postfix
data_directory = /var/lib/postfix/staff
syslog_name = postfix-staff
maillog_file = /var/log/postfix-staff.log
myhostname = staff-$h.lab
mydomain = lab
myorigin = \$myhostname
mydestination =
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8 10.77.0.0/24
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
readme_directory = no
smtputf8_enable = no
enable_long_queue_ids = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
smtp_connect_timeout = 5s
lmtp_connect_timeout = 5s
smtpd_banner = \$myhostname ESMTP
queue_run_delay = 15s
minimal_backoff_time = 15s
maximal_backoff_time = 60s
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = staff.lab
virtual_transport = lmtp:inet:127.0.0.1:24
smtpd_reject_unlisted_recipient = no
transport_maps = inline:{archive.lab=smtp:[10.77.0.13]}
EOF
}

write_dovecot_conf() {
  cat >"$1/dovecot.conf" <<EOF
# spoolkeeper lab: IMAP + LMTP on the instance datasets (Maildir), any user, password "lab"
protocols = imap lmtp
listen = *
base_dir = /run/dovecot
state_dir = /var/lib/dovecot
log_path = /var/log/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
mail_location = maildir:~/Maildir
mmap_disable = yes
first_valid_uid = $VMAIL_UID
last_valid_uid = $VMAIL_UID
first_valid_gid = $VMAIL_UID
last_valid_gid = $VMAIL_UID
passdb {
  driver = static
  args = password=lab
}
# $LAB/mailroot/students.lab is a symlink to /zdata/imap/students (the mountpoint of the
# instance dataset), so alice@students.lab lives in /zdata/imap/students/alice/Maildir. When the
# dataset is absent, unmounted or read-only, the vmail uid cannot write there and delivery fails
# temporarily (Postfix defers); Dovecot itself keeps running.
userdb {
  driver = static
  args = uid=$VMAIL_UID gid=$VMAIL_UID home=$LAB/mailroot/%d/%n
}
namespace inbox {
  inbox = yes
}
service imap-login {
  inet_listener imap {
    port = 143
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = 24
  }
}
protocol lmtp {
  postmaster_address = postmaster@lab.test
}
EOF
}

# The drill instance of a node: a second Dovecot on loopback only (IMAP 10143, LMTP 10024), its own
# base_dir and state, serving whatever drill clone is mounted at /var/tmp/spoolkeeper/drill/INSTANCE
# ($LAB/drillroot/students.lab links there). Started and stopped by `sk-instance drill-start|drill-stop`
# (the spec's drill block); production mail never reaches it.
write_dovecot_drill_conf() {
  cat >"$1/drill.conf" <<EOF
# spoolkeeper lab: the drill copy of an instance (a clone), loopback only, password "lab"
instance_name = dovecot-drill
protocols = imap lmtp
listen = 127.0.0.1
base_dir = /run/dovecot-drill
state_dir = /var/lib/dovecot/drill
log_path = /var/log/dovecot-drill.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
mail_location = maildir:~/Maildir
mmap_disable = yes
first_valid_uid = $VMAIL_UID
last_valid_uid = $VMAIL_UID
first_valid_gid = $VMAIL_UID
last_valid_gid = $VMAIL_UID
passdb {
  driver = static
  args = password=lab
}
userdb {
  driver = static
  args = uid=$VMAIL_UID gid=$VMAIL_UID home=$LAB/drillroot/%d/%n
}
namespace inbox {
  inbox = yes
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = 10143
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = 10024
  }
}
protocol lmtp {
  postmaster_address = postmaster@lab.test
}
EOF
}

write_ssh_conf() {
  local h=$1 dir=$2
  cat >"$dir/sshd_config" <<EOF
# spoolkeeper lab: sshd of $h (key-only root login, keys under $LAB/ssh)
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile $LAB/ssh/authorized_keys
StrictModes yes
UseDNS no
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
EOF
  cat >"$dir/ssh_config" <<EOF
# spoolkeeper lab: ssh client of $h (node-to-node replication uses the lab key)
Host *
  IdentityFile $LAB/ssh/id_ed25519
  UserKnownHostsFile $LAB/ssh/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
EOF
  ssh-keygen -q -t ed25519 -N '' -C "root@$h.lab" -f "$dir/ssh_host_ed25519_key"
}

make_host() {
  local h=$1 d a
  d=$(hdir "$h")
  a=$(host_addr "$h")
  mkdir -p "$d"/{etc-zfs,var-lib-zfs,zdata,etc-postfix,spool-postfix,lib-postfix,etc-dovecot,lib-dovecot,log,etc-ssh,var-tmp}
  # each host its own /var/tmp, as real hosts have (restore staging, drill mountpoints)
  chmod 1777 "$d/var-tmp"
  cp -a /etc/zfs/. "$d/etc-zfs/" 2>/dev/null || true
  cp -a /etc/postfix/. "$d/etc-postfix/"
  rm -f "$d/etc-postfix/main.cf" "$d/etc-postfix/master.cf" "$d/etc-postfix/sasl/"* 2>/dev/null || true
  write_postfix_master "$d/etc-postfix"
  write_postfix_main "$h" "$d/etc-postfix"
  if is_node "$h"; then
    write_postfix_staff "$h" "$d/etc-postfix"
    mkdir -p "$d/lib-postfix/staff"
  fi
  write_dovecot_conf "$d/etc-dovecot"
  write_dovecot_drill_conf "$d/etc-dovecot"
  mkdir -p "$d/lib-dovecot/drill"
  write_ssh_conf "$h" "$d/etc-ssh"
  chmod 700 "$d/lib-dovecot"
  chown -R postfix:postfix "$d/lib-postfix"

  # network
  ip netns add "sk-$h"
  ip link add "sk-$h" type veth peer name eth0 netns "sk-$h"
  ip link set "sk-$h" master "$BR"
  ip link set "sk-$h" up
  ip -n "sk-$h" link set lo up
  ip -n "sk-$h" addr add "$a/24" dev eth0
  ip -n "sk-$h" link set eth0 up

  # persistent private mount + UTS namespaces bound to files
  touch "$LAB/ns/$h.mnt" "$LAB/ns/$h.uts"
  nsenter --net="$(netns_file "$h")" -- \
    unshare --mount="$LAB/ns/$h.mnt" --uts="$LAB/ns/$h.uts" --propagation private -- \
    /bin/sh -eu -c '
      d=$1; h=$2
      hostname "$h"
      mount -t tmpfs -o mode=0755 sk-run /run
      mkdir -p /run/lock /run/sshd /run/dovecot /run/dovecot-drill
      mount --bind "$d/etc-zfs" /etc/zfs
      mkdir -p /var/lib/zfs
      mount --bind "$d/var-lib-zfs" /var/lib/zfs
      mount --bind "$d/zdata" /zdata
      mount --bind "$d/etc-postfix" /etc/postfix
      mount --bind "$d/spool-postfix" /var/spool/postfix
      mount --bind "$d/lib-postfix" /var/lib/postfix
      mount --bind "$d/etc-dovecot" /etc/dovecot
      mount --bind "$d/lib-dovecot" /var/lib/dovecot
      mount --bind "$d/log" /var/log
      mount --bind "$d/etc-ssh" /etc/ssh
      mount --bind "$d/var-tmp" /var/tmp
    ' sk-mkns "$d" "$h"
}

# Start the daemons of a host (used by up and boot). Instances are not started here.
start_daemons() {
  local h=$1 d i
  d=$(hdir "$h")
  if is_node "$h"; then
    in_host "$h" zfs-fuse --pidfile /run/zfs-fuse.pid </dev/null >>"$d/log/daemons.log" 2>&1
    for i in $(seq 1 100); do
      in_host "$h" zpool list >/dev/null 2>&1 && break
      sleep 0.1
    done
    if [ -e "$d/zdata.img" ]; then
      if ! in_host "$h" zpool list -H -o name zdata >/dev/null 2>&1; then
        in_host "$h" zpool import -f -d "$d" zdata
      fi
      in_host "$h" zfs mount -a
    fi
  fi
  # Daemons get no stdio of ours: a caller reading our output must see EOF when we exit.
  in_host "$h" /usr/sbin/sshd -f /etc/ssh/sshd_config -E /var/log/sshd.log \
    </dev/null >>"$d/log/daemons.log" 2>&1 || die "sshd failed to start on $h (see $d/log/sshd.log)"
  in_host "$h" postfix check </dev/null >>"$d/log/daemons.log" 2>&1 || true
  in_host "$h" postfix start </dev/null >>"$d/log/daemons.log" 2>&1 ||
    in_host "$h" postfix status </dev/null >/dev/null 2>&1 ||
    die "postfix failed to start on $h (see $d/log/postfix.log)"
  if is_node "$h"; then
    in_host "$h" dovecot </dev/null >>"$d/log/daemons.log" 2>&1 ||
      die "dovecot failed to start on $h (see $d/log/dovecot.log)"
  fi
}

wait_ssh() {
  local h=$1 a i
  a=$(host_addr "$h")
  for i in $(seq 1 100); do
    if ssh -q -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$LAB/ssh/known_hosts" \
      -o ConnectTimeout=2 -i "$LAB/ssh/id_ed25519" "root@$a" true </dev/null 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "ssh to $h ($a) does not answer"
}

cmd_up() {
  ensure_packages
  [ -e /dev/fuse ] || modprobe fuse || die "no /dev/fuse: zfs-fuse needs the fuse module"
  if [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" = 1 ]; then
    log "warning: br_netfilter is active: a firewall FORWARD policy may drop traffic on $BR"
  fi
  if [ -e "$LAB/up.done" ]; then
    local ok=1 h
    for h in "${HOSTS[@]}"; do host_exists "$h" || ok=0; done
    if [ $ok -eq 1 ]; then log "lab already up (use 'down' first to rebuild)"; return 0; fi
    log "lab is half up: rebuilding"
  fi
  teardown
  # keep bin/ (written by xtask just before), drop everything else of an older lab
  if [ -d "$LAB" ]; then
    find "$LAB" -mindepth 1 -maxdepth 1 ! -name bin -exec rm -rf --one-file-system {} +
  fi
  mkdir -p "$LAB"/{ns,ssh,hosts,bin,mailroot,drillroot}
  ln -s /zdata/imap/students "$LAB/mailroot/students.lab"
  ln -s /zdata/imap/staff "$LAB/mailroot/staff.lab"
  ln -s /var/tmp/spoolkeeper/drill/students "$LAB/drillroot/students.lab"
  ln -s /var/tmp/spoolkeeper/drill/staff "$LAB/drillroot/staff.lab"
  # the drill probes' password (the spec's drill.password_file), read by spoolkeeper
  echo lab >"$LAB/drill-password"
  chmod 600 "$LAB/drill-password"
  chmod 755 "$LAB" "$LAB/ssh"
  mount --bind "$LAB/ns" "$LAB/ns"
  mount --make-private "$LAB/ns"
  [ -d /zdata ] || mkdir /zdata

  ssh-keygen -q -t ed25519 -N '' -C "spoolkeeper-lab" -f "$LAB/ssh/id_ed25519"
  cp "$LAB/ssh/id_ed25519.pub" "$LAB/ssh/authorized_keys"
  chmod 600 "$LAB/ssh/authorized_keys"

  ip link add "$BR" type bridge
  ip addr add "$BR_ADDR/24" dev "$BR"
  ip link set "$BR" up

  local h
  : >"$LAB/ssh/known_hosts"
  for h in "${HOSTS[@]}"; do
    make_host "$h"
    echo "$(host_addr "$h") $(cut -d' ' -f1,2 "$(hdir "$h")/etc-ssh/ssh_host_ed25519_key.pub")" >>"$LAB/ssh/known_hosts"
  done
  for h in "${HOSTS[@]}"; do start_daemons "$h"; done
  for h in "${NODES[@]}"; do
    truncate -s "$POOL_SIZE" "$(hdir "$h")/zdata.img"
    in_host "$h" zpool create -f -m /zdata zdata "$(hdir "$h")/zdata.img" >/dev/null
  done
  # The site as it was before spoolkeeper: both instances on node-a.
  local inst
  for inst in students staff; do
    in_host node-a zfs create -p "zdata/imap/$inst"
    in_host node-a chown "$VMAIL_UID:$VMAIL_UID" "/zdata/imap/$inst"
    in_host node-a chmod 0750 "/zdata/imap/$inst"
  done
  for inst in students staff; do
    in_host node-a "$LAB/bin/sk-instance" start "$inst" </dev/null >/dev/null
  done
  for h in "${HOSTS[@]}"; do wait_ssh "$h"; done
  date -u +%FT%TZ >"$LAB/up.done"
  log "lab up: node-a 10.77.0.11, node-b 10.77.0.12, smtp-arch 10.77.0.13; students 10.77.0.21, staff 10.77.0.22 on node-a"
}

cmd_down() {
  teardown
  if [ -d "$LAB" ]; then rm -rf --one-file-system "$LAB"; fi
  if [ -d /zdata ]; then rmdir /zdata 2>/dev/null || log "left /zdata in place: it is not empty"; fi
  log "lab down"
}

# ---------------------------------------------------------------- power and network
cmd_kill() {
  local h=$1 pids i seen=""
  host_addr "$h" >/dev/null
  host_exists "$h" || die "$h does not exist (is the lab up?)"
  touch "$(hdir "$h")/off"
  # Power loss: the NIC goes dark first, then every process dies at once, nothing flushed.
  ip link set "sk-$h" down
  for i in $(seq 1 50); do
    pids=$(host_pids "$h")
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    seen="$seen $pids"
    kill -KILL $pids 2>/dev/null || true
    sleep 0.05
  done
  [ -z "$(host_pids "$h")" ] || die "processes of $h survive SIGKILL"
  # shellcheck disable=SC2086
  wait_gone $seen
  log "$h killed"
}

cmd_boot() {
  local h=$1 a
  host_addr "$h" >/dev/null
  host_exists "$h" || die "$h does not exist (is the lab up?)"
  if [ -n "$(host_pids "$h")" ]; then log "$h is running already"; return 0; fi
  # A rebooted machine: fresh /run, no stale FUSE mounts, no service address.
  nsenter --mount="$LAB/ns/$h.mnt" -- /bin/sh -c '
    for m in $(awk '\''$3 ~ /^fuse/ {print $2}'\'' /proc/self/mounts | sort -r); do umount -l "$m" || true; done
    umount -l /run 2>/dev/null || true
    mount -t tmpfs -o mode=0755 sk-run /run
    mkdir -p /run/lock /run/sshd /run/dovecot /run/dovecot-drill
  '
  for a in "${SERVICE_ADDRS[@]}"; do
    ip -n "sk-$h" addr del "$a/24" dev eth0 >/dev/null 2>&1 || true
  done
  start_daemons "$h"
  rm -f "$(hdir "$h")/off"
  [ -e "$(hdir "$h")/cut" ] || ip link set "sk-$h" up
  log "$h booted"
}

cmd_cut() {
  local h=$1
  host_addr "$h" >/dev/null
  host_exists "$h" || die "$h does not exist (is the lab up?)"
  touch "$(hdir "$h")/cut"
  ip link set "sk-$h" down
  log "$h cut"
}

cmd_heal() {
  local h=$1
  host_addr "$h" >/dev/null
  host_exists "$h" || die "$h does not exist (is the lab up?)"
  rm -f "$(hdir "$h")/cut"
  [ -e "$(hdir "$h")/off" ] || ip link set "sk-$h" up
  log "$h healed"
}

cmd_exec() {
  local h=$1; shift
  host_addr "$h" >/dev/null
  host_exists "$h" || die "$h does not exist (is the lab up?)"
  [ $# -gt 0 ] || die "exec $h: no command"
  in_host "$h" "$@"
}

cmd_status() {
  if [ ! -e "$LAB/up.done" ]; then echo "lab: down"; return 0; fi
  echo "lab: up since $(cat "$LAB/up.done")"
  local h state link addrs procs pool
  printf '%-10s %-6s %-5s %-32s %-40s %s\n' HOST POWER LINK ADDRESSES DAEMONS POOL
  for h in "${HOSTS[@]}"; do
    if ! host_exists "$h"; then printf '%-10s missing\n' "$h"; continue; fi
    state=on; [ -e "$(hdir "$h")/off" ] && state=off
    link=up; [ -e "$(hdir "$h")/cut" ] && link=cut
    [ "$state" = off ] && link=down
    addrs=$(ip -n "sk-$h" -4 -o addr show dev eth0 | awk '{print $4}' | sed 's#/24##' | paste -sd, -)
    procs=$(host_pids "$h" | xargs -r ps -o comm= -p 2>/dev/null |
      grep -E '^(zfs-fuse|sshd|master|dovecot)$' | sort -u | paste -sd, - || true)
    pool=-
    if is_node "$h" && [ "$state" = on ]; then
      pool=$(timeout 10 nsenter --net="$(netns_file "$h")" --mount="$LAB/ns/$h.mnt" -- \
        zpool list -H -o name,health 2>/dev/null | tr '\t' ':' | paste -sd, - || true)
      [ -n "$pool" ] || pool="(none)"
    fi
    printf '%-10s %-6s %-5s %-32s %-40s %s\n' "$h" "$state" "$link" "${addrs:--}" "${procs:--}" "$pool"
  done
}

[ "$(id -u)" -eq 0 ] || die "the lab needs root"
verb=${1:-}
[ -n "$verb" ] || die "usage: sk-lab up|down|status|exec HOST CMD...|cut HOST|heal HOST|kill HOST|boot HOST"
shift
case "$verb" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  exec) [ $# -ge 1 ] || die "usage: sk-lab exec HOST CMD..."; cmd_exec "$@" ;;
  cut|heal|kill|boot)
    [ $# -eq 1 ] || die "usage: sk-lab $verb HOST"
    "cmd_$verb" "$1" ;;
  *) die "unknown verb '$verb'" ;;
esac
