#!/usr/bin/env bash
# Builds a busybox with the ntpd applet for scripts/bench-ntp.sh: Debian's
# busybox packages are configured without it. From Debian's own source
# package (apt-get source, through a private sources list and cache, the
# system's apt configuration untouched), the ntpd applet alone, static with
# musl-gcc (musl-tools), as LinuxKit's and Alpine's busybox are musl.
#
#   scripts/bench/busybox-ntpd.sh OUT_DIR   -> OUT_DIR/busybox, OUT_DIR/busybox.version
set -euo pipefail
out="${1:?usage: busybox-ntpd.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
[ -x "$out/busybox" ] && [ -s "$out/busybox.version" ] && exit 0
command -v musl-gcc >/dev/null || { echo "busybox-ntpd.sh: musl-gcc missing (apt-get install musl-tools)" >&2; exit 1; }
work="$out/src"
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/sources"
. /etc/os-release
cat >"$work/apt/sources/src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$work/apt/sources"
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache")
apt-get "${apt_opts[@]}" -qq update
(cd "$work" && apt-get "${apt_opts[@]}" -qq source --download-only busybox 2>/dev/null)
tar -C "$work" -xjf "$work"/busybox_*.orig.tar.bz2
cd "$work"/busybox-*/
make -s allnoconfig >/dev/null
sed -i -e 's/^# CONFIG_NTPD is not set/CONFIG_NTPD=y/' -e 's/^# CONFIG_STATIC is not set/CONFIG_STATIC=y/' .config
{ yes "" || true; } | make -s oldconfig >/dev/null
make -s -j"$(nproc)" CC=musl-gcc >/dev/null
cp busybox "$out/busybox"
dsc="$(basename "$work"/busybox_*.dsc .dsc)"
echo "busybox ${dsc#busybox_} (Debian source), ntpd applet only, static musl" >"$out/busybox.version"
echo "busybox-ntpd.sh: $out/busybox: $(cat "$out/busybox.version")"
