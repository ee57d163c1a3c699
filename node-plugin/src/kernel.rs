//! The kernel module's commands, behind a trait.
//!
//! The plugin drives blksnap.ko through [`Kernel`], implemented by
//! [`blksnap::Control`]. The trait exists so that the RPC contract tests
//! (status codes, paging, idempotency) can run on a machine without the
//! module; every test of what the kernel does runs against the real module
//! in the VM harness.

use std::fs::File;
use std::time::Duration;

use blksnap::{CbtInfo, Control, Event, SnapshotId, SnapshotInfo};

/// The commands of `/dev/blksnap-control` the plugin uses. Devices are
/// named by open files, as the kernel interface does. A device may be in
/// several snapshots at once, so a snapshot's state is always asked for by
/// its id ([`Kernel::snapshot_info_of`]), never as the device's newest.
pub trait Kernel: Send + Sync {
    /// How many snapshots one device may be in at once.
    fn snapshots_per_device_maximum(&self) -> crate::Result<u32>;
    fn attach(&self, dev: &File) -> blksnap::Result<()>;
    fn detach(&self, dev: &File) -> blksnap::Result<()>;
    fn cbt_info(&self, dev: &File) -> blksnap::Result<CbtInfo>;
    fn cbt_map_all(&self, dev: &File) -> blksnap::Result<Vec<u8>>;
    fn snapshot_create(&self, storage: &File, limit_sectors: u64) -> blksnap::Result<SnapshotId>;
    fn snapshot_add(&self, id: SnapshotId, dev: &File) -> blksnap::Result<()>;
    fn snapshot_take(&self, id: SnapshotId) -> blksnap::Result<()>;
    fn snapshot_info_of(&self, id: SnapshotId, dev: &File) -> blksnap::Result<SnapshotInfo>;
    fn snapshot_destroy(&self, id: SnapshotId) -> blksnap::Result<()>;
    fn snapshot_collect(&self) -> blksnap::Result<Vec<SnapshotId>>;
    fn wait_event(&self, id: SnapshotId, timeout: Duration) -> blksnap::Result<Option<Event>>;
}

impl Kernel for Control {
    fn snapshots_per_device_maximum(&self) -> crate::Result<u32> {
        crate::kmod::parameter("snapshots_per_device_maximum")
    }
    fn attach(&self, dev: &File) -> blksnap::Result<()> {
        Control::attach(self, dev)
    }
    fn detach(&self, dev: &File) -> blksnap::Result<()> {
        Control::detach(self, dev)
    }
    fn cbt_info(&self, dev: &File) -> blksnap::Result<CbtInfo> {
        Control::cbt_info(self, dev)
    }
    fn cbt_map_all(&self, dev: &File) -> blksnap::Result<Vec<u8>> {
        Control::cbt_map_all(self, dev)
    }
    fn snapshot_create(&self, storage: &File, limit_sectors: u64) -> blksnap::Result<SnapshotId> {
        Control::snapshot_create(self, storage, limit_sectors)
    }
    fn snapshot_add(&self, id: SnapshotId, dev: &File) -> blksnap::Result<()> {
        Control::snapshot_add(self, id, dev)
    }
    fn snapshot_take(&self, id: SnapshotId) -> blksnap::Result<()> {
        Control::snapshot_take(self, id)
    }
    fn snapshot_info_of(&self, id: SnapshotId, dev: &File) -> blksnap::Result<SnapshotInfo> {
        Control::snapshot_info_of(self, id, dev).map(|state| state.info)
    }
    fn snapshot_destroy(&self, id: SnapshotId) -> blksnap::Result<()> {
        Control::snapshot_destroy(self, id)
    }
    fn snapshot_collect(&self) -> blksnap::Result<Vec<SnapshotId>> {
        Control::snapshot_collect(self)
    }
    fn wait_event(&self, id: SnapshotId, timeout: Duration) -> blksnap::Result<Option<Event>> {
        Control::wait_event(self, id, timeout)
    }
}
