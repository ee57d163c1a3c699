//! One random call on the control device: the command, its argument and
//! what it points to are drawn from the thread's stream; the answer is
//! checked against what the interface allows for that draw.

use std::mem::size_of;
use std::os::fd::AsRawFd;

use blksnap::sys::{self, nr};
use nix::errno::Errno;
use nix::errno::Errno::*;

use crate::mem::{self, Arena, Pages, ARENA, ARG, DATA, KERNEL_ADDRS, PAGE};
use crate::rng::Rng;
use crate::stats::Stats;
use crate::world::{Fd, World, LIVE_CAP};

/// What the address handed over for a structure is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ptr {
    /// In the arena, at the returned offset (possibly misaligned).
    Ok(usize),
    /// The zero-filled read-only page.
    ReadOnly,
    /// Nothing of it (or only its start) can be read.
    Bad,
}

/// Where a snapshot id came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Id {
    Live,
    Stale,
    Random,
    Nil,
    Flipped,
}

/// What buffers hold before a call, to see what the kernel wrote.
pub const SENTINEL: u8 = 0xa5;

pub struct Fuzzer<'w> {
    pub w: &'w World,
    pub rng: Rng,
    pub arena: Arena,
    pub pages: &'w Pages,
    pub stats: Stats,
    pub thread: usize,
    pub call: u64,
}

/// A request code: `_IOC(dir, magic, nr, size)` as x86-64 encodes it.
pub fn ioc(dir: u64, magic: u8, nr: u8, size: usize) -> u64 {
    (dir << 30) | ((size as u64 & 0x3fff) << 16) | (u64::from(magic) << 8) | u64::from(nr)
}

/// The control device's requests as (dir, nr, size).
const REQUESTS: [(u64, u8, usize); 9] = [
    (2, nr::VERSION, size_of::<sys::blksnap_version>()),
    (
        3,
        nr::SNAPSHOT_CREATE,
        size_of::<sys::blksnap_snapshot_create>(),
    ),
    (1, nr::SNAPSHOT_DESTROY, size_of::<sys::blksnap_uuid>()),
    (1, nr::SNAPSHOT_TAKE, size_of::<sys::blksnap_uuid>()),
    (
        3,
        nr::SNAPSHOT_COLLECT,
        size_of::<sys::blksnap_snapshot_collect>(),
    ),
    (
        3,
        nr::SNAPSHOT_WAIT_EVENT,
        size_of::<sys::blksnap_snapshot_event>(),
    ),
    (1, nr::ATTACH, size_of::<sys::blksnap_bdev>()),
    (1, nr::DETACH, size_of::<sys::blksnap_bdev>()),
    (3, nr::CTL, size_of::<sys::blksnap_ctl>()),
];

pub fn is_request(code: u64) -> bool {
    REQUESTS
        .iter()
        .any(|&(d, n, s)| ioc(d, sys::BLKSNAP, n, s) == code)
}

impl<'w> Fuzzer<'w> {
    pub fn new(w: &'w World, pages: &'w Pages, seed: u64, thread: usize) -> Self {
        Fuzzer {
            w,
            rng: Rng::new(seed, thread as u64),
            arena: Arena::new(),
            pages,
            stats: Stats::default(),
            thread,
            call: 0,
        }
    }

    pub fn violation(&self, cmd: &str, what: String) {
        self.w.violations.add(format!(
            "thread {} call {}: {cmd}: {what}",
            self.thread, self.call
        ));
    }

    /// Records the answer; a failure outside `allowed` is a violation.
    pub fn expect<T: std::fmt::Debug>(
        &mut self,
        cmd: &'static str,
        r: &Result<T, Errno>,
        allowed: &[Errno],
        ctx: &dyn Fn() -> String,
    ) {
        self.stats.record(cmd, r);
        if let Err(e) = r {
            if !allowed.contains(e) {
                self.violation(cmd, format!("{e:?} not in {allowed:?} ({})", ctx()));
            }
        }
    }

    /// An address for a structure of `size` bytes of which the kernel reads
    /// `first` bytes before anything else.
    pub fn ptr(&mut self, first: usize) -> (u64, Ptr) {
        match self.rng.below(100) {
            0..=79 => {
                let off = ARG
                    + if self.rng.chance(85) {
                        0
                    } else {
                        1 + self.rng.below(7) as usize
                    };
                (self.arena.addr(off), Ptr::Ok(off))
            }
            80..=84 => (self.pages.read_only, Ptr::ReadOnly),
            _ => (self.bad_addr(first), Ptr::Bad),
        }
    }

