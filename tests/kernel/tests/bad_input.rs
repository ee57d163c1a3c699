//! Bad input to every command: wrong sizes and directions, null and bogus
//! pointers (outside and inside the arguments), unknown ids and commands,
//! bad descriptors, reserved bits. Each must fail with an errno (the
//! specific one where the header implies it) and leave the module working.
//! The harness checks the kernel log for WARNING/BUG/Oops afterwards.

#[macro_use]
mod common;

use std::fs::File;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use blksnap::sys::{self, nr};
use blksnap::{Control, Error, SnapshotId};
use common::raw::{self, Buf, Dir};
use common::*;
use nix::errno::Errno;

/// An attached device in a taken snapshot, an idle device, and storage.
struct Fixture {
    ctl: Control,
    disks: Disks,
    dev: File,
    idle: File,
    id: SnapshotId,
    // Before `fs`: fields drop in order, and the open file keeps tmpfs busy.
    storage: File,
    fs: TmpMount,
}

impl Fixture {
    fn new() -> Self {
        let (ctl, disks) = setup();
        let fs = TmpMount::tmpfs(64 * MIB);
        let storage = tmpfile_in(&fs.path);
        let dev = open_rw(&disks.data_a);
        let idle = open_rw(&disks.data_b);
        ctl.attach(&dev).expect("attach");
        let id = ctl
            .snapshot_create(&storage, 32 * MIB / SECTOR)
            .expect("create");
        ctl.snapshot_add(id, &dev).expect("add");
        ctl.snapshot_take(id).expect("take");
        Fixture {
            ctl,
            disks,
            dev,
            idle,
            id,
            storage,
            fs,
        }
    }

    fn ctl_fd(&self) -> BorrowedFd<'_> {
        self.ctl.as_fd()
    }

    /// The module still answers, and the fixture is as it was.
    fn check_intact(&self) {
        self.ctl.version().expect("version");
        assert_eq!(self.ctl.snapshot_collect().expect("collect"), vec![self.id]);
        let info = self.ctl.snapshot_info(&self.dev).expect("snapshot_info");
        assert_eq!(info.error, None);
        assert!(info.image.is_some());
        assert!(matches!(
            self.ctl.cbt_info(&self.idle),
            Err(Error::NotAttached { .. })
        ));
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        cleanup(&self.ctl, &self.disks.all());
    }
}

fn fd32(f: &impl AsRawFd) -> u32 {
    f.as_raw_fd() as u32
}

fn expect_err(r: Result<i32, Errno>, allowed: &[Errno], what: &str) -> Errno {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v}), expected one of {allowed:?}"),
        Err(e) if allowed.is_empty() || allowed.contains(&e) => e,
        Err(e) => panic!("{what}: {e}, expected one of {allowed:?}"),
    }
}

struct Cmd {
    name: &'static str,
    nr: u8,
    dir: Dir,
    size: usize,
}

fn commands() -> [Cmd; 9] {
    use sys::*;
    [
        Cmd {
            name: "version",
            nr: nr::VERSION,
            dir: Dir::Read,
            size: size_of::<blksnap_version>(),
        },
        Cmd {
            name: "snapshot_create",
            nr: nr::SNAPSHOT_CREATE,
            dir: Dir::ReadWrite,
            size: size_of::<blksnap_snapshot_create>(),
        },
        Cmd {
            name: "snapshot_destroy",
            nr: nr::SNAPSHOT_DESTROY,
            dir: Dir::Write,
            size: size_of::<blksnap_uuid>(),
        },
        Cmd {
            name: "snapshot_take",
            nr: nr::SNAPSHOT_TAKE,
            dir: Dir::Write,
            size: size_of::<blksnap_uuid>(),
        },
        Cmd {
            name: "snapshot_collect",
            nr: nr::SNAPSHOT_COLLECT,
            dir: Dir::ReadWrite,
            size: size_of::<blksnap_snapshot_collect>(),
        },
        Cmd {
            name: "snapshot_wait_event",
            nr: nr::SNAPSHOT_WAIT_EVENT,
            dir: Dir::ReadWrite,
            size: size_of::<blksnap_snapshot_event>(),
        },
        Cmd {
            name: "attach",
            nr: nr::ATTACH,
            dir: Dir::Write,
            size: size_of::<blksnap_bdev>(),
        },
        Cmd {
            name: "detach",
            nr: nr::DETACH,
            dir: Dir::Write,
            size: size_of::<blksnap_bdev>(),
        },
        Cmd {
            name: "ctl",
            nr: nr::CTL,
            dir: Dir::ReadWrite,
            size: size_of::<blksnap_ctl>(),
        },
    ]
}

