//! [`Control`]: the commands of `/dev/blksnap-control`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::{
    from_errno, sys, CbtInfo, Error, Event, Result, SectorRange, SnapshotId, SnapshotInfo,
    SnapshotState, Version,
};

/// How many map bytes one `cbtmap` call asks for: large enough to make a
/// 2M-block map take few calls, small enough to keep the kernel's copy short.
const CBT_MAP_WINDOW: usize = 1 << 20;

/// How often [`Control::snapshot_collect`] retries when snapshots keep
/// being created between its two calls.
const COLLECT_ATTEMPTS: usize = 16;

/// An open control device. All commands take `&self`: the kernel serialises
/// them, so one `Control` can be shared between threads.
#[derive(Debug)]
pub struct Control {
    fd: OwnedFd,
}

impl Control {
    /// Where the module's misc device appears.
    pub const DEFAULT_PATH: &'static str = "/dev/blksnap-control";

    /// Opens [`Control::DEFAULT_PATH`].
    pub fn open() -> Result<Self> {
        Self::open_path(Self::DEFAULT_PATH)
    }

    /// Opens the control device at `path` (tests and containers may mount
    /// `/dev` elsewhere).
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::Open {
                path: path.to_path_buf(),
                errno: io_errno(&e),
            })?;
        Ok(Control { fd: file.into() })
    }

    fn ctl(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The module's version.
    pub fn version(&self) -> Result<Version> {
        let v = sys::version(self.ctl()).map_err(|e| from_errno("version", e, None))?;
        Ok(Version {
            major: v.major,
            minor: v.minor,
            revision: v.revision,
            build: v.build,
        })
    }

    /// Starts change tracking on the block device open at `dev`.
    pub fn attach(&self, dev: &impl AsFd) -> Result<()> {
        sys::attach(self.ctl(), dev.as_fd()).map_err(|e| from_errno("attach", e, None))
    }

    /// Stops change tracking on `dev`; [`Error::Busy`] while it is in a
    /// snapshot.
    pub fn detach(&self, dev: &impl AsFd) -> Result<()> {
        sys::detach(self.ctl(), dev.as_fd()).map_err(|e| from_errno("detach", e, None))
    }

    /// Change tracking state of `dev`.
    pub fn cbt_info(&self, dev: &impl AsFd) -> Result<CbtInfo> {
        let mut info = sys::blksnap_cbtinfo::default();
        sys::ctl(self.ctl(), dev.as_fd(), &mut info).map_err(|e| from_errno("cbtinfo", e, None))?;
        Ok(CbtInfo {
            device_capacity: info.device_capacity,
            block_size: info.block_size,
            block_count: info.block_count,
            generation_id: uuid::Uuid::from_bytes(info.generation_id.b),
            changes_number: info.changes_number,
        })
    }

    /// Copies the change map frozen at the last take, from block `offset`,
    /// into `buf`; returns how many bytes the kernel copied (fewer than
    /// `buf.len()` at the end of the map).
    pub fn cbt_map(&self, dev: &impl AsFd, offset: u32, buf: &mut [u8]) -> Result<usize> {
        if u32::try_from(buf.len()).is_err() {
            return Err(Error::BadInput {
                op: "cbtmap",
                what: "buffer longer than 4 GiB",
            });
        }
        sys::ctl_cbtmap(self.ctl(), dev.as_fd(), offset, buf).map_err(|e| match e {
            Errno::EOVERFLOW => Error::Protocol {
                op: "cbtmap",
                what: "copied more bytes than the buffer holds",
            },
            e => from_errno("cbtmap", e, None),
        })
    }

    /// The whole frozen change map of `dev`, one byte per tracking block.
    pub fn cbt_map_all(&self, dev: &impl AsFd) -> Result<Vec<u8>> {
        let info = self.cbt_info(dev)?;
        let count = info.block_count as usize;
        let mut map = vec![0u8; count];
        let mut done = 0usize;
        while done < count {
            let end = count.min(done + CBT_MAP_WINDOW);
            // `done < count <= u32::MAX`, so this cannot truncate.
            let n = self.cbt_map(dev, done as u32, &mut map[done..end])?;
            if n == 0 {
                return Err(Error::Protocol {
                    op: "cbtmap",
                    what: "map shorter than cbtinfo's block_count",
                });
            }
            done += n;
        }
        Ok(map)
    }

    /// Marks `ranges` of `dev` as changed (for writes the tracker could not
    /// see, e.g. while the device was detached). Split into calls of at most
    /// `BLKSNAP_CBTDIRTY_MAX_COUNT` ranges.
    pub fn cbt_dirty(&self, dev: &impl AsFd, ranges: &[SectorRange]) -> Result<()> {
        let ranges: Vec<sys::blksnap_sectors> = ranges
            .iter()
            .map(|r| sys::blksnap_sectors {
                offset: r.offset,
                count: r.count,
            })
            .collect();
        for chunk in ranges.chunks(sys::BLKSNAP_CBTDIRTY_MAX_COUNT as usize) {
            sys::ctl_cbtdirty(self.ctl(), dev.as_fd(), chunk)
                .map_err(|e| from_errno("cbtdirty", e, None))?;
        }
        Ok(())
    }

    /// Creates an empty snapshot whose difference storage is `storage` (an
    /// `O_TMPFILE` or regular file opened read-write, or a block device
    /// opened read-write with `O_EXCL`), allowed to grow to `limit_sectors`.
    pub fn snapshot_create(&self, storage: &impl AsFd, limit_sectors: u64) -> Result<SnapshotId> {
        let mut arg = sys::blksnap_snapshot_create {
            diff_storage_limit_sect: limit_sectors,
            diff_storage_fd: std::os::fd::AsRawFd::as_raw_fd(&storage.as_fd()) as u32,
            ..Default::default()
        };
        sys::snapshot_create(self.ctl(), &mut arg)
            .map_err(|e| from_errno("snapshot_create", e, None))?;
        Ok(SnapshotId::from_sys(&arg.id))
    }

    /// Adds the attached device `dev` to snapshot `id` (before take).
    pub fn snapshot_add(&self, id: SnapshotId, dev: &impl AsFd) -> Result<()> {
        let mut add = sys::blksnap_snapshotadd { id: id.to_sys() };
        sys::ctl(self.ctl(), dev.as_fd(), &mut add)
            .map_err(|e| from_errno("snapshot_add", e, Some(id)))?;
        Ok(())
    }

    /// Takes snapshot `id`: all its devices at one instant.
    pub fn snapshot_take(&self, id: SnapshotId) -> Result<()> {
        sys::snapshot_take(self.ctl(), &id.to_sys())
            .map_err(|e| from_errno("snapshot_take", e, Some(id)))
    }

    /// Snapshot state of `dev` in its newest taken snapshot: its image's
    /// name and whether it is corrupted.
    pub fn snapshot_info(&self, dev: &impl AsFd) -> Result<SnapshotInfo> {
        const OP: &str = "snapshot_info";
        let mut info = sys::blksnap_snapshotinfo::default();
        sys::ctl(self.ctl(), dev.as_fd(), &mut info).map_err(|e| from_errno(OP, e, None))?;
        parse_info(OP, &info)
    }

    /// State of `dev` in snapshot `id` (one of several the device may be
    /// in), with the use of that snapshot's difference storage.
    pub fn snapshot_info_of(&self, id: SnapshotId, dev: &impl AsFd) -> Result<SnapshotState> {
        const OP: &str = "snapshot_info_of";
        let mut arg = sys::blksnap_snapshotinfo_of {
            id: id.to_sys(),
            ..Default::default()
        };
        sys::ctl(self.ctl(), dev.as_fd(), &mut arg).map_err(|e| from_errno(OP, e, Some(id)))?;
        Ok(SnapshotState {
            info: parse_info(OP, &arg.info)?,
            storage_used_sectors: arg.storage_used_sect,
            storage_filled_sectors: arg.storage_filled_sect,
        })
    }

    /// Releases snapshot `id`, its images and its storage; tracking goes on.
    pub fn snapshot_destroy(&self, id: SnapshotId) -> Result<()> {
        sys::snapshot_destroy(self.ctl(), &id.to_sys())
            .map_err(|e| from_errno("snapshot_destroy", e, Some(id)))
    }

    /// Ids of all snapshots the module holds.
    ///
    /// The kernel answers `ENODATA` with the needed count when the room is
    /// too small; a snapshot created between the two calls makes that
    /// happen again, so the exchange is retried.
    pub fn snapshot_collect(&self) -> Result<Vec<SnapshotId>> {
        const OP: &str = "snapshot_collect";
        let mut room = 0u32;
        for _ in 0..COLLECT_ATTEMPTS {
            let mut ids = vec![sys::blksnap_uuid::default(); room as usize];
            match sys::snapshot_collect(self.ctl(), &mut ids) {
                Ok(count) => {
                    if count > room {
                        return Err(Error::Protocol {
                            op: OP,
                            what: "count larger than the room given",
                        });
                    }
                    ids.truncate(count as usize);
                    return Ok(ids.iter().map(SnapshotId::from_sys).collect());
                }
                Err((Errno::ENODATA, count)) => {
                    if count <= room {
                        return Err(Error::Protocol {
                            op: OP,
                            what: "ENODATA without a larger count",
                        });
                    }
                    room = count;
                }
                Err((e, _)) => return Err(from_errno(OP, e, None)),
            }
        }
        Err(Error::Ioctl {
            op: OP,
            errno: Errno::EAGAIN,
        })
    }

    /// Waits up to `timeout` for the next event of snapshot `id`; `None`
    /// when none came. Signals do not shorten the wait.
    pub fn wait_event(&self, id: SnapshotId, timeout: Duration) -> Result<Option<Event>> {
        const OP: &str = "wait_event";
        let deadline = Instant::now().checked_add(timeout);
        let mut remaining = timeout;
        loop {
            let mut ev = sys::blksnap_snapshot_event {
                id: id.to_sys(),
                timeout_ms: u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX),
                ..Default::default()
            };
            match sys::snapshot_wait_event(self.ctl(), &mut ev) {
                Ok(()) => return parse_event(&ev).map(Some),
                Err(Errno::ETIMEDOUT) => return Ok(None),
                Err(Errno::EINTR) => {
                    remaining = match deadline {
                        Some(d) => d.saturating_duration_since(Instant::now()),
                        None => remaining,
                    };
                }
                Err(e) => return Err(from_errno(OP, e, Some(id))),
            }
        }
    }
}