    /// An address from which not even `first` bytes can be read.
    pub fn bad_addr(&mut self, first: usize) -> u64 {
        match self.rng.below(6) {
            0 => 0,
            1 => *self.rng.pick(&[1, 0xfff, 0x1000, 0x10_0000]),
            2 => self.pages.none + self.rng.below(PAGE as u64),
            3 => *self.rng.pick(&KERNEL_ADDRS),
            // A structure that ends past the arena, on its guard page.
            4 if first > 1 => self.arena.end() - 1 - self.rng.below(first as u64 - 1),
            _ => self.pages.none,
        }
    }

    pub fn pick_id(&mut self) -> ([u8; 16], Id) {
        let snaps = self.w.snaps.lock().expect("snaps");
        let r = self.rng.below(100);
        if r < 45 && !snaps.live.is_empty() {
            return (*self.rng.pick(&snaps.live), Id::Live);
        }
        if r < 65 && !snaps.stale.is_empty() {
            return (*self.rng.pick(&snaps.stale), Id::Stale);
        }
        if r < 75 && !snaps.live.is_empty() {
            let mut id = *self.rng.pick(&snaps.live);
            id[self.rng.below(16) as usize] ^= 1 << self.rng.below(8);
            return (id, Id::Flipped);
        }
        if r < 85 {
            return ([0; 16], Id::Nil);
        }
        (self.rng.bytes16(), Id::Random)
    }

    pub fn ctl_fd(&self) -> i32 {
        self.w.ctl.as_raw_fd()
    }

    /// Puts `v` where `p` says (nothing for unusable addresses).
    pub fn place<T: Copy>(&self, p: Ptr, v: &T) {
        if let Ptr::Ok(off) = p {
            self.arena.put(off, v);
        }
    }

    /// One random call.
    pub fn one(&mut self) {
        self.call += 1;
        match self.rng.below(100) {
            0..=9 => self.bad_request(),
            10..=13 => self.version(),
            14..=20 => self.create(),
            21..=28 => self.destroy_or_take(true),
            29..=32 => self.destroy_or_take(false),
            33..=40 => self.collect(),
            41..=44 => self.wait_event(),
            45..=50 => self.bdev(true),
            51..=55 => self.bdev(false),
            56..=89 => self.ctl(),
            _ => crate::image::one(self),
        }
    }

    /// A request code that is none of the control device's, often one
    /// near them; and the real ones sent to descriptors of other kinds.
    fn bad_request(&mut self) {
        let &(dir, n, size) = self.rng.pick(&REQUESTS);
        if self.rng.chance(25) {
            let fd = match self.w.pick_fd(&mut self.rng) {
                // The control device answers its own requests.
                Fd::Other(f) if self.w.is_control(&f) => {
                    Fd::Closed(crate::world::closed_fd(&mut self.rng))
                }
                fd => fd,
            };
            let (addr, _) = self.ptr(size);
            let r = mem::ioctl(fd.raw() as i32, ioc(dir, sys::BLKSNAP, n, size), addr);
            let allowed: &[Errno] = if matches!(fd, Fd::Closed(_)) {
                &[EBADF]
            } else {
                &[ENOTTY]
            };
            self.expect("request on other fd", &r, allowed, &|| format!("nr {n}"));
            return;
        }
        let code = loop {
            let c = match self.rng.below(5) {
                0 => ioc(
                    dir,
                    sys::BLKSNAP,
                    n,
                    self.rng.pick(&[0, size - 1, size + 1, 0x3fff]).to_owned(),
                ),
                1 => ioc(self.rng.below(4), sys::BLKSNAP, n, size),
                2 => ioc(dir, *self.rng.pick(b"UW"), n, size),
                3 => ioc(
                    self.rng.below(4),
                    sys::BLKSNAP,
                    self.rng.below(256) as u8,
                    self.rng.below(0x4000) as usize,
                ),
                _ => ioc(dir, sys::BLKSNAP, n, self.rng.below(0x4000) as usize),
            };
            if !is_request(c) {
                break c;
            }
        };
        let (addr, _) = self.ptr(size);
        let r = mem::ioctl(self.ctl_fd(), code, addr);
        self.expect("unknown request", &r, &[ENOTTY], &|| {
            format!("code {code:#x}")
        });
        if r.is_ok() {
            self.violation("unknown request", format!("code {code:#x} succeeded"));
        }
    }