/// A payload with which `cmd` would succeed (or, for wait_event, time
/// out), so that a refusal can only come from what the test changed.
fn valid_payload(fx: &Fixture, cmd: &Cmd, inner: &mut Buf) -> Buf {
    let u = sys::blksnap_uuid {
        b: *fx.id.0.as_bytes(),
    };
    match cmd.nr {
        nr::VERSION => Buf::new(),
        nr::SNAPSHOT_CREATE => Buf::with(&sys::blksnap_snapshot_create {
            diff_storage_limit_sect: 16 * MIB / SECTOR,
            diff_storage_fd: fd32(&fx.storage),
            ..Default::default()
        }),
        nr::SNAPSHOT_DESTROY | nr::SNAPSHOT_TAKE => Buf::with(&u),
        nr::SNAPSHOT_COLLECT => Buf::with(&sys::blksnap_snapshot_collect {
            count: 64,
            _pad: 0,
            ids: inner.addr(),
        }),
        nr::SNAPSHOT_WAIT_EVENT => Buf::with(&sys::blksnap_snapshot_event {
            id: u,
            timeout_ms: 10,
            ..Default::default()
        }),
        nr::ATTACH => Buf::with(&sys::blksnap_bdev {
            fd: fd32(&fx.idle),
            flags: 0,
        }),
        nr::DETACH => Buf::with(&sys::blksnap_bdev {
            fd: fd32(&fx.dev),
            flags: 0,
        }),
        _ => Buf::with(&sys::blksnap_ctl {
            fd: fd32(&fx.dev),
            cmd: sys::ctl_cmd::CBTINFO,
            optlen: size_of::<sys::blksnap_cbtinfo>() as u32,
            reserved: 0,
            opt: inner.addr(),
        }),
    }
}

#[test]
fn unknown_ioctl_numbers_are_refused_with_enotty() {
    let fx = Fixture::new();
    let mut buf = Buf::new();
    for n in [6u8, 7, 15, 19, 20, 64, 255] {
        for (dir, size) in [
            (Dir::None, 0),
            (Dir::ReadWrite, 8),
            (Dir::Write, 16),
            (Dir::Read, 40),
        ] {
            let r = raw::ioctl_buf(fx.ctl_fd(), raw::req(dir, n, size), &mut buf);
            expect_err(r, &[Errno::ENOTTY], &format!("nr {n} {dir:?} size {size}"));
        }
    }
    // The right number with another magic.
    let other = nix::request_code_read!(b'W', nr::VERSION, size_of::<sys::blksnap_version>());
    expect_err(
        raw::ioctl_buf(fx.ctl_fd(), other, &mut buf),
        &[Errno::ENOTTY],
        "magic 'W'",
    );
    fx.check_intact();
}

