#!/usr/bin/env bash
# Installs everything the VM harness, the demo and the benchmarks need on a
# fresh Debian 12 machine: QEMU, Debian's 6.1 and 6.12 kernels with their
# headers and sources (for checkpatch), fio, sparse and virtme-ng.
# Idempotent: a second run only checks.
set -euo pipefail

KVERS_WANTED=${KVERS_WANTED:-"6.1 6.12"}
VENV=${BLKSNAP_VENV:-/opt/blksnap-venv}

log() { printf 'setup: %s\n' "$*" >&2; }

# bookworm-backports carries the 6.12 kernel. Reuse the mirror the machine
# already uses for bookworm rather than naming one here.
add_backports() {
	local src=/etc/apt/sources.list.d/blksnap-backports.sources
	[ -f "$src" ] && return 0
	local uri
	uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' \
		/etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	if [ -z "$uri" ]; then
		uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' \
			/etc/apt/sources.list 2>/dev/null || true)
	fi
	[ -n "$uri" ] || { log "cannot find the bookworm mirror in apt's sources"; exit 1; }
	cat >"$src" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	log "added bookworm-backports from $uri"
}

# Newest installable ABI of a kernel series, from the given suite.
kernel_abi() {
	local series=$1
	apt-cache search --names-only "^linux-image-${series//./\\.}\\.[0-9]+(-[0-9]+|\\+deb[0-9]+)-amd64-unsigned\$" |
		awk '{print $1}' | sed -e 's/^linux-image-//' -e 's/-unsigned$//' |
		sort -V | tail -n 1
}

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

add_backports
if [ ! -f /var/lib/apt/periodic/blksnap-updated ] || [ -n "${SETUP_UPDATE:-}" ]; then
	apt-get update -qq
	mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/blksnap-updated
fi

for p in fio sparse kmod dkms python3-venv e2fsprogs xfsprogs fdisk \
	util-linux busybox-static protobuf-compiler libprotobuf-dev; do
	have "$p" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
	log "installing ${need_pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# The machine image ships qemu-utils from backports; qemu-system must match it.
if ! have qemu-system-x86; then
	log "installing qemu-system-x86"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-t bookworm-backports qemu-system-x86 >/dev/null
fi

for series in $KVERS_WANTED; do
	abi=$(kernel_abi "$series")
	[ -n "$abi" ] || { log "no kernel $series found in apt"; exit 1; }
	suite=()
	[ "$series" != 6.1 ] && suite=(-t bookworm-backports)
	pkgs=()
	for p in "linux-image-$abi-unsigned" "linux-headers-$abi" "linux-source-$series"; do
		have "$p" || pkgs+=("$p")
	done
	if [ ${#pkgs[@]} -gt 0 ]; then
		log "installing ${pkgs[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			"${suite[@]}" "${pkgs[@]}" >/dev/null
	fi
	# checkpatch.pl and its data files, unpacked once per series.
	if [ ! -x "/usr/src/linux-source-$series/scripts/checkpatch.pl" ]; then
		tarball=$(ls /usr/src/linux-source-"$series".tar.* | head -n 1)
		tar -C /usr/src -xf "$tarball" \
			"linux-source-$series/scripts" "linux-source-$series/Documentation/dev-tools" \
			"linux-source-$series/include/linux/compiler_attributes.h" 2>/dev/null ||
			tar -C /usr/src -xf "$tarball" "linux-source-$series/scripts"
	fi
	echo "$abi"
done >/var/lib/apt/periodic/blksnap-kernels.new
# Readers (the harness, the benchmark) never see the list half written.
mv /var/lib/apt/periodic/blksnap-kernels.new /var/lib/apt/periodic/blksnap-kernels

if [ ! -x "$VENV/bin/vng" ]; then
	log "installing virtme-ng into $VENV"
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install -q virtme-ng
fi
log "ready: kernels $(tr '\n' ' ' </var/lib/apt/periodic/blksnap-kernels)"
