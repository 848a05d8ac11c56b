#!/usr/bin/env bash
# Fetches Debian trixie's wireguard-go (0.0.20231211) and nebula for the benchmarks ONLY:
# `apt-get download` with a private apt configuration and state (nothing of the system's apt
# is read or written but its keyring and the mirror it already uses), then `dpkg-deb -x` into
# .cache/trixie/root. Nothing is installed. Idempotent: a second run only prints the paths.
#
#   scripts/fetch-trixie.sh            # prints WIREGUARD_GO=..., NEBULA=..., NEBULA_CERT=...
#   eval "$(scripts/fetch-trixie.sh)"  # in a shell
#
# The mirror is the one the system's apt sources name for Debian's main archive; set
# TRIXIE_MIRROR=<uri> to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="$PWD/.cache/trixie"
ROOT="$CACHE/root"
APT="$CACHE/apt"
PACKAGES=(wireguard-go nebula)
WG="$ROOT/usr/bin/wireguard-go"
NEB="$ROOT/usr/bin/nebula"
NEB_CERT="$ROOT/usr/bin/nebula-cert"

print_paths() {
  echo "WIREGUARD_GO=$WG"
  echo "NEBULA=$NEB"
  echo "NEBULA_CERT=$NEB_CERT"
}

if [ -x "$WG" ] && [ -x "$NEB" ] && [ -x "$NEB_CERT" ]; then
  print_paths
  exit 0
fi

# The system's Debian mirror: the first URI of a deb source whose path ends in /debian.
system_mirror() {
  {
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}' || true
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\]//' | awk '{print $2}' || true
  } | grep -E '/debian/?$' | head -n 1 || true
}
MIRROR="${TRIXIE_MIRROR:-$(system_mirror)}"
if [ -z "$MIRROR" ]; then
  echo "fetch-trixie: no Debian mirror in the system's apt sources; set TRIXIE_MIRROR=<uri of a Debian archive>" >&2
  exit 1
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if [ ! -f "$KEYRING" ]; then
  echo "fetch-trixie: $KEYRING is missing (apt-get install debian-archive-keyring)" >&2
  exit 1
fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "fetch-trixie: $tool is missing (this needs a Debian-like system)" >&2; exit 1; }
done

mkdir -p "$APT/etc/sources.list.d" "$APT/etc/preferences.d" "$APT/etc/apt.conf.d" \
  "$APT/state/lists/partial" "$APT/cache/archives/partial" "$CACHE/debs" "$ROOT"
echo "deb [signed-by=$KEYRING] $MIRROR trixie main" >"$APT/etc/sources.list"
: >"$APT/state/status" # an empty dpkg status: apt must not look at what the system has installed
opts=(
  -o "Dir::Etc=$APT/etc" -o "Dir::Etc::sourcelist=$APT/etc/sources.list" -o "Dir::Etc::sourceparts=$APT/etc/sources.list.d"
  -o "Dir::Etc::preferencesparts=$APT/etc/preferences.d" -o "Dir::Etc::parts=$APT/etc/apt.conf.d"
  -o "Dir::State=$APT/state" -o "Dir::State::status=$APT/state/status" -o "Dir::Cache=$APT/cache"
  -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -o "APT::Architecture=$(dpkg --print-architecture)"
)
echo "fetch-trixie: apt-get update (private state in $APT)" >&2
apt-get "${opts[@]}" update >&2
(cd "$CACHE/debs" && apt-get "${opts[@]}" download "${PACKAGES[@]}" >&2)
for deb in "$CACHE"/debs/*.deb; do
  echo "fetch-trixie: unpacking $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)" >&2
  dpkg-deb -x "$deb" "$ROOT"
done
for bin in "$WG" "$NEB" "$NEB_CERT"; do
  [ -x "$bin" ] || { echo "fetch-trixie: $bin is missing after unpacking" >&2; exit 1; }
done
# The 0.0.20231211 release still calls itself v0.0.20230223 (upstream did not bump version.go).
echo "fetch-trixie: $("$WG" --version 2>&1 | head -n 1), nebula $("$NEB" -version 2>&1 | head -n 1)" >&2
print_paths