#[test]
fn wrong_sizes_and_directions_are_refused() {
    let fx = Fixture::new();
    let mut checked = 0;
    for cmd in commands() {
        let mut sizes = vec![
            0,
            1,
            cmd.size - 1,
            cmd.size + 1,
            cmd.size + 8,
            cmd.size * 2,
            4096,
        ];
        sizes.retain(|&s| s != cmd.size && s < (1 << 14));
        sizes.sort_unstable();
        sizes.dedup();
        let mut variants: Vec<(Dir, usize)> = sizes.into_iter().map(|s| (cmd.dir, s)).collect();
        for d in [Dir::None, Dir::Read, Dir::Write, Dir::ReadWrite] {
            if std::mem::discriminant(&d) != std::mem::discriminant(&cmd.dir) {
                variants.push((d, if matches!(d, Dir::None) { 0 } else { cmd.size }));
            }
        }
        for (dir, size) in variants {
            let mut inner = Buf::new();
            let mut arg = valid_payload(&fx, &cmd, &mut inner);
            let r = raw::ioctl_buf(fx.ctl_fd(), raw::req(dir, cmd.nr, size), &mut arg);
            expect_err(
                r,
                &[Errno::ENOTTY, Errno::EINVAL],
                &format!("{} as {dir:?} with size {size}", cmd.name),
            );
            checked += 1;
        }
        // The same payload with the right number is accepted: the refusals
        // above came from the number.
        let mut inner = Buf::new();
        let mut arg = valid_payload(&fx, &cmd, &mut inner);
        let right = raw::req(cmd.dir, cmd.nr, cmd.size);
        match cmd.nr {
            // Keep the fixture: these would undo it.
            nr::SNAPSHOT_DESTROY
            | nr::SNAPSHOT_TAKE
            | nr::DETACH
            | nr::SNAPSHOT_CREATE
            | nr::ATTACH => {}
            nr::SNAPSHOT_WAIT_EVENT => {
                expect_err(
                    raw::ioctl_buf(fx.ctl_fd(), right, &mut arg),
                    &[Errno::ETIMEDOUT],
                    "wait_event",
                );
            }
            _ => {
                raw::ioctl_buf(fx.ctl_fd(), right, &mut arg)
                    .unwrap_or_else(|e| panic!("{} with its right number: {e}", cmd.name));
            }
        }
    }
    fx.check_intact();
    say!("{checked} wrong request numbers refused");
}

#[test]
fn null_and_bad_argument_pointers_fault() {
    let fx = Fixture::new();
    let bad = [0, 1, raw::unmapped_addr(), raw::KERNEL_ADDR];
    for cmd in commands() {
        for &addr in &bad {
            let r = raw::ioctl_addr(fx.ctl_fd(), raw::req(cmd.dir, cmd.nr, cmd.size), addr);
            expect_err(
                r,
                &[Errno::EFAULT],
                &format!("{} with argument {addr:#x}", cmd.name),
            );
        }
    }
    // An answer cannot be written into read-only memory.
    let ro = raw::read_only_page();
    let r = raw::ioctl_addr(fx.ctl_fd(), sys::IOCTL_BLKSNAP_VERSION, ro);
    expect_err(r, &[Errno::EFAULT], "version into a read-only page");
    fx.check_intact();
}

