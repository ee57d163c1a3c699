//! IOCTL_BLKSNAP_CTL: the per-device commands, with their payloads and the
//! buffers inside them drawn at random, and their answers checked against
//! the device they named.

use std::mem::size_of;
use std::sync::atomic::Ordering;

use blksnap::sys::{self, ctl_cmd};
use nix::errno::Errno;
use nix::errno::Errno::*;

use crate::control::{Fuzzer, Id, Ptr, SENTINEL};
use crate::mem::{self, ARENA, DATA, OPT};
use crate::world::{open_dev, Dev, Fd};
use std::os::fd::AsRawFd;

/// Map bytes checked after a cbtmap (and filled before it).
const MAP_SPAN: usize = 64 * 1024 + 64;

fn optlen_of(cmd: u32) -> Option<usize> {
    Some(match cmd {
        ctl_cmd::CBTINFO => size_of::<sys::blksnap_cbtinfo>(),
        ctl_cmd::CBTMAP => size_of::<sys::blksnap_cbtmap>(),
        ctl_cmd::CBTDIRTY => size_of::<sys::blksnap_cbtdirty>(),
        ctl_cmd::SNAPSHOTADD => size_of::<sys::blksnap_snapshotadd>(),
        ctl_cmd::SNAPSHOTINFO => size_of::<sys::blksnap_snapshotinfo>(),
        ctl_cmd::SNAPSHOTINFO_OF => size_of::<sys::blksnap_snapshotinfo_of>(),
        _ => return None,
    })
}

fn name_of(cmd: u32) -> &'static str {
    match cmd {
        ctl_cmd::CBTINFO => "ctl cbtinfo",
        ctl_cmd::CBTMAP => "ctl cbtmap",
        ctl_cmd::CBTDIRTY => "ctl cbtdirty",
        ctl_cmd::SNAPSHOTADD => "ctl snapshotadd",
        ctl_cmd::SNAPSHOTINFO => "ctl snapshotinfo",
        ctl_cmd::SNAPSHOTINFO_OF => "ctl snapshotinfo_of",
        _ => "ctl unknown command",
    }
}

/// What a payload drawn for a command says, for checking the answer.
#[derive(Default)]
struct Draw {
    /// cbtmap: offset, length, buffer offset in the arena (None: unusable).
    map: Option<(u32, u32, Option<usize>)>,
    /// cbtdirty: whether every range is inside the device and the count
    /// and array pointer are fine.
    dirty_valid: bool,
    /// cbtdirty: count out of 1..=65536.
    dirty_bad_count: bool,
    /// snapshotadd, snapshotinfo_of: the id's origin.
    id: Option<Id>,
}

