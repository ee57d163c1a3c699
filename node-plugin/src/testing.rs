//! Test-only stand-ins for the RPC contract tests, compiled into unit
//! tests only.
//!
//! SCOPE: these exist so that the CSI status codes, idempotency, paging and
//! argument checks of every RPC can be tested on any machine, each case
//! with a fresh temporary state directory. They are not the product and
//! prove nothing about the kernel: [`FakeKernel`] keeps change maps and
//! snapshot bookkeeping in memory with the module's numbering rules, and
//! [`FileBackend`] hands out plain sparse files as "devices". Everything
//! that depends on what blksnap.ko does (images, copy-on-write, real change
//! maps, restore, group takes, overflow) is tested against the real module
//! in the VM harness (`tests/vm.rs`).

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blksnap::{CbtInfo, Event, SnapshotId, SnapshotInfo};
use nix::errno::Errno;
use uuid::Uuid;

use crate::backend::{file_pool, Backend, Provisioned};
use crate::controller::ControllerService;
use crate::group_controller::GroupControllerService;
use crate::kernel::{Kernel, PerDevice};
use crate::node::NodeService;
use crate::plugin::{Plugin, Settings};
use crate::snapshot_metadata::SnapshotMetadataService;
use crate::state::{BackendKind, VolumeRecord};
use crate::{Error, Result};

/// Tracking block size of the fake.
pub const BLOCK: u64 = 4096;

type DevKey = (u64, u64);

fn key(f: &File) -> DevKey {
    let m = f.metadata().expect("stat fake device");
    (m.dev(), m.ino())
}

#[derive(Debug)]
struct Tracker {
    capacity: u64,
    write_map: Vec<u8>,
    read_map: Vec<u8>,
    active: u8,
    previous: u8,
    generation: Uuid,
    /// The snapshots the device is in, at most the fake's limit.
    snapshots: Vec<Uuid>,
}

#[derive(Debug, Default)]
struct Snap {
    devices: Vec<DevKey>,
    taken: bool,
    error: Option<Errno>,
}

#[derive(Debug, Default)]
struct Inner {
    trackers: HashMap<DevKey, Tracker>,
    snapshots: HashMap<Uuid, Snap>,
}

/// Snapshots per device the fake keeps unless told otherwise: fewer than
/// the module's default, so that tests reach the limit cheaply.
pub const FAKE_SNAPSHOTS_PER_DEVICE: u32 = 4;

/// In-memory stand-in for blksnap.ko; see the module docs for its scope.
#[derive(Debug)]
pub struct FakeKernel {
    inner: Mutex<Inner>,
    snapshots_per_device: PerDevice,
}

impl Default for FakeKernel {
    fn default() -> Self {
        FakeKernel {
            inner: Mutex::default(),
            snapshots_per_device: PerDevice::Parameter(FAKE_SNAPSHOTS_PER_DEVICE),
        }
    }
}

impl FakeKernel {
    /// A fake of a module of interface 1.0: one snapshot per device.
    pub fn interface_1_0() -> Self {
        FakeKernel {
            snapshots_per_device: PerDevice::Interface1_0,
            ..FakeKernel::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake kernel lock")
    }

    /// Records a write of `range` bytes to the device open at `f`.
    pub fn write(&self, f: &File, range: Range<u64>) {
        let mut inner = self.lock();
        let t = inner.trackers.get_mut(&key(f)).expect("attached");
        for blk in range.start / BLOCK..range.end.div_ceil(BLOCK) {
            t.write_map[blk as usize] = t.active;
        }
    }

    /// Marks a kernel snapshot corrupted, as an overflow would.
    pub fn corrupt(&self, id: Uuid) {
        self.lock().snapshots.get_mut(&id).expect("snapshot").error = Some(Errno::ENOSPC);
    }

    /// Forgets everything, as a reboot does.
    pub fn reboot(&self) {
        let mut inner = self.lock();
        inner.trackers.clear();
        inner.snapshots.clear();
    }

    /// Ids of the snapshots held.
    pub fn held(&self) -> Vec<Uuid> {
        self.lock().snapshots.keys().copied().collect()
    }
}

fn not_attached(op: &'static str) -> blksnap::Error {
    blksnap::Error::NotAttached { op }
}

impl Kernel for FakeKernel {
    fn snapshots_per_device(&self) -> Result<PerDevice> {
        Ok(self.snapshots_per_device)
    }

    fn attach(&self, dev: &File) -> blksnap::Result<()> {
        let mut inner = self.lock();
        let k = key(dev);
        if inner.trackers.contains_key(&k) {
            return Err(blksnap::Error::AlreadyAttached { op: "attach" });
        }
        let capacity = dev.metadata().map(|m| m.len()).unwrap_or(0);
        let count = capacity.div_ceil(BLOCK) as usize;
        inner.trackers.insert(
            k,
            Tracker {
                capacity,
                write_map: vec![0; count],
                read_map: vec![0; count],
                active: 1,
                previous: 0,
                generation: Uuid::new_v4(),
                snapshots: Vec::new(),
            },
        );
        Ok(())
    }