#[test]
fn bad_pointers_inside_arguments_fault() {
    let fx = Fixture::new();
    let bad = [0, 1, raw::unmapped_addr(), raw::KERNEL_ADDR];
    let ctl_with = |cmd: u32, optlen: usize, opt: u64| {
        Buf::with(&sys::blksnap_ctl {
            fd: fd32(&fx.dev),
            cmd,
            optlen: optlen as u32,
            reserved: 0,
            opt,
        })
    };
    for &addr in &bad {
        for (cmd, len) in [
            (sys::ctl_cmd::CBTINFO, size_of::<sys::blksnap_cbtinfo>()),
            (sys::ctl_cmd::CBTMAP, size_of::<sys::blksnap_cbtmap>()),
            (sys::ctl_cmd::CBTDIRTY, size_of::<sys::blksnap_cbtdirty>()),
            (
                sys::ctl_cmd::SNAPSHOTADD,
                size_of::<sys::blksnap_snapshotadd>(),
            ),
            (
                sys::ctl_cmd::SNAPSHOTINFO,
                size_of::<sys::blksnap_snapshotinfo>(),
            ),
        ] {
            let mut arg = ctl_with(cmd, len, addr);
            let r = raw::ioctl_buf(fx.ctl_fd(), sys::IOCTL_BLKSNAP_CTL, &mut arg);
            expect_err(
                r,
                &[Errno::EFAULT],
                &format!("ctl cmd {cmd} with opt {addr:#x}"),
            );
        }

        let mut map = Buf::with(&sys::blksnap_cbtmap {
            offset: 0,
            length: 64,
            buffer: addr,
        });
        let mut arg = ctl_with(
            sys::ctl_cmd::CBTMAP,
            size_of::<sys::blksnap_cbtmap>(),
            map.addr(),
        );
        let r = raw::ioctl_buf(fx.ctl_fd(), sys::IOCTL_BLKSNAP_CTL, &mut arg);
        expect_err(r, &[Errno::EFAULT], &format!("cbtmap into {addr:#x}"));

        let mut dirty = Buf::with(&sys::blksnap_cbtdirty {
            count: 1,
            _pad: 0,
            dirty_sectors: addr,
        });
        let mut arg = ctl_with(
            sys::ctl_cmd::CBTDIRTY,
            size_of::<sys::blksnap_cbtdirty>(),
            dirty.addr(),
        );
        let r = raw::ioctl_buf(fx.ctl_fd(), sys::IOCTL_BLKSNAP_CTL, &mut arg);
        expect_err(r, &[Errno::EFAULT], &format!("cbtdirty from {addr:#x}"));

        let mut arg = Buf::with(&sys::blksnap_snapshot_collect {
            count: 8,
            _pad: 0,
            ids: addr,
        });
        let r = raw::ioctl_buf(fx.ctl_fd(), sys::IOCTL_BLKSNAP_SNAPSHOT_COLLECT, &mut arg);
        if addr == 0 {
            // NULL ids is the v6 way to ask for the count only.
            expect_err(r, &[Errno::EFAULT, Errno::ENODATA], "collect into NULL");
            if r == Err(Errno::ENODATA) {
                let back: sys::blksnap_snapshot_collect = arg.get();
                assert_eq!(back.count, 1, "count from collect with NULL ids");
            }
        } else {
            expect_err(r, &[Errno::EFAULT], &format!("collect into {addr:#x}"));
        }
    }
    let mut arg = ctl_with(
        sys::ctl_cmd::SNAPSHOTINFO,
        size_of::<sys::blksnap_snapshotinfo>(),
        raw::read_only_page(),
    );
    let r = raw::ioctl_buf(fx.ctl_fd(), sys::IOCTL_BLKSNAP_CTL, &mut arg);
    expect_err(r, &[Errno::EFAULT], "snapshotinfo into a read-only page");
    fx.check_intact();
}

