#!/usr/bin/env bash
# Starts the system D-Bus and avahi-daemon where nothing (systemd) did, for mDNS
# discovery. Idempotent; needs root. With DYNO_NETNS=NAME, starts a private bus and
# daemon for that network namespace (the multi-host test uses this) and prints the bus
# address to use (DBUS_SYSTEM_BUS_ADDRESS).
set -euo pipefail
if [[ $(id -u) -ne 0 ]]; then
  echo "avahi.sh: needs root to start dbus-daemon and avahi-daemon" >&2
  exit 1
fi
ns="${DYNO_NETNS:-}"
if [[ -z "$ns" ]]; then
  if ! avahi-daemon --check 2>/dev/null; then
    mkdir -p /run/dbus
    # A socket left by a bus that is gone (its pid file names no live process) is stale.
    if [[ -S /run/dbus/system_bus_socket ]] && ! kill -0 "$(cat /run/dbus/pid 2>/dev/null)" 2>/dev/null; then
      rm -f /run/dbus/system_bus_socket
    fi
    if [[ ! -S /run/dbus/system_bus_socket ]]; then
      rm -f /run/dbus/pid
      dbus-daemon --system --fork
    fi
    avahi-daemon -D --no-drop-root 2>/dev/null || avahi-daemon -D
    for _ in $(seq 50); do avahi-daemon --check 2>/dev/null && break; sleep 0.1; done
  fi
  avahi-daemon --check
  echo "unix:path=/run/dbus/system_bus_socket"
  exit 0
fi
# A private bus and daemon inside namespace $ns, with their own runtime folder.
dir="/run/dyno-netns/$ns"
mkdir -p "$dir"
bus="unix:path=$dir/bus"
if [[ ! -S "$dir/bus" ]]; then
  cat > "$dir/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>$bus</listen>
  <pidfile>$dir/bus.pid</pidfile>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_type="method_call"/>
    <allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
CONF
  ip netns exec "$ns" dbus-daemon --config-file="$dir/bus.conf" --fork
fi
if [[ ! -f "$dir/avahi.pid" ]] || ! kill -0 "$(cat "$dir/avahi.pid")" 2>/dev/null; then
  cat > "$dir/avahi.conf" <<CONF
[server]
# Its own host name: daemons of namespaces on one link would otherwise all be this
# machine's name, and resolve the conflict by renaming themselves while services register.
host-name=$ns
use-ipv4=yes
use-ipv6=no
enable-dbus=yes
disallow-other-stacks=no
[publish]
publish-workstation=no
[reflector]
[rlimits]
CONF
  ip netns exec "$ns" env DBUS_SYSTEM_BUS_ADDRESS="$bus" \
    unshare --mount bash -c "mount --bind $dir /run/avahi-daemon 2>/dev/null || { mkdir -p /run/avahi-daemon; mount --bind $dir /run/avahi-daemon; }; exec avahi-daemon --no-drop-root --no-chroot -f $dir/avahi.conf" \
    > "$dir/avahi.log" 2>&1 &
  echo $! > "$dir/avahi.pid"
  # Ready when it says so (services registered before that can be lost).
  for _ in $(seq 200); do
    grep -q "Server startup complete" "$dir/avahi.log" 2>/dev/null && break
    sleep 0.05
  done
  grep -q "Server startup complete" "$dir/avahi.log" || {
    echo "avahi.sh: avahi-daemon in $ns did not start: $(tail -3 "$dir/avahi.log")" >&2
    exit 1
  }
fi
echo "$bus"