impl Fuzzer<'_> {
    pub fn ctl(&mut self) {
        let cmd = if self.rng.chance(92) {
            self.rng.below(6) as u32
        } else {
            {
                let r = self.rng.next_u64() as u32 | 8;
                *self.rng.pick(&[6, 7, 255, 256, u32::MAX, r])
            }
        };
        let need = optlen_of(cmd);
        let exact = need.unwrap_or(16) as u32;
        let optlen = match self.rng.below(100) {
            0..=74 => exact,
            75..=84 => exact + 1 + self.rng.below(64) as u32,
            85..=92 => self.rng.below(u64::from(exact)) as u32,
            93..=96 => u32::MAX,
            _ => self.rng.next_u64() as u32,
        };
        let reserved = if self.rng.chance(96) {
            0
        } else {
            self.rng.next_u64() as u32 | 1
        };
        let fd = self.w.pick_fd(&mut self.rng);
        let (dev_sectors, removed) = match &fd {
            Fd::Dev(d) => (d.sectors, d.removed.load(Ordering::Acquire)),
            _ => (0, false),
        };

        let (opt, opt_ok, opt_ro) = if self.rng.chance(85) {
            (self.arena.addr(OPT), true, false)
        } else if self.rng.chance(30) {
            (self.pages.read_only, false, true)
        } else {
            let first = need.unwrap_or(16);
            (self.bad_addr(first), false, false)
        };
        self.arena.fill(OPT, 128, SENTINEL);
        let draw = if opt_ok {
            self.payload(cmd, &fd, dev_sectors)
        } else {
            Draw::default()
        };

        let arg = sys::blksnap_ctl {
            fd: fd.raw(),
            cmd,
            optlen,
            reserved,
            opt,
        };
        let (addr, p) = self.ptr(size_of::<sys::blksnap_ctl>());
        self.place(p, &arg);
        let r = mem::ioctl(self.ctl_fd(), sys::IOCTL_BLKSNAP_CTL, addr);
        let name = name_of(cmd);
        let short = need.is_some_and(|n| (optlen as usize) < n);

        let allowed: &[Errno] = match (p, &fd) {
            (Ptr::Bad, _) => &[EFAULT],
            // Zeros: descriptor 0 and command cbtinfo with optlen 0.
            (Ptr::ReadOnly, _) => &[EFAULT, ENOSPC],
            _ if reserved != 0 => &[EINVAL, ENOTTY],
            _ if need.is_none() => &[ENOTTY],
            _ if short => &[ENOSPC],
            (_, Fd::Closed(_)) => &[EBADF],
            (_, Fd::Other(_)) => &[ENOTBLK],
            (_, Fd::Image(_)) => &[ENODEV, EINVAL, EFAULT, ENOMEM],
            (_, Fd::Dev(_)) => match cmd {
                ctl_cmd::CBTINFO | ctl_cmd::SNAPSHOTINFO => &[ENODEV, EFAULT],
                ctl_cmd::CBTMAP | ctl_cmd::CBTDIRTY => &[ENODEV, EFAULT, EINVAL, ENOMEM],
                _ => match draw.id {
                    Some(Id::Live) => &[ENODEV, EFAULT, ENOENT, EBUSY, EINVAL, ENOMEM],
                    _ => &[ENODEV, EFAULT, ENOENT],
                },
            },
        };
        let dname = match &fd {
            Fd::Dev(d) => d.name.as_str(),
            Fd::Image(_) => "an image",
            Fd::Other(_) => "a non-device",
            Fd::Closed(_) => "a closed fd",
        };
        self.expect(name, &r, allowed, &|| {
            format!("{p:?} on {dname}, optlen {optlen}, reserved {reserved:#x}, opt ok {opt_ok}")
        });

        if let (Err(ENOSPC), Ptr::Ok(off), Some(n)) = (&r, p, need) {
            let back = self.arena.get::<sys::blksnap_ctl>(off).optlen;
            if short && back as usize != n {
                self.violation(
                    name,
                    format!("ENOSPC said optlen {back}, the structure has {n}"),
                );
            }
        }
        if cmd == ctl_cmd::CBTDIRTY
            && draw.dirty_valid
            && reserved == 0
            && !short
            && r == Err(EINVAL)
        {
            if let (Fd::Dev(_), Ptr::Ok(_), false) = (&fd, p, removed) {
                self.violation(name, format!("EINVAL for ranges inside {dname}"));
            }
        }
        let Ok(ret) = r else { return };
        let Fd::Dev(dev) = &fd else {
            self.violation(name, format!("succeeded on {dname}"));
            return;
        };
        // A zero-filled cbtmap payload asks for an empty window.
        let empty_map = opt_ro && cmd == ctl_cmd::CBTMAP && ret == 0;
        if removed || reserved != 0 || short || !(opt_ok || empty_map) {
            self.violation(name, format!(
                "succeeded on {dname} (removed: {removed}), reserved {reserved:#x}, optlen {optlen}, opt ok {opt_ok}"
            ));
            return;
        }
        match cmd {
            _ if empty_map => {}
            ctl_cmd::CBTINFO => self.check_cbtinfo(dev, optlen),
            ctl_cmd::CBTMAP => self.check_cbtmap(dev, ret, &draw),
            ctl_cmd::CBTDIRTY => {
                if !draw.dirty_valid || draw.dirty_bad_count {
                    self.violation(
                        name,
                        format!("marked ranges outside {dname} or a bad count"),
                    );
                }
            }
            ctl_cmd::SNAPSHOTADD => {
                if draw.id != Some(Id::Live) {
                    self.violation(name, format!("added {dname} to a {:?} id", draw.id));
                }
            }
            ctl_cmd::SNAPSHOTINFO_OF => {
                if draw.id != Some(Id::Live) {
                    self.violation(name, format!("answered for a {:?} id", draw.id));
                }
                let i: sys::blksnap_snapshotinfo_of = self.arena.get(OPT);
                if i.storage_used_sect > i.storage_filled_sect {
                    self.violation(
                        name,
                        format!(
                            "{} sectors used of {} filled",
                            i.storage_used_sect, i.storage_filled_sect
                        ),
                    );
                }
                self.check_snapshotinfo(dev, cmd, i.id);
            }
            _ => self.check_snapshotinfo(dev, cmd, sys::blksnap_uuid::default()),
        }
    }

    /// Writes the payload of `cmd` at OPT (and its buffers at DATA).
    fn payload(&mut self, cmd: u32, fd: &Fd, sectors: u64) -> Draw {
        let mut draw = Draw::default();
        match cmd {
            ctl_cmd::CBTMAP => {
                let blocks = match fd {
                    Fd::Dev(d) => d.blocks.load(Ordering::Relaxed),
                    _ => 0,
                };
                let offset = match self.rng.below(8) {
                    0..=2 => 0,
                    3 | 4 => self.rng.below(u64::from(blocks) + 1) as u32,
                    5 => blocks,
                    6 => blocks + 1,
                    _ => self.rng.boundary_u64() as u32,
                };
                let length = match self.rng.below(8) {
                    0 => 0,
                    1 => 1,
                    2 | 3 => self.rng.below(4097) as u32,
                    4 => blocks,
                    5 => (ARENA - DATA) as u32,
                    6 => u32::MAX,
                    _ => self.rng.next_u64() as u32,
                };
                let (buffer, at) = if self.rng.chance(80) {
                    let at = DATA
                        + if self.rng.chance(80) {
                            0
                        } else {
                            self.rng.below(4096) as usize
                        };
                    // Near the guard page now and then: the copy must fault.
                    let at = if self.rng.chance(5) {
                        ARENA - 1 - self.rng.below(4096) as usize
                    } else {
                        at
                    };
                    self.arena.fill(at, MAP_SPAN.min(ARENA - at), SENTINEL);
                    (self.arena.addr(at), Some(at))
                } else {
                    (self.bad_addr(1), None)
                };
                self.arena.put(
                    OPT,
                    &sys::blksnap_cbtmap {
                        offset,
                        length,
                        buffer,
                    },
                );
                draw.map = Some((offset, length, at));
            }
            ctl_cmd::CBTDIRTY => {
                let count = match self.rng.below(100) {
                    0..=59 => 1 + self.rng.below(8) as u32,
                    60..=74 => 9 + self.rng.below(1000) as u32,
                    75..=79 => 0,
                    80..=81 => sys::BLKSNAP_CBTDIRTY_MAX_COUNT,
                    82..=85 => sys::BLKSNAP_CBTDIRTY_MAX_COUNT + 1,
                    86..=89 => u32::MAX,
                    _ => self.rng.below(2000) as u32,
                };
                let bad_count = count == 0 || count > sys::BLKSNAP_CBTDIRTY_MAX_COUNT;
                let (ptr, ptr_ok) = if self.rng.chance(85) {
                    (self.arena.addr(DATA), true)
                } else {
                    (self.bad_addr(16), false)
                };
                let mut valid = ptr_ok && !bad_count && sectors > 0;
                if ptr_ok && !bad_count {
                    // Long arrays repeat one range: drawing 65536 is slow.
                    let distinct = count.min(64) as usize;
                    let mut ranges = Vec::with_capacity(distinct);
                    for _ in 0..distinct {
                        let r = self.range(sectors);
                        valid &=
                            r.count != 0 && r.offset < sectors && r.count <= sectors - r.offset;
                        ranges.push(r);
                    }
                    for i in 0..count as usize {
                        self.arena.put(DATA + i * 16, &ranges[i % distinct]);
                    }
                }
                self.arena.put(
                    OPT,
                    &sys::blksnap_cbtdirty {
                        count,
                        _pad: self.rng.next_u64() as u32,
                        dirty_sectors: ptr,
                    },
                );
                draw.dirty_valid = valid;
                draw.dirty_bad_count = bad_count;
            }
            ctl_cmd::SNAPSHOTADD | ctl_cmd::SNAPSHOTINFO_OF => {
                // The id leads both structures.
                let (id, kind) = self.pick_id();
                self.arena.put(
                    OPT,
                    &sys::blksnap_snapshotadd {
                        id: sys::blksnap_uuid { b: id },
                    },
                );
                draw.id = Some(kind);
            }
            _ => {}
        }
        draw
    }

    /// A sector range of a `sectors`-long device, inside it or across its
    /// boundaries.
    fn range(&mut self, sectors: u64) -> sys::blksnap_sectors {
        let s = sectors.max(1);
        let (offset, count) = match self.rng.below(10) {
            0..=5 => {
                let o = self.rng.below(s);
                (o, 1 + self.rng.below((s - o).min(1 << 16)))
            }
            6 => (self.rng.below(s), 0),
            7 => (s - 1, 2),
            8 => (s + self.rng.below(1000), 1),
            _ => (self.rng.boundary_u64(), self.rng.boundary_u64()),
        };
        sys::blksnap_sectors { offset, count }
    }

    fn check_cbtinfo(&mut self, dev: &Dev, optlen: u32) {
        let i: sys::blksnap_cbtinfo = self.arena.get(OPT);
        let name = "ctl cbtinfo";
        let bs = u64::from(i.block_size);
        if i.device_capacity != dev.sectors * 512 {
            self.violation(
                name,
                format!(
                    "capacity {} of {} ({} sectors)",
                    i.device_capacity, dev.name, dev.sectors
                ),
            );
        }
        if !bs.is_power_of_two() || bs < 512 {
            self.violation(name, format!("block size {bs}"));
        } else if u64::from(i.block_count) != i.device_capacity.div_ceil(bs) {
            self.violation(
                name,
                format!(
                    "{} blocks of {bs} for {} bytes",
                    i.block_count, i.device_capacity
                ),
            );
        }
        if i.changes_number == 255 {
            self.violation(name, "changes_number 255".into());
        }
        if i._pad != [0; 7] {
            self.violation(name, format!("padding {:02x?} not zeroed", i._pad));
        }
        let written = size_of::<sys::blksnap_cbtinfo>();
        let tail = (optlen as usize).min(128).saturating_sub(written);
        if self
            .arena
            .read(OPT + written, tail)
            .iter()
            .any(|&b| b != SENTINEL)
        {
            self.violation(name, "wrote past its structure".into());
        }
        let old = dev.blocks.swap(i.block_count, Ordering::Relaxed);
        if old != 0 && old != i.block_count {
            self.violation(
                name,
                format!(
                    "block count of {} changed from {old} to {}",
                    dev.name, i.block_count
                ),
            );
        }
    }

    fn check_cbtmap(&mut self, dev: &Dev, ret: i32, draw: &Draw) {
        let name = "ctl cbtmap";
        let Some((offset, length, Some(at))) = draw.map else {
            if ret > 0 {
                self.violation(name, format!("copied {ret} bytes to an unusable buffer"));
            }
            return;
        };
        let blocks = dev.blocks.load(Ordering::Relaxed);
        let n = ret as u32;
        if n > length || (blocks != 0 && (offset > blocks || n > blocks - offset)) {
            self.violation(
                name,
                format!("{n} bytes at {offset} of a {length}-byte window, map of {blocks}"),
            );
            return;
        }
        let end = MAP_SPAN.min(ARENA - at).min(length as usize);
        if (n as usize) < end
            && self
                .arena
                .read(at + n as usize, end - n as usize)
                .iter()
                .any(|&b| b != SENTINEL)
        {
            self.violation(name, format!("wrote past the {n} bytes it returned"));
        }
    }

    /// The `blksnap_snapshotinfo` that `cmd` (snapshotinfo, or snapshotinfo_of
    /// for `id`) left in the arena.
    fn check_snapshotinfo(&mut self, dev: &Dev, cmd: u32, id: sys::blksnap_uuid) {
        let name = "ctl snapshotinfo";
        let at = if cmd == ctl_cmd::SNAPSHOTINFO_OF {
            OPT + 16
        } else {
            OPT
        };
        let Some(image) = self.image_name(at) else {
            return;
        };
        if image.is_empty() {
            return;
        }
        if !image.starts_with(sys::BLKSNAP_IMAGE_NAME) || image.contains('/') {
            self.violation(name, format!("image name {image:?}"));
            return;
        }
        if !self.rng.chance(20) {
            return;
        }
        let Ok(file) = open_dev(&format!("/dev/{image}")) else {
            return;
        };
        // Image numbers are reused at once: between the answer and the open,
        // another thread may have destroyed this snapshot and taken one of
        // another device under the same name. Keep the image only if the
        // same question, asked again, still names it.
        if self.info_again(dev, cmd, id).as_deref() == Some(image.as_str()) {
            self.w.add_image(&mut self.rng, file, dev.sectors * 512);
        }
    }

    /// The image name of the `blksnap_snapshotinfo` at `at`, or None (and a
    /// violation) when it is not NUL-terminated.
    fn image_name(&mut self, at: usize) -> Option<String> {
        let i: sys::blksnap_snapshotinfo = self.arena.get(at);
        if i.error_code > 0 {
            self.violation(
                "ctl snapshotinfo",
                format!("positive error_code {}", i.error_code),
            );
        }
        let Some(len) = i.image.iter().position(|&b| b == 0) else {
            self.violation("ctl snapshotinfo", "image name not NUL-terminated".into());
            return None;
        };
        Some(String::from_utf8_lossy(&i.image[..len]).into_owned())
    }

    /// `cmd` for `dev` asked again with a well-formed payload: its image
    /// name, or None if it failed.
    fn info_again(&mut self, dev: &Dev, cmd: u32, id: sys::blksnap_uuid) -> Option<String> {
        let optlen = optlen_of(cmd)?;
        let of = sys::blksnap_snapshotinfo_of {
            id,
            ..Default::default()
        };
        self.arena.put(OPT, &of);
        let arg = sys::blksnap_ctl {
            fd: dev.file.as_raw_fd() as u32,
            cmd,
            optlen: optlen as u32,
            reserved: 0,
            opt: self.arena.addr(OPT),
        };
        self.arena.put(DATA, &arg);
        mem::ioctl(self.ctl_fd(), sys::IOCTL_BLKSNAP_CTL, self.arena.addr(DATA)).ok()?;
        let at = if cmd == ctl_cmd::SNAPSHOTINFO_OF {
            OPT + 16
        } else {
            OPT
        };
        self.image_name(at)
    }
}
