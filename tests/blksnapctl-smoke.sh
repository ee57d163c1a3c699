#!/usr/bin/env bash
# Smoke test of blksnapctl against the real module.
#
# On the host:   tests/blksnapctl-smoke.sh [--kernel 6.1|6.12|all]
#   builds blksnapctl and runs this script in the VM harness (tests/vm/run),
#   which loads blksnap.ko and passes the scratch disks as arguments.
# In the guest:  tests/blksnapctl-smoke.sh DATA0 DATA1 STORE SPARE
#   (the harness's default disks). Destroys the content of DATA1, STORE and
#   SPARE.
#
# Walks the operator's path: attach, create, add, take, info, verify the
# image against a copy of the device made before the take while the device
# is overwritten, copy the image out, list the changed ranges, events,
# destroy, detach; then bad input that must fail with the documented exit
# code and a one-line reason. Exits non-zero on the first failed check.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CTL="$ROOT/target/debug/blksnapctl"

if [ -z "${BLKSNAP_TEST_DISKS:-}" ]; then
	# Host side.
	cd "$ROOT"
	cargo build -q -p blksnapctl
	exec tests/vm/run "$@" --exec "bash tests/blksnapctl-smoke.sh \"\$@\""
fi

[ $# -ge 4 ] || { echo "smoke: need 4 disks, got $#" >&2; exit 1; }
FSDISK=$2 STORE=$3 DEV=$4
[ -x "$CTL" ] || { echo "smoke: $CTL is missing: build it on the host" >&2; exit 1; }

step() { printf '\nsmoke: == %s\n' "$*"; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
ctl() { echo "+ blksnapctl $*" >&2; "$CTL" "$@"; }
json_get() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

# Runs blksnapctl expecting exit code $1 and exactly one line on stderr.
expect_fail() {
	local want=$1 rc=0 err
	shift
	echo "+ blksnapctl $* (expect exit $want)" >&2
	err=$("$CTL" "$@" 2>&1 >/dev/null) || rc=$?
	echo "  -> exit $rc: $err"
	[ "$rc" -eq "$want" ] || fail "blksnapctl $* exited $rc, want $want"
	[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || fail "blksnapctl $* printed more than one line"
	case $err in blksnapctl:\ *) ;; *) fail "reason does not start with 'blksnapctl: '" ;; esac
}

WORK=$(mktemp -d /tmp/blksnapctl-smoke.XXXXXX)
MNT=$WORK/mnt
ID=
cleanup() {
	if [ -n "$ID" ]; then "$CTL" snapshot destroy "$ID" >/dev/null 2>&1 || true; fi
	"$CTL" detach "$DEV" >/dev/null 2>&1 || true
	if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

step "module version"
ctl version

SIZE=$(blockdev --getsize64 "$DEV")
MIB=$((SIZE >> 20))
step "fill $DEV ($MIB MiB) with random data"
dd if=/dev/urandom of="$DEV" bs=1M count="$MIB" oflag=direct status=none

step "attach and change tracking state"
ctl attach "$DEV"
ctl cbt info "$DEV"
expect_fail 4 attach "$DEV"

step "snapshot on a block device storage"
ID=$(ctl snapshot create --storage "$STORE" --limit 512M)
echo "id $ID"
ctl snapshot add "$ID" "$DEV"
ctl snapshot info "$DEV"
ctl snapshot list | grep -qx "$ID" || fail "snapshot list lacks $ID"
# The reference: the device's content just before the take (nothing
# writes to it in between).
dd if="$DEV" of="$WORK/ref" bs=1M iflag=direct status=none
ctl snapshot take "$ID"
IMAGE=$(ctl --json snapshot info "$DEV" | json_get 'd["image"]')
[ -b "$IMAGE" ] || fail "snapshot info gave no image block device: $IMAGE"
ctl snapshot info "$DEV"

step "overwrite parts of the device, then verify the image"
for off in 0 3 17 64 65 100 $((MIB - 1)); do
	dd if=/dev/urandom of="$DEV" bs=1M count=1 seek="$off" oflag=direct conv=notrunc status=none
done
dd if=/dev/urandom of="$DEV" bs=4k count=1 seek=$((40 * 256 + 3)) oflag=direct conv=notrunc status=none
ctl image verify "$IMAGE" "$WORK/ref"
ctl image verify "$IMAGE" "$WORK/ref" --length 8M
ctl --json image verify "$IMAGE" "$WORK/ref" | json_get 'd["equal"]' | grep -qx True || fail "json verify not equal"
# The device itself no longer matches: exit 5.
expect_fail 5 image verify "$DEV" "$WORK/ref"

step "copy the image out"
ctl image copy "$IMAGE" "$WORK/copy"
cmp "$WORK/copy" "$WORK/ref" || fail "image copy differs from the reference"
rm -f "$WORK/copy"

step "events and busy device"
ctl snapshot events "$ID" --timeout 200ms
expect_fail 4 detach "$DEV"

step "changed ranges since snapshot 1 (needs a second take)"
ctl snapshot destroy "$ID"
ID=$(ctl snapshot create --storage "$STORE" --limit 512M)
ctl snapshot add "$ID" "$DEV"
ctl snapshot take "$ID"
ctl cbt info "$DEV"
ctl cbt changes "$DEV" --since 1
CH=$(ctl --json cbt changes "$DEV" --since 1)
BS=$(echo "$CH" | json_get 'd["block_size"]')
# Every written MiB must be covered; nothing far from a write may be.
echo "$CH" | python3 -c '
import json, sys
d = json.load(sys.stdin)
mib, bs = 1 << 20, d["block_size"]
writes = [(o * mib, mib) for o in (0, 3, 17, 64, 65, 100, int(sys.argv[1]) - 1)]
writes.append(((40 * 256 + 3) * 4096, 4096))
ranges = [(r["offset"], r["offset"] + r["length"]) for r in d["ranges"]]
cover = lambda a: any(s <= a < e for s, e in ranges)
for off, ln in writes:
    for a in (off, off + ln - 1):
        assert cover(a), f"write at {a} not in changes"
near = lambda a: any(off - bs <= a < off + ln + bs for off, ln in writes)
for s, e in ranges:
    for a in range(s, e, bs):
        assert near(a), f"block at {a} marked but never written"
print(f"smoke: {len(ranges)} ranges cover all {len(writes)} writes")
' "$MIB"
ctl snapshot destroy "$ID"
ID=

step "mark ranges changed"
ctl cbt dirty "$DEV" 0:64K 128M:4K

step "O_TMPFILE storage on ext4"
mkfs.ext4 -q -F "$FSDISK"
mkdir -p "$MNT"
mount "$FSDISK" "$MNT"
ID=$(ctl snapshot create --storage-dir "$MNT" --limit 256M)
[ -z "$(ls -A "$MNT" | grep -v lost+found)" ] || fail "O_TMPFILE storage is visible in $MNT"
ctl snapshot add "$ID" "$DEV"
ctl snapshot take "$ID"
dd if=/dev/urandom of="$DEV" bs=1M count=2 seek=10 oflag=direct conv=notrunc status=none
IMAGE=$(ctl --json snapshot info "$DEV" | json_get 'd["image"]')
dd if="$IMAGE" of="$WORK/ref" bs=1M count=16 status=none
ctl image verify "$IMAGE" "$WORK/ref" --length 16M
ctl snapshot destroy "$ID"
ID=
umount "$MNT"

step "detach and an empty list"
ctl detach "$DEV"
[ -z "$(ctl snapshot list)" ] || fail "snapshots left after destroy"

step "bad input"
expect_fail 3 snapshot take 00000000-0000-4000-8000-000000000000
expect_fail 3 snapshot destroy 00000000-0000-4000-8000-000000000000
expect_fail 3 cbt info "$DEV"
expect_fail 3 attach /dev/does-not-exist
expect_fail 2 attach "$WORK"
expect_fail 2 snapshot take not-a-uuid
expect_fail 2 cbt dirty "$DEV" 0:100
expect_fail 2 snapshot create --storage-dir "$WORK"
expect_fail 3 snapshot info "$DEV"

echo
echo "smoke: all checks passed"