    fn detach(&self, dev: &File) -> blksnap::Result<()> {
        let mut inner = self.lock();
        match inner.trackers.get(&key(dev)) {
            None => Err(not_attached("detach")),
            Some(t) if !t.snapshots.is_empty() => Err(blksnap::Error::Busy { op: "detach" }),
            Some(_) => {
                inner.trackers.remove(&key(dev));
                Ok(())
            }
        }
    }

    fn cbt_info(&self, dev: &File) -> blksnap::Result<CbtInfo> {
        let inner = self.lock();
        let t = inner
            .trackers
            .get(&key(dev))
            .ok_or_else(|| not_attached("cbtinfo"))?;
        Ok(CbtInfo {
            device_capacity: t.capacity,
            block_size: BLOCK as u32,
            block_count: t.write_map.len() as u32,
            generation_id: t.generation,
            changes_number: t.previous,
        })
    }

    fn cbt_map_all(&self, dev: &File) -> blksnap::Result<Vec<u8>> {
        let inner = self.lock();
        let t = inner
            .trackers
            .get(&key(dev))
            .ok_or_else(|| not_attached("cbtmap"))?;
        Ok(t.read_map.clone())
    }

    fn snapshot_create(&self, _storage: &File, _limit: u64) -> blksnap::Result<SnapshotId> {
        let id = Uuid::new_v4();
        self.lock().snapshots.insert(id, Snap::default());
        Ok(SnapshotId(id))
    }

    fn snapshot_add(&self, id: SnapshotId, dev: &File) -> blksnap::Result<()> {
        let mut inner = self.lock();
        let k = key(dev);
        let full = match inner.trackers.get(&k) {
            None => return Err(not_attached("snapshot_add")),
            Some(t) => t.snapshots.len() >= self.snapshots_per_device.count() as usize,
        };
        let snap = inner
            .snapshots
            .get_mut(&id.0)
            .ok_or(blksnap::Error::NoSuchSnapshot {
                op: "snapshot_add",
                id,
            })?;
        if full || snap.taken || snap.devices.contains(&k) {
            return Err(blksnap::Error::Busy { op: "snapshot_add" });
        }
        snap.devices.push(k);
        inner
            .trackers
            .get_mut(&k)
            .expect("tracker")
            .snapshots
            .push(id.0);
        Ok(())
    }

    fn snapshot_take(&self, id: SnapshotId) -> blksnap::Result<()> {
        let mut inner = self.lock();
        let devices = {
            let snap = inner
                .snapshots
                .get_mut(&id.0)
                .ok_or(blksnap::Error::NoSuchSnapshot {
                    op: "snapshot_take",
                    id,
                })?;
            snap.taken = true;
            snap.devices.clone()
        };
        for k in devices {
            let t = inner.trackers.get_mut(&k).expect("tracker");
            if t.active == u8::MAX {
                t.write_map.iter_mut().for_each(|b| *b = 0);
                t.active = 1;
                t.generation = Uuid::new_v4();
            }
            t.read_map = t.write_map.clone();
            t.previous = t.active;
            t.active += 1;
        }
        Ok(())
    }

    fn snapshot_info_of(&self, id: SnapshotId, dev: &File) -> blksnap::Result<SnapshotInfo> {
        let inner = self.lock();
        let t = inner
            .trackers
            .get(&key(dev))
            .ok_or_else(|| not_attached("snapshot_info_of"))?;
        let snap = t
            .snapshots
            .contains(&id.0)
            .then(|| inner.snapshots.get(&id.0))
            .flatten()
            .ok_or(blksnap::Error::NoSuchSnapshot {
                op: "snapshot_info_of",
                id,
            })?;
        Ok(SnapshotInfo {
            error: snap.error,
            image: snap.taken.then(|| format!("fake-image-{}", id.0.simple())),
        })
    }

    fn snapshot_destroy(&self, id: SnapshotId) -> blksnap::Result<()> {
        let mut inner = self.lock();
        let snap = inner
            .snapshots
            .remove(&id.0)
            .ok_or(blksnap::Error::NoSuchSnapshot {
                op: "snapshot_destroy",
                id,
            })?;
        for k in snap.devices {
            if let Some(t) = inner.trackers.get_mut(&k) {
                t.snapshots.retain(|s| *s != id.0);
            }
        }
        Ok(())
    }

    fn snapshot_collect(&self) -> blksnap::Result<Vec<SnapshotId>> {
        Ok(self
            .lock()
            .snapshots
            .keys()
            .map(|u| SnapshotId(*u))
            .collect())
    }

