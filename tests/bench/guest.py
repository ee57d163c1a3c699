#!/usr/bin/env python3
"""The guest half of tests/bench/run: measures, writes raw results, judges nothing.

Runs inside the VM with blksnap.ko loaded (tests/vm/run --exec), as root:

    guest.py --out DIR [--reps N] [--pair-reps N] [--take-reps N]
             [--sections LIST] DATA SMALL1 SMALL2 SMALL3 COW

DATA is the device under test; SMALL1..3 only join it for the four-device
take; COW is the difference storage of both blksnap (a block device opened
O_EXCL by blksnapctl) and dm-snapshot (its COW device), used by one of them
at a time so both get the same backing. Everything on these disks is
destroyed.

Writes DIR/results.json with every fio run (throughput, latency
percentiles, per-disk I/O counts) of the throughput and paired sections,
the take latencies and the memory deltas. A section that cannot run is recorded under "errors" with the
reason, the others go on, and the exit status is then 1.

Python 3 standard library only; fio, dmsetup and blksnapctl do the work.
"""

import argparse
import fcntl
import hashlib
import itertools
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CTL = os.environ.get("BLKSNAPCTL", os.path.join(ROOT, "target", "debug", "blksnapctl"))
MIB = 1 << 20
SECTOR = 512

# The workloads. Sequential ones cover [0, 2 GiB); random ones write
# 8192 distinct 4 KiB blocks, in an order fixed by the seed, into
# [2 GiB, 2.5 GiB), so the rewrite hits exactly the blocks (and chunks)
# that the first write preserved; the image read covers [0, 2 GiB). Sized
# so that the plain device, which the host's page cache serves at GiB/s,
# still runs for a good fraction of a second.
SEQ_SIZE = 2048 * MIB
RAND_OFFSET = 2048 * MIB
RAND_SPAN = 512 * MIB
RAND_IO = 32 * MIB
READ_SIZE = 2048 * MIB
DATA_USED = RAND_OFFSET + RAND_SPAN

WORKLOADS = {
    "seq_first": dict(rw="write", bs="1M", iodepth=4, offset=0, size=SEQ_SIZE),
    "seq_rewrite": dict(rw="write", bs="1M", iodepth=4, offset=0, size=SEQ_SIZE),
    "rand_first": dict(rw="randwrite", bs="4k", iodepth=16, offset=RAND_OFFSET, size=RAND_SPAN,
                       io_size=RAND_IO, randseed=4242),
    "rand_rewrite": dict(rw="randwrite", bs="4k", iodepth=16, offset=RAND_OFFSET, size=RAND_SPAN,
                         io_size=RAND_IO, randseed=4242),
    "image_read": dict(rw="read", bs="1M", iodepth=4, offset=0, size=READ_SIZE),
}
# The multi section: first writes and rewrites with k snapshots of the
# device held, k = 1, 2, 4, 8, blksnap against dm-snapshot (256 KiB chunks
# both). Each snapshot has its own storage, a dm-linear slice of the COW
# disk (an eighth of it), for both; 256 MiB so that dm-snapshot's 8 copies
# of every chunk fit. Each round runs every count, one held first and last
# (its two runs bracket the others, so a ratio to their mean cancels a
# load that drifts over the round; their own ratio is the noise floor)
# and the others in between in an order that changes from round to round.
MULTI_COUNTS = (1, 2, 4, 8)
MULTI_SIZE = 256 * MIB
MULTI_WORKLOADS = {
    "multi_first": dict(rw="write", bs="1M", iodepth=4, offset=0, size=MULTI_SIZE),
    "multi_rewrite": dict(rw="write", bs="1M", iodepth=4, offset=0, size=MULTI_SIZE),
}
CONFIGS = ["plain", "tracking", "blksnap", "blksnap_file", "dm256", "dm64"]
# blksnap with its difference storage in a file, as the node plugin keeps
# it: O_TMPFILE in an ext4 made on the COW disk, mounted here.
FILE_STORAGE_DIR = "/tmp/bench-storage"
SNAPSHOTS = ("blksnap", "blksnap_file")
DM_CHUNK_SECTORS = {"dm256": 512, "dm64": 128}


# Device-mapper's ioctls (linux/dm-ioctl.h), so that the dm side of the
# take latency is timed in-process like blksnap's ioctl and not dominated
# by starting dmsetup four times per device.
DM_HEADER = struct.Struct("=3IIIIiIIIQ128s129s7s")
DM_TARGET = struct.Struct("=QQiI16s")
DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_TABLE_LOAD = 3, 4, 6, 9
DM_SUSPEND_FLAG = 1 << 1
assert DM_HEADER.size == 312 and DM_TARGET.size == 40