#[test]
fn ctl_refuses_unknown_commands_short_options_and_reserved_bits() {
    let fx = Fixture::new();
    let run_ctl = |ctl: sys::blksnap_ctl| -> (Result<i32, Errno>, sys::blksnap_ctl) {
        let mut arg = Buf::with(&ctl);
        let r = raw::ioctl_buf(fx.ctl_fd(), sys::IOCTL_BLKSNAP_CTL, &mut arg);
        (r, arg.get())
    };
    let mut opt = Buf::new();
    let base = sys::blksnap_ctl {
        fd: fd32(&fx.dev),
        cmd: sys::ctl_cmd::CBTINFO,
        optlen: size_of::<sys::blksnap_cbtinfo>() as u32,
        reserved: 0,
        opt: opt.addr(),
    };
    assert!(run_ctl(base).0.is_ok(), "the base request itself must work");

    for cmd in [5, 6, 64, u32::MAX] {
        let (r, _) = run_ctl(sys::blksnap_ctl {
            cmd,
            optlen: 64,
            ..base
        });
        expect_err(r, &[], &format!("ctl cmd {cmd}"));
    }
    // Too small an option buffer: -ENOSPC and the needed size (header).
    for (cmd, need) in [
        (sys::ctl_cmd::CBTINFO, size_of::<sys::blksnap_cbtinfo>()),
        (
            sys::ctl_cmd::SNAPSHOTINFO,
            size_of::<sys::blksnap_snapshotinfo>(),
        ),
    ] {
        for short in [0, 4, need - 1] {
            let (r, back) = run_ctl(sys::blksnap_ctl {
                cmd,
                optlen: short as u32,
                ..base
            });
            expect_err(
                r,
                &[Errno::ENOSPC],
                &format!("ctl cmd {cmd} optlen {short}"),
            );
            assert_eq!(
                back.optlen as usize, need,
                "optlen written back for cmd {cmd}"
            );
        }
    }
    for reserved in [1, 0x8000_0000] {
        let (r, _) = run_ctl(sys::blksnap_ctl { reserved, ..base });
        expect_err(r, &[Errno::EINVAL], &format!("ctl reserved {reserved:#x}"));
    }
    let (r, _) = run_ctl(sys::blksnap_ctl {
        fd: fd32(&fx.idle),
        ..base
    });
    expect_err(r, &[Errno::ENODEV], "ctl on a device that is not attached");
    for fd in [u32::MAX, 999_999] {
        let (r, _) = run_ctl(sys::blksnap_ctl { fd, ..base });
        expect_err(r, &[Errno::EBADF], &format!("ctl on fd {fd}"));
    }

    let info = fx.ctl.cbt_info(&fx.dev).expect("cbt_info");
    let sectors = info.device_capacity / SECTOR;
    // Ranges: too many, past the end, and wrapping around.
    let many = vec![sys::blksnap_sectors::default(); sys::BLKSNAP_CBTDIRTY_MAX_COUNT as usize + 1];
    assert!(
        sys::ctl_cbtdirty(fx.ctl_fd(), fx.dev.as_fd(), &many).is_err(),
        "cbtdirty with more than BLKSNAP_CBTDIRTY_MAX_COUNT ranges"
    );
    for (offset, count) in [(sectors, 8), (u64::MAX - 1, 8), (0, u64::MAX)] {
        let r = sys::ctl_cbtdirty(
            fx.ctl_fd(),
            fx.dev.as_fd(),
            &[sys::blksnap_sectors { offset, count }],
        );
        assert!(
            r.is_err(),
            "cbtdirty of sectors {offset}+{count} beyond {sectors}"
        );
    }
    // Map windows past the end copy nothing.
    let mut buf = vec![0u8; 64];
    for offset in [info.block_count, info.block_count + 1, u32::MAX] {
        let r = sys::ctl_cbtmap(fx.ctl_fd(), fx.dev.as_fd(), offset, &mut buf);
        assert!(
            !matches!(r, Ok(n) if n > 0),
            "cbtmap at block {offset} copied {r:?}"
        );
    }
    let r = sys::ctl_cbtmap(fx.ctl_fd(), fx.dev.as_fd(), 0, &mut []);
    assert!(matches!(r, Ok(0) | Err(_)), "cbtmap of length 0: {r:?}");
    fx.check_intact();
}