    fn wait_event(&self, id: SnapshotId, timeout: Duration) -> blksnap::Result<Option<Event>> {
        if !self.lock().snapshots.contains_key(&id.0) {
            return Err(blksnap::Error::NoSuchSnapshot {
                op: "wait_event",
                id,
            });
        }
        std::thread::sleep(timeout.min(Duration::from_millis(20)));
        Ok(None)
    }
}

/// Sparse files as "devices", for the RPC contract tests only.
#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    fn path(&self, vol: &VolumeRecord) -> PathBuf {
        self.dir.join(&vol.location)
    }
}

impl Backend for FileBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pool
    }

    fn create(&self, local: &str, size: u64, _taken: &BTreeSet<String>) -> Result<Provisioned> {
        if size > 1 << 40 {
            return Err(Error::Exhausted("test pool holds 1 TiB".into()));
        }
        let capacity = size.div_ceil(BLOCK) * BLOCK;
        let location = format!("{local}.img");
        let p = self.dir.join(&location);
        let f = File::create_new(&p).map_err(|e| Error::io("create", &p, e))?;
        f.set_len(capacity)
            .map_err(|e| Error::io("truncate", &p, e))?;
        Ok(Provisioned { location, capacity })
    }

    fn delete(&self, vol: &VolumeRecord) -> Result<()> {
        let _ = std::fs::remove_file(self.path(vol));
        Ok(())
    }

    fn deletes_slowly(&self) -> bool {
        false
    }

    fn device(&self, vol: &VolumeRecord) -> Result<PathBuf> {
        let p = self.path(vol);
        if p.exists() {
            Ok(p)
        } else {
            Err(Error::not_found("backing file", p.display().to_string()))
        }
    }

    fn expand(&self, vol: &VolumeRecord, size: u64) -> Result<u64> {
        let p = self.path(vol);
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| Error::io("open", &p, e))?;
        f.set_len(size).map_err(|e| Error::io("truncate", &p, e))?;
        Ok(size)
    }

    fn allocated(&self, vol: &VolumeRecord) -> Result<Option<Vec<Range<u64>>>> {
        let p = self.path(vol);
        let f = File::open(&p).map_err(|e| Error::io("open", &p, e))?;
        file_pool::extents(&f, &p).map(Some)
    }

    fn zeroed_on_create(&self) -> bool {
        true
    }

    fn available(&self, _taken: &BTreeSet<String>) -> Result<u64> {
        Ok(1 << 40)
    }
}

/// A plugin over the fakes in a fresh temporary directory, and its
/// services.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub kernel: Arc<FakeKernel>,
    pub plugin: Arc<Plugin>,
    pub controller: ControllerService,
    pub groups: GroupControllerService,
    pub metadata: SnapshotMetadataService,
    pub node: NodeService,
}

/// This node's name in the tests.
pub const NODE: &str = "node-a";

impl Env {
    pub fn new() -> Self {
        Self::over(FakeKernel::default())
    }

    /// A plugin over `kernel`, in a fresh directory.
    pub fn over(kernel: FakeKernel) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::with(dir, Arc::new(kernel))
    }

    /// A plugin over an existing directory and kernel (a restart).
    pub fn with(dir: tempfile::TempDir, kernel: Arc<FakeKernel>) -> Self {
        for d in ["state", "pool", "diff"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        let backend: Arc<dyn Backend> = Arc::new(FileBackend {
            dir: dir.path().join("pool"),
        });
        let plugin = Plugin::start(
            Settings {
                node_id: NODE.into(),
                storage_dir: dir.path().join("diff"),
                default_storage_percent: 50,
                default_backend: BackendKind::Pool,
                collect_orphans: true,
            },
            Arc::clone(&kernel) as Arc<dyn Kernel>,
            vec![backend],
            &dir.path().join("state"),
        )
        .expect("plugin");
        Env {
            controller: ControllerService::new(Arc::clone(&plugin)),
            groups: GroupControllerService::new(Arc::clone(&plugin)),
            metadata: SnapshotMetadataService::new(Arc::clone(&plugin)),
            node: NodeService::new(Arc::clone(&plugin), 0, dir.path()).expect("node service"),
            dir,
            kernel,
            plugin,
        }
    }

    /// Restarts the plugin on the same state and kernel.
    pub fn restart(self) -> Self {
        let Env { dir, kernel, .. } = self;
        Self::with(dir, kernel)
    }

    /// Opens a volume's fake device.
    pub fn device(&self, volume_id: &str) -> File {
        let id = volume_id.parse().expect("volume id");
        let vol = self.plugin.volume(&id).expect("volume");
        let p = self.plugin.device_of(&vol).expect("device");
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .expect("open device")
    }

    /// Writes `range` to a volume's fake device: data in the file, marks
    /// in the fake change map.
    pub fn write(&self, volume_id: &str, range: Range<u64>) {
        use std::os::unix::fs::FileExt;
        let f = self.device(volume_id);
        f.write_all_at(&vec![0xab; (range.end - range.start) as usize], range.start)
            .expect("write");
        self.kernel.write(&f, range);
    }
}