class DmControl:
    """The few device-mapper commands a snapshot take needs."""

    def __init__(self):
        self.fd = os.open("/dev/mapper/control", os.O_RDWR)

    def close(self):
        os.close(self.fd)

    def _cmd(self, nr, name, flags=0, target=None):
        body = b""
        count = 0
        if target:
            ttype, length, params = target
            p = params.encode() + b"\0"
            p += b"\0" * (-(DM_TARGET.size + len(p)) % 8)
            body = DM_TARGET.pack(0, length, 0, DM_TARGET.size + len(p), ttype.encode()) + p
            count = 1
        size = DM_HEADER.size + len(body)
        buf = bytearray(DM_HEADER.pack(4, 0, 0, size, DM_HEADER.size, count, 0, flags, 0, 0, 0,
                                       name.encode(), b"", b"") + body)
        req = (3 << 30) | (DM_HEADER.size << 16) | (0xFD << 8) | nr
        try:
            fcntl.ioctl(self.fd, req, buf, True)
        except OSError as e:
            raise StepError(f"dm ioctl {nr} on {name}: {e}")

    def create(self, name):
        self._cmd(DM_DEV_CREATE, name)

    def load(self, name, ttype, length, params):
        self._cmd(DM_TABLE_LOAD, name, target=(ttype, length, params))

    def suspend(self, name):
        self._cmd(DM_DEV_SUSPEND, name, flags=DM_SUSPEND_FLAG)

    def resume(self, name):
        self._cmd(DM_DEV_SUSPEND, name)

    def remove(self, name):
        self._cmd(DM_DEV_REMOVE, name)


def flush_disks(devs):
    """fsync on each disk: the guest's flush makes QEMU write the image
    file back on the host now, rather than during the next run."""
    run(["sync"])
    for d in devs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def log(msg):
    print(f"bench: {msg}", flush=True)


class StepError(Exception):
    """A step that cannot run; the message says why."""


def run(cmd, check=True, capture=True, timeout=900):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip().splitlines()
        raise StepError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-1] if err else ''}")
    return proc


def ctl(*args):
    return run([CTL, *args]).stdout.strip()


def ctl_json(*args):
    return json.loads(run([CTL, "--json", *args]).stdout)


def dmsetup(*args):
    return run(["dmsetup", *args])


def dev_size(dev):
    return int(run(["blockdev", "--getsize64", dev]).stdout)


def zero(dev, offset, length):
    """Writes zeros with O_DIRECT: wipes a COW header before a new snapshot."""
    run(["dd", "if=/dev/zero", f"of={dev}", "bs=1M", f"seek={offset // MIB}",
         f"count={length // MIB}", "oflag=direct", "conv=notrunc", "status=none"])


def digest(dev, length):
    """MD5 of the first `length` bytes of `dev`."""
    h = hashlib.md5()
    fd = os.open(dev, os.O_RDONLY)
    try:
        off = 0
        while off < length:
            b = os.pread(fd, min(4 * MIB, length - off), off)
            if not b:
                raise StepError(f"{dev} ended at byte {off}")
            h.update(b)
            off += len(b)
    finally:
        os.close(fd)
    return h.hexdigest()


def diskstats(devs):
    """(reads, read sectors, read ms, writes, write sectors, write ms) per device."""
    names = {os.path.basename(os.path.realpath(d)): d for d in devs}
    out = {}
    with open("/proc/diskstats") as f:
        for line in f:
            p = line.split()
            if p[2] in names:
                out[names[p[2]]] = [int(p[3]), int(p[5]), int(p[6]), int(p[7]), int(p[9]), int(p[10])]
    return out


def diskstats_delta(before, after):
    keys = ["reads", "read_sectors", "read_ms", "writes", "write_sectors", "write_ms"]
    return {d: dict(zip(keys, [a - b for a, b in zip(after[d], before[d])]))
            for d in after if d in before}