#[test]
fn attach_and_detach_refuse_bad_descriptors_and_flags() {
    let fx = Fixture::new();
    let run = |req, fd: u32, flags: u32| {
        let mut arg = Buf::with(&sys::blksnap_bdev { fd, flags });
        raw::ioctl_buf(fx.ctl_fd(), req, &mut arg)
    };
    for req in [sys::IOCTL_BLKSNAP_ATTACH, sys::IOCTL_BLKSNAP_DETACH] {
        for fd in [u32::MAX, 999_999] {
            expect_err(run(req, fd, 0), &[Errno::EBADF], &format!("fd {fd}"));
        }
        let file = File::open("/proc/self/exe").expect("open a regular file");
        let (pipe_r, _pipe_w) = nix::unistd::pipe().expect("pipe");
        let dir = File::open("/").expect("open /");
        for (what, fd) in [
            ("a regular file", fd32(&file)),
            ("a pipe", fd32(&pipe_r)),
            ("a directory", fd32(&dir)),
            ("the control device", fd32(&fx.ctl.as_fd())),
        ] {
            expect_err(run(req, fd, 0), &[], what);
        }
    }
    for flags in [1, 0x8000_0000] {
        expect_err(
            run(sys::IOCTL_BLKSNAP_ATTACH, fd32(&fx.idle), flags),
            &[Errno::EINVAL],
            "attach flags",
        );
        expect_err(
            run(sys::IOCTL_BLKSNAP_DETACH, fd32(&fx.dev), flags),
            &[Errno::EINVAL],
            "detach flags",
        );
    }
    // A descriptor opened write-only still names the device; read-only too.
    fx.check_intact();
}

#[test]
fn snapshot_create_refuses_bad_storage() {
    let fx = Fixture::new();
    let create = |fd: u32, limit: u64| {
        let mut arg = Buf::with(&sys::blksnap_snapshot_create {
            diff_storage_limit_sect: limit,
            diff_storage_fd: fd,
            ..Default::default()
        });
        raw::ioctl_buf(fx.ctl_fd(), sys::IOCTL_BLKSNAP_SNAPSHOT_CREATE, &mut arg)
    };
    let limit = 16 * MIB / SECTOR;
    for fd in [u32::MAX, 999_999] {
        expect_err(
            create(fd, limit),
            &[Errno::EBADF],
            &format!("storage fd {fd}"),
        );
    }
    let (pipe_r, _pipe_w) = nix::unistd::pipe().expect("pipe");
    let dir = File::open("/").expect("open /");
    let ro_path = fx.fs.path.join("read-only");
    std::fs::write(&ro_path, b"x").expect("create file");
    let read_only = File::open(&ro_path).expect("open read-only");
    // A block device without O_EXCL could be read behind the snapshot's back.
    let shared_bdev = open_rw(&fx.disks.storage);
    let fresh = tmpfile_in(&fx.fs.path);
    for (what, fd, l) in [
        ("a pipe", fd32(&pipe_r), limit),
        ("a directory", fd32(&dir), limit),
        ("a read-only file", fd32(&read_only), limit),
        ("a block device without O_EXCL", fd32(&shared_bdev), limit),
        ("the control device", fd32(&fx.ctl.as_fd()), limit),
        ("a limit of 0", fd32(&fresh), 0),
    ] {
        expect_err(create(fd, l), &[], what);
    }
    fx.check_intact();
}

#[test]
fn unknown_snapshot_ids_are_refused_with_enoent() {
    let fx = Fixture::new();
    // The idle device, attached and in no snapshot, so that only the id is
    // wrong in snapshot_add.
    fx.ctl.attach(&fx.idle).expect("attach");
    for id in [
        SnapshotId(uuid::Uuid::new_v4()),
        SnapshotId(uuid::Uuid::nil()),
    ] {
        let no_such = |r: blksnap::Result<()>, what: &str| match r {
            Err(Error::NoSuchSnapshot { .. }) => {}
            other => panic!("{what} of unknown {id}: {other:?}"),
        };
        no_such(fx.ctl.snapshot_destroy(id), "destroy");
        no_such(fx.ctl.snapshot_take(id), "take");
        no_such(fx.ctl.snapshot_add(id, &fx.idle), "add");
        match fx.ctl.wait_event(id, Duration::from_millis(10)) {
            Err(Error::NoSuchSnapshot { .. }) => {}
            other => panic!("wait_event of unknown {id}: {other:?}"),
        }
    }
    fx.ctl.detach(&fx.idle).expect("detach");
    fx.check_intact();
}