impl AsFd for Control {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<File> for Control {
    /// Wraps an already open control device (e.g. one passed in by a
    /// supervisor).
    fn from(file: File) -> Self {
        Control { fd: file.into() }
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

fn parse_event(ev: &sys::blksnap_snapshot_event) -> Result<Event> {
    let u32_at = |o: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&ev.data[o..o + 4]);
        u32::from_ne_bytes(b)
    };
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&ev.data[o..o + 8]);
        u64::from_ne_bytes(b)
    };
    Ok(match ev.code {
        sys::event_code::CORRUPTED => {
            let err = u32_at(8) as i32;
            Event::Corrupted {
                major: u32_at(0),
                minor: u32_at(4),
                errno: Errno::from_raw(err.saturating_abs()),
            }
        }
        sys::event_code::LOW_SPACE => Event::LowSpace {
            free_sectors: u64_at(0),
            limit_sectors: u64_at(8),
        },
        code => Event::Unknown { code },
    })
}

/// A `blksnap_snapshotinfo` as the kernel filled it, checked.
fn parse_info(op: &'static str, info: &sys::blksnap_snapshotinfo) -> Result<SnapshotInfo> {
    let error = match info.error_code {
        0 => None,
        e if e < 0 => Some(Errno::from_raw(-e)),
        _ => {
            return Err(Error::Protocol {
                op,
                what: "positive error_code",
            })
        }
    };
    let len = info
        .image
        .iter()
        .position(|&b| b == 0)
        .ok_or(Error::Protocol {
            op,
            what: "image name not NUL-terminated",
        })?;
    let image = match std::str::from_utf8(&info.image[..len]) {
        Ok("") => None,
        Ok(name) if name.contains('/') => {
            return Err(Error::Protocol {
                op,
                what: "image name contains '/'",
            })
        }
        Ok(name) => Some(name.to_owned()),
        Err(_) => {
            return Err(Error::Protocol {
                op,
                what: "image name not UTF-8",
            })
        }
    };
    Ok(SnapshotInfo { error, image })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(code: u32, data: &[u8]) -> sys::blksnap_snapshot_event {
        let mut ev = sys::blksnap_snapshot_event {
            code,
            ..Default::default()
        };
        ev.data[..data.len()].copy_from_slice(data);
        ev
    }

    #[test]
    fn parses_corrupted_event() {
        let mut data = Vec::new();
        data.extend_from_slice(&252u32.to_ne_bytes());
        data.extend_from_slice(&16u32.to_ne_bytes());
        data.extend_from_slice(&(-28i32).to_ne_bytes());
        let e = parse_event(&event(sys::event_code::CORRUPTED, &data)).expect("parses");
        assert_eq!(
            e,
            Event::Corrupted {
                major: 252,
                minor: 16,
                errno: Errno::ENOSPC
            }
        );
    }

    #[test]
    fn parses_low_space_event() {
        let mut data = Vec::new();
        data.extend_from_slice(&(5u64 << 33 | 7).to_ne_bytes());
        data.extend_from_slice(&(1u64 << 40).to_ne_bytes());
        let e = parse_event(&event(sys::event_code::LOW_SPACE, &data)).expect("parses");
        assert_eq!(
            e,
            Event::LowSpace {
                free_sectors: 5u64 << 33 | 7,
                limit_sectors: 1u64 << 40
            }
        );
    }

    #[test]
    fn keeps_unknown_events() {
        let e = parse_event(&event(77, &[])).expect("parses");
        assert_eq!(e, Event::Unknown { code: 77 });
    }

    #[test]
    fn open_of_missing_path_says_which() {
        let err = Control::open_path("/nonexistent/blksnap-control").expect_err("must fail");
        assert_eq!(err.errno(), Some(Errno::ENOENT));
        assert!(err.to_string().contains("/nonexistent/blksnap-control"));
    }

    #[test]
    fn wrong_device_is_refused() {
        // /dev/null is no blksnap control device: the ioctl must fail rather
        // than be mistaken for an answer.
        let c = Control::open_path("/dev/null").expect("open /dev/null");
        assert!(c.version().is_err());
        assert!(c.snapshot_collect().is_err());
    }
}