    fn version(&mut self) {
        let (addr, p) = self.ptr(8);
        if let Ptr::Ok(off) = p {
            self.arena.fill(off, 16, SENTINEL);
        }
        let r = mem::ioctl(self.ctl_fd(), sys::IOCTL_BLKSNAP_VERSION, addr);
        let allowed: &[Errno] = if matches!(p, Ptr::Ok(_)) {
            &[]
        } else {
            &[EFAULT]
        };
        self.expect("version", &r, allowed, &|| format!("{p:?}"));
        match (p, &r) {
            (Ptr::Ok(off), Ok(_)) => {
                let v: sys::blksnap_version = self.arena.get(off);
                if (v.major, v.minor) != (sys::BLKSNAP_VERSION_MAJOR, sys::BLKSNAP_VERSION_MINOR) {
                    self.violation("version", format!("answered {v:?}"));
                }
                if self.arena.read(off + 8, 8) != [SENTINEL; 8] {
                    self.violation("version", "wrote past its structure".into());
                }
            }
            (_, Ok(_)) => self.violation("version", format!("succeeded with {p:?}")),
            _ => {}
        }
    }

    fn create(&mut self) {
        let live = self.w.snaps.lock().expect("snaps").live.len();
        let r = self.rng.below(100);
        let fresh = r < 40 && live < LIVE_CAP;
        let storage = if fresh {
            self.w.fresh_storage().map(Fd::Other)
        } else if r < 55 && live < LIVE_CAP {
            let s = self.w.storages.lock().expect("storages");
            (!s.is_empty()).then(|| Fd::Other(self.rng.pick(&s).clone()))
        } else {
            None
        };
        // Otherwise anything: a device opened without O_EXCL, an image, a
        // non-device, a closed number; none of them can be a storage.
        let storage = storage.unwrap_or_else(|| self.w.pick_fd(&mut self.rng));
        // Small for a fresh file, which starts with min(limit, 1 GiB)
        // allocated on a file system of 1.5 GiB; anything for the rest.
        let limit = if self.rng.chance(if fresh { 98 } else { 50 }) {
            2048 + self.rng.below(63 * 1024)
        } else {
            self.rng.boundary_u64()
        };
        let arg = sys::blksnap_snapshot_create {
            diff_storage_limit_sect: limit,
            diff_storage_fd: storage.raw(),
            id: sys::blksnap_uuid {
                b: self.rng.bytes16(),
            },
            _pad: self.rng.next_u64() as u32,
        };
        let (addr, p) = self.ptr(size_of::<sys::blksnap_snapshot_create>());
        self.place(p, &arg);
        let r = mem::ioctl(self.ctl_fd(), sys::IOCTL_BLKSNAP_SNAPSHOT_CREATE, addr);
        let allowed: &[Errno] = match p {
            Ptr::Bad => &[EFAULT],
            // EBUSY: a storage of the pool still open (a snapshot uses it,
            // or older ones read copies a destroyed one left in it).
            _ => &[EFAULT, EINVAL, EBADF, EOPNOTSUPP, ENOSPC, ENOMEM, EBUSY],
        };
        self.expect("snapshot_create", &r, allowed, &|| {
            format!("{p:?} limit {limit}")
        });
        if r.is_err() {
            return;
        }
        let Ptr::Ok(off) = p else {
            self.violation("snapshot_create", format!("succeeded with {p:?}"));
            return;
        };
        let id = self.arena.get::<sys::blksnap_snapshot_create>(off).id.b;
        let mut snaps = self.w.snaps.lock().expect("snaps");
        if id == [0; 16] || snaps.known(&id) {
            drop(snaps);
            self.violation(
                "snapshot_create",
                format!("returned a nil or known id {id:02x?}"),
            );
            return;
        }
        snaps.live.push(id);
    }

