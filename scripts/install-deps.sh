#!/usr/bin/env bash
# Installs the system tools agentvpn's build, tests, netns lab and benchmark need (Debian/Ubuntu).
# Idempotent and fast when everything is present: apt-get only runs for what is missing.
set -euo pipefail

# package:command-that-proves-it-is-there
wanted=(
  iproute2:ip
  iptables:iptables
  wireguard-go:wireguard-go
  wireguard-tools:wg
  iperf3:iperf3
  iputils-ping:ping
  curl:curl
  nebula:nebula-cert
  openssh-server:sshd
  python3:python3
  make:make
  g++:g++
  procps:sysctl
  util-linux:nsenter
  nftables:nft
  miniupnpd-nftables:miniupnpd
  stun-client:stun
  dnsutils:dig
  prometheus:prometheus
  chromium:chromium
  systemd:systemd-analyze
  ncat:ncat
  postgresql:pg_ctlcluster   # the registry's PostgreSQL store tests (initdb in /usr/lib/postgresql/*/bin)
)

have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have_pkg() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }

missing=()
for entry in "${wanted[@]}"; do
  pkg=${entry%%:*} cmd=${entry#*:}
  if ! have_cmd "$cmd" && ! have_pkg "$pkg"; then missing+=("$pkg"); fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all present"
  exit 0
fi

echo "install-deps: missing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root to install them (sudo $0)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: no apt-get here; install these packages by hand: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