#[test]
fn commands_out_of_order_are_refused() {
    let fx = Fixture::new();
    assert!(
        fx.ctl.snapshot_take(fx.id).is_err(),
        "a snapshot was taken twice"
    );
    fx.ctl.attach(&fx.idle).expect("attach");
    assert!(
        fx.ctl.snapshot_add(fx.id, &fx.idle).is_err(),
        "add after take"
    );
    // A device joins another snapshot, but no snapshot twice.
    let storage = tmpfile_in(&fx.fs.path);
    let other = fx
        .ctl
        .snapshot_create(&storage, 16 * MIB / SECTOR)
        .expect("create");
    fx.ctl
        .snapshot_add(other, &fx.dev)
        .expect("a device in a taken snapshot joins another");
    assert!(
        matches!(fx.ctl.snapshot_add(other, &fx.dev), Err(Error::Busy { .. })),
        "a device joined one snapshot twice"
    );
    fx.ctl.snapshot_destroy(other).expect("destroy");
    assert!(
        matches!(
            fx.ctl.snapshot_destroy(other),
            Err(Error::NoSuchSnapshot { .. })
        ),
        "a snapshot was destroyed twice"
    );
    fx.ctl.detach(&fx.idle).expect("detach");
    fx.check_intact();
}

#[test]
fn collect_reports_the_count_it_needs() {
    let fx = Fixture::new();
    let extra_fs = TmpMount::tmpfs(64 * MIB);
    let storages: Vec<File> = (0..3).map(|_| tmpfile_in(&extra_fs.path)).collect();
    let mut ids: Vec<SnapshotId> = storages
        .iter()
        .map(|s| fx.ctl.snapshot_create(s, 8 * MIB / SECTOR).expect("create"))
        .collect();
    ids.push(fx.id);
    ids.sort();

    let mut room = vec![sys::blksnap_uuid::default(); 4];
    match sys::snapshot_collect(fx.ctl_fd(), &mut room[..1]) {
        Err((Errno::ENODATA, count)) => assert_eq!(count, 4, "count with too little room"),
        other => panic!("collect with room for 1 of 4: {other:?}"),
    }
    match sys::snapshot_collect(fx.ctl_fd(), &mut room[..0]) {
        Err((Errno::ENODATA, count)) => assert_eq!(count, 4, "count with no room"),
        other => panic!("collect with no room: {other:?}"),
    }
    let n = sys::snapshot_collect(fx.ctl_fd(), &mut room).expect("collect with room");
    assert_eq!(n, 4);
    let mut got: Vec<SnapshotId> = room
        .iter()
        .map(|u| SnapshotId(uuid::Uuid::from_bytes(u.b)))
        .collect();
    got.sort();
    assert_eq!(got, ids);
    let mut via_crate = fx.ctl.snapshot_collect().expect("collect");
    via_crate.sort();
    assert_eq!(via_crate, ids);
    for id in &ids[..] {
        if *id != fx.id {
            fx.ctl.snapshot_destroy(*id).expect("destroy");
        }
    }
    fx.check_intact();
}

#[test]
fn wait_event_times_out_without_events() {
    let fx = Fixture::new();
    let t = Instant::now();
    let r = fx
        .ctl
        .wait_event(fx.id, Duration::from_millis(200))
        .expect("wait_event");
    assert_eq!(r, None, "event on a healthy snapshot");
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "returned after {:?}",
        t.elapsed()
    );
    fx.check_intact();
}

