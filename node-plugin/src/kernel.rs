//! The kernel module's commands, behind a trait.
//!
//! The plugin drives blksnap.ko through [`Kernel`], implemented by
//! [`Module`]: the control device and the interface version the module
//! serves. The trait exists so that the RPC contract tests (status codes,
//! paging, idempotency) can run on a machine without the module; every
//! test of what the kernel does runs against the real module in the VM
//! harness.
//!
//! Interface 1.0 is still served, for a node upgraded while a 1.0 module
//! holds snapshots (each pins the module, so it cannot be reloaded): it
//! keeps one snapshot per device and names none in `snapshotinfo`.

use std::fs::File;
use std::time::Duration;

use blksnap::{CbtInfo, Control, Event, SnapshotId, SnapshotInfo, Version};

use crate::{Error, Result};

/// What the plugin relies on of a module's interface version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// 1.0: a device is in one snapshot at a time, and `snapshotinfo`
    /// reports that one.
    OneSnapshotPerDevice,
    /// 1.1 and later minors: up to `snapshots_per_device_maximum`
    /// snapshots per device, each asked for by id (`snapshotinfo_of`).
    SeveralSnapshotsPerDevice,
}

impl Interface {
    /// The interface of a module of `version`; a major this plugin does not
    /// speak is refused, and the plugin does not start.
    pub fn of(version: Version) -> Result<Interface> {
        if !version.is_compatible() {
            return Err(Error::Config(format!(
                "blksnap.ko version {version} does not serve interface {}.x that this plugin speaks",
                blksnap::sys::BLKSNAP_VERSION_MAJOR
            )));
        }
        Ok(if version.keeps_several_per_device() {
            Interface::SeveralSnapshotsPerDevice
        } else {
            Interface::OneSnapshotPerDevice
        })
    }
}

/// How many snapshots one device may be in at once, and what sets that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerDevice {
    /// The module's parameter `snapshots_per_device_maximum` (1.1 on).
    Parameter(u32),
    /// One: a module of interface 1.0.
    Interface1_0,
}

impl PerDevice {
    pub fn count(self) -> u32 {
        match self {
            PerDevice::Parameter(n) => n,
            PerDevice::Interface1_0 => 1,
        }
    }

    /// What sets the limit, for the message past it.
    pub fn source(self) -> &'static str {
        match self {
            PerDevice::Parameter(_) => "module parameter snapshots_per_device_maximum",
            PerDevice::Interface1_0 => "the loaded module serves interface 1.0",
        }
    }

    /// What raises the limit, for the message past it.
    pub fn remedy(self) -> &'static str {
        match self {
            PerDevice::Parameter(_) => {
                "or load the module with a larger snapshots_per_device_maximum"
            }
            PerDevice::Interface1_0 => {
                "or, once no snapshot holds the module, load one of interface 1.1 or later"
            }
        }
    }
}

/// The commands of `/dev/blksnap-control` the plugin uses. Devices are
/// named by open files, as the kernel interface does. A device may be in
/// several snapshots at once, so a snapshot's state is always asked for by
/// its id ([`Kernel::snapshot_info_of`]), never as the device's newest.
pub trait Kernel: Send + Sync {
    /// How many snapshots one device may be in at once.
    fn snapshots_per_device(&self) -> Result<PerDevice>;
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

/// The loaded module: its control device and the interface it serves.
#[derive(Debug)]
pub struct Module {
    control: Control,
    interface: Interface,
}

impl Module {
    /// Reads the module's version; one this plugin does not speak is
    /// refused.
    pub fn new(control: Control) -> Result<Module> {
        let version = control.version()?;
        let interface = Interface::of(version)?;
        tracing::info!(%version, ?interface, "blksnap module interface");
        Ok(Module { control, interface })
    }

    /// 1.0's answer for `id`: `snapshotinfo` names no snapshot, but a
    /// device is in one at most, and a record's device stays in its
    /// snapshot until that is destroyed; so while the kernel holds `id`,
    /// the device's snapshot is `id`.
    fn only_snapshot_info(&self, id: SnapshotId, dev: &File) -> blksnap::Result<SnapshotInfo> {
        if !self.control.snapshot_collect()?.contains(&id) {
            return Err(blksnap::Error::NoSuchSnapshot {
                op: "snapshot_info",
                id,
            });
        }
        self.control.snapshot_info(dev)
    }
}

impl Kernel for Module {
    fn snapshots_per_device(&self) -> Result<PerDevice> {
        match self.interface {
            // 1.0 has no such parameter.
            Interface::OneSnapshotPerDevice => Ok(PerDevice::Interface1_0),
            Interface::SeveralSnapshotsPerDevice => {
                crate::kmod::parameter("snapshots_per_device_maximum").map(PerDevice::Parameter)
            }
        }
    }
    fn attach(&self, dev: &File) -> blksnap::Result<()> {
        self.control.attach(dev)
    }
    fn detach(&self, dev: &File) -> blksnap::Result<()> {
        self.control.detach(dev)
    }
    fn cbt_info(&self, dev: &File) -> blksnap::Result<CbtInfo> {
        self.control.cbt_info(dev)
    }
    fn cbt_map_all(&self, dev: &File) -> blksnap::Result<Vec<u8>> {
        self.control.cbt_map_all(dev)
    }
    fn snapshot_create(&self, storage: &File, limit_sectors: u64) -> blksnap::Result<SnapshotId> {
        self.control.snapshot_create(storage, limit_sectors)
    }
    fn snapshot_add(&self, id: SnapshotId, dev: &File) -> blksnap::Result<()> {
        self.control.snapshot_add(id, dev)
    }
    fn snapshot_take(&self, id: SnapshotId) -> blksnap::Result<()> {
        self.control.snapshot_take(id)
    }
    fn snapshot_info_of(&self, id: SnapshotId, dev: &File) -> blksnap::Result<SnapshotInfo> {
        match self.interface {
            Interface::OneSnapshotPerDevice => self.only_snapshot_info(id, dev),
            Interface::SeveralSnapshotsPerDevice => self
                .control
                .snapshot_info_of(id, dev)
                .map(|state| state.info),
        }
    }
    fn snapshot_destroy(&self, id: SnapshotId) -> blksnap::Result<()> {
        self.control.snapshot_destroy(id)
    }
    fn snapshot_collect(&self) -> blksnap::Result<Vec<SnapshotId>> {
        self.control.snapshot_collect()
    }
    fn wait_event(&self, id: SnapshotId, timeout: Duration) -> blksnap::Result<Option<Event>> {
        self.control.wait_event(id, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u16, minor: u16) -> Version {
        Version {
            major,
            minor,
            revision: 0,
            build: 0,
        }
    }

    #[test]
    fn a_1_0_module_is_served_as_one_snapshot_per_device() {
        assert_eq!(
            Interface::of(v(1, 0)).expect("1.0"),
            Interface::OneSnapshotPerDevice
        );
        for minor in [1, 2] {
            assert_eq!(
                Interface::of(v(1, minor)).expect("1.x"),
                Interface::SeveralSnapshotsPerDevice
            );
        }
        for (major, minor) in [(0, 9), (2, 0), (2, 1)] {
            let err = Interface::of(v(major, minor)).expect_err("other major");
            assert!(matches!(err, Error::Config(_)), "{err:?}");
            assert!(err.to_string().contains("interface 1.x"), "{err}");
        }
        assert_eq!(PerDevice::Interface1_0.count(), 1);
        assert_eq!(PerDevice::Parameter(16).count(), 16);
    }
}