    fn destroy_or_take(&mut self, destroy: bool) {
        let (id, kind) = self.pick_id();
        let (addr, p) = self.ptr(16);
        self.place(p, &sys::blksnap_uuid { b: id });
        let (cmd, code) = if destroy {
            ("snapshot_destroy", sys::IOCTL_BLKSNAP_SNAPSHOT_DESTROY)
        } else {
            ("snapshot_take", sys::IOCTL_BLKSNAP_SNAPSHOT_TAKE)
        };
        let r = mem::ioctl(self.ctl_fd(), code, addr);
        let allowed: &[Errno] = match (p, kind, destroy) {
            (Ptr::Bad, _, _) => &[EFAULT],
            (_, Id::Live, true) => &[ENOENT],
            (Ptr::Ok(_), Id::Live, false) => &[
                ENOENT, EALREADY, ENODEV, ENOMEM, EBUSY, EINVAL, EIO, ENXIO, ENOSPC,
            ],
            _ => &[ENOENT],
        };
        self.expect(cmd, &r, allowed, &|| format!("{p:?} {kind:?} id"));
        if r.is_ok() && (!matches!(p, Ptr::Ok(_)) || kind != Id::Live) {
            self.violation(cmd, format!("succeeded for a {kind:?} id with {p:?}"));
        }
        if r.is_ok() && destroy {
            self.w.snaps.lock().expect("snaps").forget(&id);
        }
    }

    fn collect(&mut self) {
        let live = self.w.snaps.lock().expect("snaps").live.len() as u32;
        let room = match self.rng.below(8) {
            0 => 0,
            1 => 1,
            2 => live,
            3 => live + 1,
            4 => u32::MAX,
            5 => self.rng.next_u64() as u32,
            _ => self.rng.below(64) as u32,
        };
        let (ids, ids_ok) = match self.rng.below(100) {
            0..=14 => (0, false),
            15..=84 => {
                let off = DATA
                    + if self.rng.chance(80) {
                        0
                    } else {
                        self.rng.below(16) as usize
                    };
                (self.arena.addr(off), true)
            }
            _ => (self.bad_addr(16), false),
        };
        // What a correct kernel may write: room ids, within the arena.
        let span = (room as usize).saturating_mul(16).min(ARENA - DATA - 16) + 16;
        let span = span.min(64 * 1024);
        let ids_off = (ids.wrapping_sub(self.arena.addr(0))) as usize;
        if ids_ok {
            self.arena
                .fill(ids_off, span.min(ARENA - ids_off), SENTINEL);
        }
        let arg = sys::blksnap_snapshot_collect {
            count: room,
            _pad: self.rng.next_u64() as u32,
            ids,
        };
        let (addr, p) = self.ptr(size_of::<sys::blksnap_snapshot_collect>());
        self.place(p, &arg);
        let r = mem::ioctl(self.ctl_fd(), sys::IOCTL_BLKSNAP_SNAPSHOT_COLLECT, addr);
        let allowed: &[Errno] = match p {
            Ptr::Bad => &[EFAULT],
            _ => &[ENODATA, EFAULT, ENOMEM],
        };
        self.expect("snapshot_collect", &r, allowed, &|| {
            format!("{p:?} room {room}")
        });
        let Ptr::Ok(off) = p else {
            if r.is_ok() {
                self.violation("snapshot_collect", format!("succeeded with {p:?}"));
            }
            return;
        };
        let n = self.arena.get::<sys::blksnap_snapshot_collect>(off).count;
        match r {
            Ok(_) => {
                if n > 0 && (n > room || !ids_ok) {
                    self.violation(
                        "snapshot_collect",
                        format!("{n} ids in a room of {room} at {ids:#x}"),
                    );
                    return;
                }
                if n == 0 {
                    return;
                }
                let got = self.arena.read(ids_off, n as usize * 16);
                let mut seen: Vec<&[u8]> = got.chunks(16).collect();
                if seen.iter().any(|id| id.iter().all(|&b| b == 0)) {
                    self.violation("snapshot_collect", "a nil id".into());
                }
                seen.sort();
                seen.dedup();
                if seen.len() != n as usize {
                    self.violation("snapshot_collect", "the same id twice".into());
                }
                let tail = (span.min(ARENA - ids_off))
                    .saturating_sub(n as usize * 16)
                    .min(16);
                if self
                    .arena
                    .read(ids_off + n as usize * 16, tail)
                    .iter()
                    .any(|&b| b != SENTINEL)
                {
                    self.violation("snapshot_collect", format!("wrote past its {n} ids"));
                }
            }
            Err(ENODATA) => {
                if n == 0 || (ids != 0 && n <= room) {
                    self.violation(
                        "snapshot_collect",
                        format!("ENODATA with count {n}, room {room}, ids {ids:#x}"),
                    );
                }
            }
            Err(_) => {}
        }
    }