/// A page whose first touch waits in userfaultfd until the returned fd is
/// closed: a user buffer that holds the kernel in `copy_to_user()`. None
/// on a kernel without userfaultfd.
fn stalling_page() -> Option<(std::os::fd::OwnedFd, u64)> {
    use nix::libc;
    use std::os::fd::FromRawFd;

    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct UffdioRegister {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    const UFFD_API: u64 = 0xaa;
    const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
    let uffdio_api = nix::request_code_readwrite!(0xaa, 0x3f, size_of::<UffdioApi>());
    let uffdio_register = nix::request_code_readwrite!(0xaa, 0x00, size_of::<UffdioRegister>());

    // SAFETY: plain syscalls on a fresh fd and a fresh anonymous mapping
    // that no Rust object refers to.
    unsafe {
        let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK);
        if fd < 0 && Errno::last() == Errno::ENOSYS {
            return None;
        }
        assert!(fd >= 0, "userfaultfd: {}", Errno::last());
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd as i32);
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        Errno::result(libc::ioctl(fd.as_raw_fd(), uffdio_api, &mut api)).expect("UFFDIO_API");
        let len = std::num::NonZeroUsize::new(4096).expect("non-zero");
        let page = nix::sys::mman::mmap_anonymous(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_PRIVATE,
        )
        .expect("mmap");
        let mut reg = UffdioRegister {
            start: page.as_ptr() as u64,
            len: 4096,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        Errno::result(libc::ioctl(fd.as_raw_fd(), uffdio_register, &mut reg))
            .expect("UFFDIO_REGISTER");
        Some((fd, page.as_ptr() as u64))
    }
}

/// A control command stuck writing its answer into user memory that does
/// not come (a userfaultfd page) must hold up neither another command nor
/// the removal of an attached disk. Before the fix the cbtmap copied out
/// under the module's one mutex, which the removal takes.
#[test]
fn a_stalled_user_buffer_holds_up_no_removal() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const WAIT: Duration = Duration::from_secs(10);

    let Some((uffd, page)) = stalling_page() else {
        say!("skipped: this kernel has no userfaultfd (CONFIG_USERFAULTFD)");
        return;
    };
    let (ctl, disks) = setup();
    let a = open_rw(&disks.data_a);
    ctl.attach(&a).expect("attach A");
    let mut nullb = NullBlk::new("blksnap_gone", 64 * 1024 * 1024);
    let b = open_rw(&nullb.dev);
    ctl.attach(&b).expect("attach B");
    let ctl_fd = ctl.as_fd().as_raw_fd();
    let a_fd = fd32(&a);

    let removed = AtomicBool::new(false);
    let (took, copied) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut map = Buf::with(&sys::blksnap_cbtmap {
                offset: 0,
                length: 64,
                buffer: page,
            });
            let mut arg = Buf::with(&sys::blksnap_ctl {
                fd: a_fd,
                cmd: sys::ctl_cmd::CBTMAP,
                optlen: size_of::<sys::blksnap_cbtmap>() as u32,
                reserved: 0,
                opt: map.addr(),
            });
            // SAFETY: the control fd outlives the scope.
            let fd = unsafe { BorrowedFd::borrow_raw(ctl_fd) };
            raw::ioctl_buf(fd, sys::IOCTL_BLKSNAP_CTL, &mut arg)
        });
        // The reader is now waiting for its page.
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            !reader.is_finished(),
            "the cbtmap did not wait for its page"
        );
        let t = Instant::now();
        let remover = s.spawn(|| {
            nullb.power_off();
            removed.store(true, Ordering::SeqCst);
        });
        while !removed.load(Ordering::SeqCst) && t.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = t.elapsed();
        drop(uffd);
        remover.join().expect("remover");
        (took, reader.join().expect("reader"))
    });
    // Once the userfaultfd is gone the page comes as any other.
    assert_eq!(copied, Ok(64), "cbtmap into the page");
    assert!(
        took < WAIT,
        "removal of B waited {took:?} for a cbtmap of A stuck on its user buffer"
    );
    ctl.detach(&a).expect("detach A");
    drop(b);
    say!("B removed in {took:?} while a cbtmap of A waited for its page");
}