class StackSampler:
    """Samples the kernel stacks of busy tasks (state D or R) every 20 ms.

    perf is not available in the guest; a histogram of the top frames of
    blocked fio threads and kworkers shows where a write waits.
    """

    def __init__(self):
        self.counts = {}
        self.samples = 0
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        me = os.getpid()
        while not self.stop_ev.is_set():
            self.samples += 1
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == me:
                    continue
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tids:
                    base = f"/proc/{pid}/task/{tid}"
                    try:
                        with open(f"{base}/stat") as f:
                            stat = f.read()
                        comm = stat[stat.index("(") + 1:stat.rindex(")")]
                        state = stat[stat.rindex(")") + 2]
                        if state not in "DR" or not re.match(r"fio|kworker|blksnap|kcopyd|dm", comm):
                            continue
                        with open(f"{base}/stack") as f:
                            frames = [ln.split()[1].split("+")[0] for ln in f if ln.strip()]
                    except (OSError, ValueError, IndexError):
                        continue
                    frames = [fr for fr in frames if not fr.startswith(("__schedule", "schedule"))]
                    who = "fio" if comm.startswith("fio") else re.sub(r"[0-9:/]+.*", "", comm)
                    key = f"{who}[{state}]: " + " < ".join(frames[:6])
                    self.counts[key] = self.counts.get(key, 0) + 1
            self.stop_ev.wait(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join(timeout=5)

    def top(self, n=15):
        items = sorted(self.counts.items(), key=lambda kv: -kv[1])[:n]
        return {"samples": self.samples, "top": [{"count": c, "stack": k} for k, c in items]}


class Bench:
    def __init__(self, args):
        self.args = args
        self.data = args.data
        self.smalls = args.smalls
        self.cow = args.cow
        self.res = {
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "module_params": self.module_params(),
            "storage": "blksnap: the COW virtio disk as a block device opened O_EXCL; "
                       "blksnap_file: an O_TMPFILE file in an ext4 on that disk; "
                       "dm-snapshot: the same disk as its persistent COW device",
            "runs": [],
            "paired": [],
            "take": {},
            "memory": {},
            "diagnosis": {},
            "errors": [],
            "loadavg_start": open("/proc/loadavg").read().split()[:3],
        }
        self.snapshot_id = None
        self.attached = set()

    @staticmethod
    def module_params():
        d = "/sys/module/blksnap/parameters"
        try:
            return {p: open(os.path.join(d, p)).read().strip() for p in sorted(os.listdir(d))}
        except OSError:
            return {}

    def error(self, where, e):
        msg = f"{where}: {e}"
        log(f"ERROR {msg}")
        self.res["errors"].append(msg)

    # ---- fio -------------------------------------------------------------

    def fio(self, dev, workload, loops=1):
        opts = dict({**WORKLOADS, **MULTI_WORKLOADS}[workload], loops=loops)
        cmd = ["fio", "--name=bench", f"--filename={dev}", "--direct=1", "--ioengine=libaio",
               "--output-format=json", "--thread", "--group_reporting"]
        cmd += [f"--{k}={v}" for k, v in opts.items()]
        watched = [self.data, self.cow]
        flush_disks([self.data, self.cow, *self.smalls])
        before = diskstats(watched)
        t0 = time.monotonic()
        proc = run(cmd, timeout=1800)
        wall = time.monotonic() - t0
        after = diskstats(watched)
        # What the run left for later (dirty page cache of a storage that
        # was written buffered, a device's write cache): part of a first
        # write's cost paid after it. Timed here, reported beside the run.
        t1 = time.monotonic()
        flush_disks([self.data, self.cow])
        flush_s = time.monotonic() - t1
        text = proc.stdout
        try:
            job = json.loads(text[text.index("{"):])["jobs"][0]
        except (ValueError, KeyError, IndexError) as e:
            raise StepError(f"fio output not understood: {e}")
        side = job["read"] if opts["rw"].endswith("read") else job["write"]
        if side.get("total_ios", 0) == 0 and side.get("io_bytes", 0) == 0:
            raise StepError(f"fio did no I/O on {dev}")
        pct = side.get("clat_ns", {}).get("percentile", {})
        return {
            "bw_mib_s": side["bw_bytes"] / MIB,
            "iops": side["iops"],
            "io_mib": side["io_bytes"] / MIB,
            "runtime_s": side["runtime"] / 1000.0,
            "wall_s": wall,
            "flush_s": flush_s,
            "clat_us": {p: pct[k] / 1000.0 for p, k in
                        (("p50", "50.000000"), ("p90", "90.000000"), ("p99", "99.000000"),
                         ("p99.9", "99.900000")) if k in pct},
            "clat_mean_us": side.get("clat_ns", {}).get("mean", 0) / 1000.0,
            "disks": diskstats_delta(before, after),
        }

    # ---- the configurations ------------------------------------------------

    def attach(self, dev):
        ctl("attach", dev)
        self.attached.add(dev)

    def detach(self, dev):
        ctl("detach", dev)
        self.attached.discard(dev)

    def blksnap_snapshot(self, devs, in_file=False):
        # A file storage leaves room for its file system's metadata.
        limit = dev_size(self.cow) // SECTOR * SECTOR
        where = ["--storage", self.cow]
        if in_file:
            limit = limit * 9 // 10 // SECTOR * SECTOR
            where = ["--storage-dir", FILE_STORAGE_DIR]
        sid = ctl("snapshot", "create", *where, "--limit", str(limit))
        self.snapshot_id = sid
        for d in devs:
            ctl("snapshot", "add", sid, d)
        took = ctl_json("snapshot", "take", sid)
        return sid, took

    def blksnap_destroy(self):
        if self.snapshot_id:
            sid, self.snapshot_id = self.snapshot_id, None
            ctl("snapshot", "destroy", sid)

    def file_storage_mount(self):
        os.makedirs(FILE_STORAGE_DIR, exist_ok=True)
        # Inode tables and journal written now, not by a lazy-init thread
        # during the runs.
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.cow])
        run(["mount", "-t", "ext4", self.cow, FILE_STORAGE_DIR])

    def file_storage_umount(self):
        if os.path.ismount(FILE_STORAGE_DIR):
            run(["umount", FILE_STORAGE_DIR])

    def dm_create(self, chunk):
        zero(self.cow, 0, MIB)
        sectors = dev_size(self.data) // SECTOR
        # The snapshot first: the origin target reads its split boundary
        # (the smallest chunk of the snapshots of its device) when it is
        # resumed. Resumed with no snapshot yet, it would not cut writes at
        # chunk boundaries and only the first chunk of a large write would
        # be copied (that is why LVM resumes the origin last).
        dmsetup("create", "bsb-snap", "--table",
                f"0 {sectors} snapshot {self.data} {self.cow} P {chunk}")
        dmsetup("create", "bsb-origin", "--table", f"0 {sectors} snapshot-origin {self.data}")
        run(["udevadm", "settle"], check=False)
        for n in ("bsb-origin", "bsb-snap"):
            if not os.path.exists(f"/dev/mapper/{n}"):
                raise StepError(f"/dev/mapper/{n} did not appear")

    def dm_remove(self):
        for n in ("bsb-snap", "bsb-origin"):
            if os.path.exists(f"/dev/mapper/{n}"):
                dmsetup("remove", "--retry", n)

    def cleanup(self):
        for f in (self.blksnap_destroy, self.file_storage_umount, self.dm_remove):
            try:
                f()
            except StepError as e:
                self.error("cleanup", e)
        for d in list(self.attached):
            try:
                self.detach(d)
            except StepError as e:
                self.error("cleanup", e)

    def cycle(self, config, rep, sampler_for=()):
        """One pass of every workload on one configuration."""
        target = read_target = self.data
        extra = {}
        diag = rep < 0
        # What the snapshot must keep of the sequential range.
        ref = digest(self.data, SEQ_SIZE) if config in (*SNAPSHOTS, *DM_CHUNK_SECTORS) else None
        if config == "tracking":
            self.attach(self.data)
        elif config in SNAPSHOTS:
            self.attach(self.data)
            if config == "blksnap_file":
                self.file_storage_mount()
            _, took = self.blksnap_snapshot([self.data], in_file=config == "blksnap_file")
            extra["take_us"] = took["took_us"]
            info = ctl_json("snapshot", "info", self.data)
            if not info.get("image"):
                raise StepError("the snapshot has no image after take")
            read_target = info["image"]
        elif config in DM_CHUNK_SECTORS:
            self.dm_create(DM_CHUNK_SECTORS[config])
            target, read_target = "/dev/mapper/bsb-origin", "/dev/mapper/bsb-snap"
        try:
            for w in WORKLOADS:
                dev = read_target if w == "image_read" else target
                if w in sampler_for:
                    with StackSampler() as s:
                        r = self.fio(dev, w)
                    self.res["diagnosis"].setdefault(config, {})[w] = {"fio": r, "stacks": s.top()}
                    log(f"  diag {config:9s} {w:13s} {r['bw_mib_s']:8.1f} MiB/s")
                    continue
                if diag:
                    continue
                r = self.fio(dev, w)
                r.update(config=config, workload=w, rep=rep, target=dev, **extra)
                self.res["runs"].append(r)
                log(f"  rep {rep} {config:9s} {w:13s} {r['bw_mib_s']:8.1f} MiB/s "
                    f"{r['iops']:9.0f} IOPS  p99 {r['clat_us'].get('p99', 0):9.0f} us")
            if config in SNAPSHOTS:
                info = ctl_json("snapshot", "info", self.data)
                if info.get("error"):
                    raise StepError(f"the snapshot was corrupted during the run: {info['error']}")
            if ref is not None:
                # The image must still hold the sequential range as it was
                # before the first write; a snapshot that lost it would make
                # its numbers meaningless.
                got = digest(read_target, SEQ_SIZE)
                self.res.setdefault("image_checks", []).append(
                    {"config": config, "rep": rep, "ok": got == ref})
                if got != ref:
                    raise StepError(f"{config}: {read_target} does not hold the data of before "
                                    f"the snapshot (md5 {got} != {ref})")
        finally:
            if config in SNAPSHOTS:
                self.blksnap_destroy()
                self.file_storage_umount()
            if config in DM_CHUNK_SECTORS:
                self.dm_remove()
            if config in ("tracking", *SNAPSHOTS):
                self.detach(self.data)

    # ---- sections ----------------------------------------------------------

    def prepare(self):
        """Fills the used part of the data disk and the whole COW disk once,
        so no run pays for the first allocation of the sparse image files on
        the host."""
        for dev, length in ((self.data, DATA_USED), (self.cow, dev_size(self.cow))):
            log(f"filling {dev} ({length // MIB} MiB)")
            run(["fio", "--name=fill", f"--filename={dev}", "--direct=1", "--ioengine=libaio",
                 "--rw=write", "--bs=1M", "--iodepth=8", f"--size={length}",
                 "--buffer_compress_percentage=0", "--refill_buffers", "--output-format=terse"],
                timeout=3600)
        run(["modprobe", "dm-snapshot"])

    def throughput(self):
        for rep in range(self.args.reps):
            # Rotate the order so that a slow spell of the shared host does
            # not always fall on the same configuration.
            order = CONFIGS[rep % len(CONFIGS):] + CONFIGS[:rep % len(CONFIGS)]
            for config in order:
                try:
                    self.cycle(config, rep)
                except (StepError, subprocess.TimeoutExpired) as e:
                    self.error(f"rep {rep} {config}", e)
                    self.cleanup()

    def multi_slices(self):
        """Eight equal dm-linear slices of the COW disk: one storage per
        snapshot, the same backing for blksnap and dm-snapshot."""
        each = dev_size(self.cow) // SECTOR // 8 // 8 * 8
        paths = []
        for i in range(8):
            name = f"bsb-cow{i}"
            if not os.path.exists(f"/dev/mapper/{name}"):
                dmsetup("create", name, "--table", f"0 {each} linear {self.cow} {i * each}")
            paths.append(f"/dev/mapper/{name}")
        run(["udevadm", "settle"], check=False)
        return paths

    def multi_fio(self, dev):
        """The section's two workloads on `dev`, udev settled before each
        (the probes of new images and snapshot devices read the origin),
        each with what the run and its flush read from the device and
        wrote to the COW disk: the copies made, whatever their timing."""
        out = {}
        for w in MULTI_WORKLOADS:
            run(["udevadm", "settle"], check=False)
            before = diskstats([self.data, self.cow])
            r = self.fio(dev, w)
            after = diskstats([self.data, self.cow])
            d = diskstats_delta(before, after)
            r["data_read_mib"] = d[self.data]["read_sectors"] * SECTOR / MIB
            r["cow_write_mib"] = d[self.cow]["write_sectors"] * SECTOR / MIB
            out[w] = r
        return out

    def multi_blksnap(self, k, slices):
        self.attach(self.data)
        ids = []
        try:
            for i in range(k):
                # --limit is in bytes, whole sectors.
                limit = dev_size(slices[i]) // SECTOR * SECTOR
                sid = ctl("snapshot", "create", "--storage", slices[i], "--limit", str(limit))
                ids.append(sid)
                ctl("snapshot", "add", sid, self.data)
                ctl("snapshot", "take", sid)
            out = self.multi_fio(self.data)
            info = ctl_json("snapshot", "info", self.data)
            if info.get("error"):
                raise StepError(f"a snapshot was corrupted during the run: {info['error']}")
            return out
        finally:
            for sid in ids:
                ctl("snapshot", "destroy", sid)
            self.detach(self.data)

    def multi_dm(self, k, slices):
        sectors = dev_size(self.data) // SECTOR
        names = []
        try:
            # Snapshots before the origin, as in dm_create().
            for i in range(k):
                zero(slices[i], 0, MIB)
                dmsetup("create", f"bsb-msnap{i}", "--table",
                        f"0 {sectors} snapshot {self.data} {slices[i]} P 512")
                names.append(f"bsb-msnap{i}")
            dmsetup("create", "bsb-origin", "--table", f"0 {sectors} snapshot-origin {self.data}")
            names.insert(0, "bsb-origin")
            return self.multi_fio("/dev/mapper/bsb-origin")
        finally:
            for n in names:
                dmsetup("remove", "--retry", n)

    @staticmethod
    def multi_order(rnd):
        """Round `rnd`'s counts: one held first and last, the others in
        the round's turn of their orders."""
        orders = list(itertools.permutations([k for k in MULTI_COUNTS if k != 1]))
        return [1, *orders[rnd % len(orders)], 1]

    def multi(self):
        """First writes and rewrites with 1, 2, 4 and 8 snapshots held,
        in rounds (--reps) of interleaved counts."""
        try:
            slices = self.multi_slices()
        except StepError as e:
            self.error("multi", e)
            return
        runs = self.res.setdefault("multi", [])
        for rnd in range(self.args.reps):
            for pos, k in enumerate(self.multi_order(rnd)):
                systems = (("blksnap", self.multi_blksnap), ("dm256", self.multi_dm))
                for system, fn in systems if (rnd + pos) % 2 == 0 else reversed(systems):
                    try:
                        out = fn(k, slices)
                    except (StepError, subprocess.TimeoutExpired) as e:
                        self.error(f"multi round {rnd} {system} k={k}", e)
                        self.cleanup()
                        continue
                    for w, r in out.items():
                        runs.append({"system": system, "held": k, "workload": w, "rep": rnd,
                                     "pos": pos, "bw_mib_s": r["bw_mib_s"],
                                     "flush_s": r["flush_s"], "runtime_s": r["runtime_s"],
                                     "data_read_mib": r["data_read_mib"],
                                     "cow_write_mib": r["cow_write_mib"]})
                        log(f"  round {rnd} {system:7s} held {k} {w:13s} "
                            f"{r['bw_mib_s']:8.1f} MiB/s  read {r['data_read_mib']:6.0f} MiB  "
                            f"cow {r['cow_write_mib']:6.0f} MiB")
            self.save()
        for i in range(8):
            try:
                dmsetup("remove", "--retry", f"bsb-cow{i}")
            except StepError as e:
                self.error("multi cleanup", e)

    # The paired section's workloads per group: a write, its rewrite under
    # a snapshot, and (seq only) a read of the device or the image.
    PAIRED = {
        "seq": {"write": "seq_first", "rewrite": "seq_rewrite", "read": "image_read"},
        "rand": {"write": "rand_first", "rewrite": "rand_rewrite"},
    }
    # Passes over the range of the sequential runs that may repeat (all but
    # a first write), so that each lasts seconds rather than under one.
    PAIRED_SEQ_LOOPS = 3

    def paired(self):
        """Rounds for the ratios that should come out near 1, where the
        spread between passes of the throughput section is larger than the
        difference sought. Each round runs one group's workloads on the
        plain device twice (the second, "plain_again", measures how far two
        runs of the same thing land apart), with tracking only, and under a
        fresh snapshot (first write, rewrite of the same blocks, image
        read), back to back, every other round in the reverse order; a
        ratio is taken within its round."""
        for rnd in range(self.args.pair_reps):
            for group in self.PAIRED:
                steps = ["plain", "plain_again", "tracking", "blksnap"]
                if rnd % 2:
                    steps.reverse()
                try:
                    for step in steps:
                        self.paired_step(group, step, rnd)
                except (StepError, subprocess.TimeoutExpired) as e:
                    self.error(f"paired round {rnd} {group}", e)
                    self.cleanup()

    def paired_step(self, group, step, rnd):
        w = self.PAIRED[group]

        def record(kind, dev):
            workload = w["write"] if kind == "first" else w[kind]
            loops = self.PAIRED_SEQ_LOOPS if group == "seq" and kind != "first" else 1
            r = self.fio(dev, workload, loops)
            r.update(group=group, config=step, kind=kind, round=rnd)
            self.res["paired"].append(r)
            log(f"  round {rnd} {group:4s} {step:11s} {kind:7s} {r['bw_mib_s']:8.1f} MiB/s")

        if step == "tracking" or step == "blksnap":
            self.attach(self.data)
        try:
            if step != "blksnap":
                for kind in ("write", "read"):
                    if kind in w:
                        record(kind, self.data)
                return
            self.blksnap_snapshot([self.data])
            record("first", self.data)
            record("rewrite", self.data)
            info = ctl_json("snapshot", "info", self.data)
            if "read" in w:
                record("read", info["image"])
                info = ctl_json("snapshot", "info", self.data)
            if info.get("error"):
                raise StepError(f"the snapshot was corrupted during the round: {info['error']}")
        finally:
            self.blksnap_destroy()
            if self.data in self.attached:
                self.detach(self.data)

    def diagnose(self):
        """One extra, unscored pass with the stack sampler on the first writes."""
        for config in ("blksnap", "dm256"):
            try:
                self.cycle(config, -1, sampler_for=("seq_first", "rand_first"))
            except (StepError, subprocess.TimeoutExpired) as e:
                self.error(f"diagnosis {config}", e)
                self.cleanup()

    def take_latency(self):
        n = self.args.take_reps
        for ndev in (1, 4):
            devs = [self.data] + self.smalls[:ndev - 1]
            key = f"{ndev}dev"
            # blksnap: create and add happen before the freeze; only take
            # freezes the devices.
            try:
                for d in devs:
                    self.attach(d)
                wall, ioctl = [], []
                for _ in range(n):
                    limit = dev_size(self.cow) // SECTOR * SECTOR
                    sid = ctl("snapshot", "create", "--storage", self.cow, "--limit", str(limit))
                    self.snapshot_id = sid
                    for d in devs:
                        ctl("snapshot", "add", sid, d)
                    flush_disks(devs + [self.cow])
                    t0 = time.monotonic()
                    took = ctl_json("snapshot", "take", sid)
                    wall.append((time.monotonic() - t0) * 1e3)
                    ioctl.append(took["took_us"] / 1e3)
                    self.blksnap_destroy()
                self.res["take"][f"blksnap_{key}"] = {"wall_ms": wall, "ioctl_ms": ioctl}
                log(f"take blksnap {key}: wall {statistics.median(wall):.1f} ms, "
                    f"ioctl {statistics.median(ioctl):.1f} ms")
            except (StepError, subprocess.TimeoutExpired) as e:
                self.error(f"take blksnap {key}", e)
            finally:
                self.cleanup()
            # dm-snapshot the LVM way: the devices are already dm-linear
            # devices; a snapshot suspends each origin, creates the snapshot
            # device, loads the snapshot-origin table and resumes.
            try:
                self.dm_take(devs, key, n)
            except (StepError, subprocess.TimeoutExpired) as e:
                self.error(f"take dm {key}", e)
            finally:
                self.dm_take_teardown(len(devs))

    def dm_take(self, devs, key, n):
        """The LVM way: the devices are already dm-linear devices; a take
        suspends each origin, creates and activates its snapshot device,
        loads the snapshot-origin table and resumes. Timed from the first
        suspend to the last resume, all through in-process ioctls."""
        slice_sectors = dev_size(self.cow) // SECTOR // 4
        sizes = [dev_size(d) // SECTOR for d in devs]
        for i, d in enumerate(devs):
            dmsetup("create", f"bsb-t{i}", "--table", f"0 {sizes[i]} linear {d} 0")
            dmsetup("create", f"bsb-c{i}", "--table",
                    f"0 {slice_sectors} linear {self.cow} {i * slice_sectors}")
        run(["udevadm", "settle"], check=False)
        cows = [os.path.realpath(f"/dev/mapper/bsb-c{i}") for i in range(len(devs))]
        dm = DmControl()
        try:
            times = []
            for _ in range(n):
                for c in cows:
                    zero(c, 0, MIB)
                flush_disks(devs + [self.cow])
                t0 = time.monotonic()
                for i in range(len(devs)):
                    dm.suspend(f"bsb-t{i}")
                for i, d in enumerate(devs):
                    dm.create(f"bsb-s{i}")
                    dm.load(f"bsb-s{i}", "snapshot", sizes[i], f"{d} {cows[i]} P 512")
                    dm.resume(f"bsb-s{i}")
                    dm.load(f"bsb-t{i}", "snapshot-origin", sizes[i], d)
                for i in range(len(devs)):
                    dm.resume(f"bsb-t{i}")
                times.append((time.monotonic() - t0) * 1e3)
                # Back to plain linear devices for the next round.
                for i, d in enumerate(devs):
                    dm.suspend(f"bsb-t{i}")
                    dm.load(f"bsb-t{i}", "linear", sizes[i], f"{d} 0")
                    dm.resume(f"bsb-t{i}")
                    dm.remove(f"bsb-s{i}")
        finally:
            dm.close()
        self.res["take"][f"dm_{key}"] = {"ioctl_ms": times}
        log(f"take dm {key}: suspend..resume {statistics.median(times):.1f} ms")

    def dm_take_teardown(self, ndev):
        for i in range(ndev):
            for n in (f"bsb-s{i}", f"bsb-t{i}", f"bsb-c{i}"):
                if os.path.exists(f"/dev/mapper/{n}"):
                    run(["dmsetup", "remove", "--retry", n], check=False)

    # ---- memory ------------------------------------------------------------

    @staticmethod
    def meminfo():
        out = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])  # KiB
        return out

    def settle_meminfo(self):
        run(["sync"])
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        time.sleep(1)
        return self.meminfo()

    def big_device(self):
        """A 1 TiB device that stores nothing: null_blk (memory_backed=0)
        through configfs, else a sparse file on tmpfs behind a loop device."""
        cfg = "/sys/kernel/config"
        try:
            if not os.path.isdir(os.path.join(cfg, "nullb")):
                run(["modprobe", "null_blk", "nr_devices=0"])
                if not os.path.ismount(cfg):
                    run(["mount", "-t", "configfs", "none", cfg])
            d = os.path.join(cfg, "nullb", "bsbtib")
            os.makedirs(d, exist_ok=True)
            for k, v in (("size", str(1 << 20)), ("memory_backed", "0"), ("blocksize", "4096"),
                         ("power", "1")):
                with open(os.path.join(d, k), "w") as f:
                    f.write(v)
            with open(os.path.join(d, "index")) as f:
                index = f.read().strip()
            run(["udevadm", "settle"], check=False)
            # Newer null_blk names a configfs device after its directory.
            names = ["/dev/bsbtib", f"/dev/nullb{index}"]
            dev = next((n for n in names if os.path.exists(n)), None)
            if dev is None:
                raise StepError(f"none of {names} appeared")
            return dev, "null_blk memory_backed=0", lambda: self.remove_nullb(d)
        except (OSError, StepError) as e:
            log(f"null_blk unavailable ({e}); using a sparse file on tmpfs")
        run(["modprobe", "loop"], check=False)
        os.makedirs("/run/bsb", exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", "size=64M", "none", "/run/bsb"])
        run(["truncate", "-s", "1T", "/run/bsb/tib"])
        dev = run(["losetup", "--find", "--show", "/run/bsb/tib"]).stdout.strip()

        def undo():
            run(["losetup", "-d", dev], check=False)
            run(["umount", "/run/bsb"], check=False)
        return dev, "loop over a sparse tmpfs file", undo

    @staticmethod
    def remove_nullb(d):
        try:
            with open(os.path.join(d, "power"), "w") as f:
                f.write("0")
            os.rmdir(d)
        except OSError:
            pass

    def memory(self):
        try:
            dev, kind, undo = self.big_device()
        except StepError as e:
            self.error("memory", e)
            return
        try:
            deltas, taken = [], []
            cap = None
            keys = ("MemFree", "Slab", "VmallocUsed", "Percpu")

            def delta(before, after):
                return {k: before[k] - after[k] if k == "MemFree" else after[k] - before[k]
                        for k in keys if k in before}
            for _ in range(3):
                before = self.settle_meminfo()
                self.attach(dev)
                info = ctl_json("cbt", "info", dev)
                cap = info["capacity"]
                deltas.append(delta(before, self.settle_meminfo()))
                # After a take the tracker also keeps the map frozen at it.
                self.blksnap_snapshot([dev])
                self.blksnap_destroy()
                taken.append(delta(before, self.settle_meminfo()))
                self.detach(dev)
            self.res["memory"] = {
                "device": dev, "kind": kind, "capacity": cap,
                "block_size": info["block_size"], "block_count": info["block_count"],
                "deltas_kib": deltas, "after_take_deltas_kib": taken,
            }
            log(f"memory on {kind} ({cap / (1 << 40):.2f} TiB): tracking {deltas}, "
                f"after a take {taken}")
        except StepError as e:
            self.error("memory", e)
        finally:
            self.cleanup()
            undo()

    def main(self):
        if not os.path.exists("/dev/blksnap-control"):
            self.error("setup", "/dev/blksnap-control missing: blksnap.ko is not loaded")
            return self.finish()
        if not os.access(CTL, os.X_OK):
            self.error("setup", f"{CTL} missing: build blksnapctl on the host")
            return self.finish()
        try:
            self.prepare()
        except (StepError, subprocess.TimeoutExpired) as e:
            self.error("prepare", e)
            return self.finish()
        sections = [s for s in self.args.sections.split(",") if s]
        for name in sections:
            t0 = time.monotonic()
            log(f"== {name}")
            getattr(self, name)()
            log(f"== {name} took {time.monotonic() - t0:.0f} s")
            self.save()
        return self.finish()

    def save(self):
        """Writes what is measured so far, so a later failure keeps it."""
        self.res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        path = os.path.join(self.args.out, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.res, f, indent=1)
        os.rename(path + ".tmp", path)
        return path

    def finish(self):
        path = self.save()
        log(f"results in {path}; {len(self.res['errors'])} error(s)")
        return 1 if self.res["errors"] else 0


def main():
    p = argparse.ArgumentParser(prog="guest.py")
    p.add_argument("--out", required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--take-reps", type=int, default=5)
    p.add_argument("--pair-reps", type=int, default=9)
    p.add_argument("--sections", default="throughput,paired,take_latency,memory,diagnose,multi")
    p.add_argument("data")
    p.add_argument("smalls", nargs=3)
    p.add_argument("cow")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench: must run as root inside the VM", file=sys.stderr)
        return 1
    return Bench(args).main()


if __name__ == "__main__":
    sys.exit(main())