    fn wait_event(&mut self) {
        let (id, kind) = self.pick_id();
        let timeout = match self.rng.below(100) {
            0..=29 => 0,
            30..=94 => 1 + self.rng.below(20) as u32,
            _ => 100 + self.rng.below(400) as u32,
        };
        let mut ev = sys::blksnap_snapshot_event {
            id: sys::blksnap_uuid { b: id },
            timeout_ms: timeout,
            ..Default::default()
        };
        ev.code = self.rng.next_u64() as u32;
        // The kernel reads the id and the timeout (20 bytes) first.
        let (addr, p) = self.ptr(20);
        self.place(p, &ev);
        let r = mem::ioctl(self.ctl_fd(), sys::IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT, addr);
        let allowed: &[Errno] = match (p, kind) {
            (Ptr::Bad, _) => &[EFAULT],
            (_, Id::Live) => &[ENOENT, ETIMEDOUT, EINTR, EFAULT],
            _ => &[ENOENT],
        };
        self.expect("snapshot_wait_event", &r, allowed, &|| {
            format!("{p:?} {kind:?} id")
        });
        if r.is_err() {
            return;
        }
        let Ptr::Ok(off) = p else {
            self.violation("snapshot_wait_event", format!("succeeded with {p:?}"));
            return;
        };
        if kind != Id::Live {
            self.violation("snapshot_wait_event", format!("an event of a {kind:?} id"));
        }
        let got: sys::blksnap_snapshot_event = self.arena.get(off);
        match got.code {
            sys::event_code::CORRUPTED => {
                let c: sys::blksnap_event_corrupted = self.arena.get(off + 32);
                if c.err_code >= 0 {
                    self.violation("snapshot_wait_event", format!("corrupted with {c:?}"));
                }
            }
            sys::event_code::LOW_SPACE => {}
            code => self.violation("snapshot_wait_event", format!("unknown code {code}")),
        }
    }

    /// Attach (`attach`) or detach.
    fn bdev(&mut self, attach: bool) {
        let fd = self.w.pick_fd(&mut self.rng);
        let flags = if self.rng.chance(92) {
            0
        } else {
            self.rng.next_u64() as u32 | 1
        };
        let arg = sys::blksnap_bdev {
            fd: fd.raw(),
            flags,
        };
        let (addr, p) = self.ptr(8);
        self.place(p, &arg);
        let (cmd, code) = if attach {
            ("attach", sys::IOCTL_BLKSNAP_ATTACH)
        } else {
            ("detach", sys::IOCTL_BLKSNAP_DETACH)
        };
        let removed =
            matches!(&fd, Fd::Dev(d) if d.removed.load(std::sync::atomic::Ordering::Acquire));
        let r = mem::ioctl(self.ctl_fd(), code, addr);
        let allowed: &[Errno] = match (p, &fd) {
            (Ptr::Bad, _) => &[EFAULT],
            // Zeros: descriptor 0, the fuzzer's stdin, no block device.
            (Ptr::ReadOnly, _) => &[ENOTBLK, EBADF],
            _ if flags != 0 => &[EINVAL],
            (_, Fd::Closed(_)) => &[EBADF],
            (_, Fd::Other(_)) => &[ENOTBLK],
            (_, Fd::Image(_)) if attach => &[EINVAL],
            (_, Fd::Image(_)) => &[ENODEV],
            // A removed disk has no sectors left: EINVAL.
            (_, Fd::Dev(d)) if attach && d.removable => &[
                EALREADY, EBUSY, ENODEV, EOPNOTSUPP, ENOMEM, EIO, ENXIO, EINVAL,
            ],
            (_, Fd::Dev(_)) if attach => &[EALREADY, EBUSY, ENODEV, EOPNOTSUPP, ENOMEM, EIO, ENXIO],
            (_, Fd::Dev(_)) => &[ENODEV, EBUSY],
        };
        let name = match &fd {
            Fd::Dev(d) => d.name.clone(),
            _ => String::new(),
        };
        self.expect(cmd, &r, allowed, &|| {
            format!("{p:?} flags {flags:#x} {name}")
        });
        if r.is_ok() && (removed || flags != 0 || !matches!(fd, Fd::Dev(_))) {
            self.violation(
                cmd,
                format!("succeeded on {name} (removed: {removed}) flags {flags:#x}"),
            );
        }
    }
}
