//! [`Plugin`]: the node's volumes and snapshots, and the kernel under them.
//!
//! Every operation is synchronous (ioctls, file copies, fsyncs); the gRPC
//! services run them on tokio's blocking pool. Operations take their
//! [`guard`](crate::guard) first, change the kernel, and record the outcome
//! through [`State`] last, so the records never claim what the kernel has
//! not done. Volume operations live in `volumes.rs`, snapshot operations
//! and change-block metadata in `snapshots.rs`, start-up recovery and the
//! kernel event watchers here.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use blksnap::Event;
use nix::errno::Errno;
use uuid::Uuid;

use crate::backend::Backend;
use crate::guard::Locks;
use crate::kernel::{Kernel, PerDevice};
use crate::metrics::Metrics;
use crate::state::{
    group_key, BackendKind, FsStore, GroupRecord, Lost, LostReason, SnapshotRecord, State,
    VolumeRecord,
};
use crate::{Error, Result};
use blksnap_node_api::ids::VolumeId;

mod snapshots;
mod storages;
mod volumes;

pub use snapshots::{MetadataPage, SnapshotFilter};
pub use volumes::CreateVolume;

/// How long one wait for a kernel event lasts before the watcher checks
/// whether its snapshot still exists.
const EVENT_WAIT: Duration = Duration::from_secs(2);

/// Node-wide settings of the plugin.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name; part of every id.
    pub node_id: String,
    /// Directory for the snapshots' `O_TMPFILE` difference storage.
    pub storage_dir: PathBuf,
    /// Storage limit, in percent of the snapshotted volumes' size, when the
    /// snapshot class says nothing.
    pub default_storage_percent: u64,
    /// Backend of volumes whose StorageClass names none.
    pub default_backend: BackendKind,
    /// Destroy kernel snapshots that no record references at start-up.
    pub collect_orphans: bool,
}

/// The node's volumes and snapshots.
pub struct Plugin {
    pub settings: Settings,
    kernel: Arc<dyn Kernel>,
    backends: BTreeMap<BackendKind, Arc<dyn Backend>>,
    pub state: State,
    pub locks: Locks,
    /// How many snapshots the module keeps of one device, read at start
    /// (the module cannot be reloaded while this process holds its
    /// control device).
    snapshots_per_device: PerDevice,
    pub metrics: Arc<Metrics>,
    /// Difference storage of the snapshots this process took, for the
    /// storage gauges (an unnamed file cannot be found again after a
    /// restart).
    storages: Mutex<storages::Storages>,
    /// Held from choosing a new volume's storage until its record is
    /// written, so that two creations never pick the same location.
    placement: Mutex<()>,
    /// Kernel snapshots a delete is destroying: from before the destroy
    /// until their records are removed, their absence from the kernel is
    /// that delete, not a loss (see `Deleting`).
    deleting: Mutex<HashSet<Uuid>>,
}

/// Marks a kernel snapshot as being deleted until dropped, so that a check
/// racing the delete (a listing, the reconciler's GetSnapshot) does not
/// record the snapshot it no longer finds as lost.
pub(crate) struct Deleting<'a> {
    plugin: &'a Plugin,
    kernel: Uuid,
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        self.plugin
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.kernel);
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("settings", &self.settings)
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Seconds and nanoseconds since the epoch.
pub(crate) fn now() -> (i64, i32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

/// Why a snapshot whose copy-on-write failed with `errno` is lost.
fn corrupted(errno: Errno) -> (LostReason, String) {
    if errno == Errno::ENOSPC {
        (
            LostReason::Overflow,
            "the difference storage overflowed".to_owned(),
        )
    } else {
        (
            LostReason::IoError,
            format!("copy-on-write failed: {errno}"),
        )
    }
}

/// What the kernel holds of a snapshot record on its volume's device.
enum Held {
    /// The image of the record's snapshot.
    Image(PathBuf),
    /// The record's snapshot is gone or unreadable.
    Lost(LostReason, String),
}

/// The page a List call asks for: the records after the key its
/// `starting_token` names (the last key of the page before, so a record
/// deleted in between does not spoil the token), at most `max_entries`
/// of them (0: all).
pub(crate) struct Paging {
    after: Option<String>,
    max: usize,
}

impl Paging {
    /// Checks the request's paging fields; `valid_key` tells a key of the
    /// listed table, so a token this plugin did not hand out is refused.
    pub(crate) fn new(
        max_entries: i32,
        starting_token: &str,
        valid_key: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let max = match usize::try_from(max_entries) {
            Ok(0) => usize::MAX,
            Ok(n) => n,
            Err(_) => return Err(Error::invalid("max_entries", "must not be negative")),
        };
        if starting_token.is_empty() {
            return Ok(Paging { after: None, max });
        }
        let key = URL_SAFE_NO_PAD
            .decode(starting_token)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|key| valid_key(key))
            .ok_or_else(|| Error::BadToken(starting_token.to_owned()))?;
        Ok(Paging {
            after: Some(key),
            max,
        })
    }

    /// The page of `items`, which are in key order, and the token of the
    /// next page (empty after the last).
    pub(crate) fn apply<T>(
        &self,
        mut items: Vec<T>,
        key: impl Fn(&T) -> String,
    ) -> (Vec<T>, String) {
        if let Some(after) = &self.after {
            items.retain(|i| key(i) > *after);
        }
        let more = items.len() > self.max;
        items.truncate(self.max);
        let next = match (more, items.last()) {
            (true, Some(last)) => URL_SAFE_NO_PAD.encode(key(last)),
            _ => String::new(),
        };
        (items, next)
    }
}

/// Opens a block device for the kernel commands and I/O.
pub(crate) fn open_device(path: &std::path::Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

impl Plugin {
    /// A plugin ready to serve: the records in `state_dir` loaded, and
    /// brought in line with `kernel` and `backends` (see `recover`).
    pub fn start(
        settings: Settings,
        kernel: Arc<dyn Kernel>,
        backends: Vec<Arc<dyn Backend>>,
        state_dir: &Path,
    ) -> Result<Arc<Self>> {
        let state = State::load(Box::new(FsStore::open(state_dir)?))?;
        let plugin = Arc::new(Plugin::new(settings, kernel, backends, state)?);
        plugin.recover()?;
        Ok(plugin)
    }

    fn new(
        settings: Settings,
        kernel: Arc<dyn Kernel>,
        backends: Vec<Arc<dyn Backend>>,
        state: State,
    ) -> Result<Self> {
        blksnap_node_api::ids::check_node(&settings.node_id)?;
        let backends: BTreeMap<_, _> = backends.into_iter().map(|b| (b.kind(), b)).collect();
        if backends.is_empty() {
            return Err(Error::Config(
                "no volume backend: give a pool directory or static devices".into(),
            ));
        }
        let snapshots_per_device = kernel.snapshots_per_device()?;
        tracing::info!(
            count = snapshots_per_device.count(),
            set_by = snapshots_per_device.source(),
            "snapshots the module keeps of one volume"
        );
        Ok(Plugin {
            settings,
            snapshots_per_device,
            kernel,
            backends,
            state,
            locks: Locks::new(),
            metrics: Arc::new(Metrics::new()),
            storages: Mutex::new(storages::Storages::default()),
            placement: Mutex::new(()),
            deleting: Mutex::new(HashSet::new()),
        })
    }

    /// The backend of `kind`.
    pub(crate) fn backend(&self, kind: BackendKind) -> Result<&Arc<dyn Backend>> {
        self.backends.get(&kind).ok_or_else(|| {
            Error::invalid(
                "parameters",
                format!("backend {:?} is not configured on this node", kind.name()),
            )
        })
    }

    /// Bytes a new volume of `kind` (the default backend if `None`) may
    /// still get on this node: none if the node does not have that backend,
    /// which is an answer rather than an error because capacity tracking
    /// asks every node about every StorageClass.
    pub fn available(&self, kind: Option<BackendKind>) -> Result<u64> {
        let kind = kind.unwrap_or(self.settings.default_backend);
        match self.backends.get(&kind) {
            Some(backend) => backend.available(&self.taken(kind)),
            None => Ok(0),
        }
    }

    /// Locations of the recorded volumes of backend `kind`.
    fn taken(&self, kind: BackendKind) -> BTreeSet<String> {
        self.state.read(|t| {
            t.volumes
                .values()
                .filter(|v| v.backend == kind)
                .map(|v| v.location.clone())
                .collect()
        })
    }

    /// Makes the storage of new volume `vol` (at least `size` bytes), sets
    /// its location and capacity and writes its record, under one lock: a
    /// location is taken from the moment it is chosen.
    pub(crate) fn place_volume(&self, mut vol: VolumeRecord, size: u64) -> Result<VolumeRecord> {
        let backend = self.backend(vol.backend)?;
        let _placing = self.placement.lock().unwrap_or_else(|p| p.into_inner());
        let made = backend.create(&vol.local, size, &self.taken(vol.backend))?;
        vol.location = made.location;
        vol.capacity = made.capacity;
        if let Err(e) = self.state.put(&vol) {
            if let Err(cleanup) = backend.delete(&vol) {
                tracing::error!(volume = %vol.local, error = %cleanup, "storage of an unrecorded volume not removed");
            }
            return Err(e);
        }
        Ok(vol)
    }

    /// Releases the storage of a volume that is gone (its tracking
    /// detached), then its record. A backend that deletes slowly (zeroes a
    /// device) does it on a thread of its own while the record, marked
    /// `zeroing`, keeps the storage taken; a failure leaves the mark for
    /// the next start to try again.
    pub(crate) fn release(self: &Arc<Self>, vol: &VolumeRecord) -> Result<()> {
        let backend = Arc::clone(self.backend(vol.backend)?);
        if !backend.deletes_slowly() {
            backend.delete(vol)?;
            return self.state.remove::<VolumeRecord>(&vol.key());
        }
        let mut vol = vol.clone();
        if !vol.zeroing {
            vol.zeroing = true;
            self.state.put(&vol)?;
        }
        let plugin = Arc::clone(self);
        let name = format!("zero-{}", vol.local);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            tracing::info!(volume = %vol.local, device = %vol.location, "zeroing the device of a deleted volume");
            let done = backend
                .delete(&vol)
                .and_then(|()| plugin.state.remove::<VolumeRecord>(&vol.key()));
            match done {
                Ok(()) => tracing::info!(volume = %vol.local, device = %vol.location, "device zeroed and free"),
                Err(e) => tracing::error!(volume = %vol.local, device = %vol.location, error = %e,
                    "device not zeroed; it stays taken until a restart zeroes it"),
            }
        });
        spawned
            .map(drop)
            .map_err(|e| Error::io("start", "zeroing thread", e))
    }

    pub(crate) fn kernel(&self) -> &dyn Kernel {
        self.kernel.as_ref()
    }

    /// Whether the kernel module answers commands.
    pub fn kernel_alive(&self) -> bool {
        self.kernel.snapshot_collect().is_ok()
    }

    /// Refuses an id of another node in a request that must name this one's.
    pub(crate) fn check_own_node(&self, field: &'static str, what: &str, node: &str) -> Result<()> {
        if node == self.settings.node_id {
            return Ok(());
        }
        Err(Error::invalid(
            field,
            format!("{what} of node {node}, this is {}", self.settings.node_id),
        ))
    }

    /// The record of the volume `id` names, which must be on this node.
    pub fn volume(&self, id: &VolumeId) -> Result<VolumeRecord> {
        if id.node != self.settings.node_id {
            return Err(Error::not_found("volume", id.to_string()));
        }
        self.state
            .read(|t| t.volumes.get(&id.local).filter(|v| !v.zeroing).cloned())
            .ok_or_else(|| Error::not_found("volume", id.to_string()))
    }

    /// The id of a volume record.
    pub fn volume_id(&self, vol: &VolumeRecord) -> VolumeId {
        VolumeId {
            local: vol.local.clone(),
            node: self.settings.node_id.clone(),
        }
    }

    /// The byte ranges `vol`'s backend has allocated (the whole volume when
    /// the backend cannot tell).
    pub fn backend_allocated(&self, vol: &VolumeRecord) -> Result<Vec<std::ops::Range<u64>>> {
        Ok(self
            .backend(vol.backend)?
            .allocated(vol)?
            .unwrap_or_else(|| crate::state::whole(vol.capacity)))
    }

    /// The block device of `vol`, bound if needed.
    pub fn device_of(&self, vol: &VolumeRecord) -> Result<PathBuf> {
        self.backend(vol.backend)?.device(vol)
    }

    /// Brings the records in line with the kernel after a start: undoes
    /// volumes whose creation did not finish, binds and tracks every
    /// other volume again, marks the snapshots the kernel no
    /// longer holds (or reports corrupted) as lost, destroys orphaned
    /// kernel snapshots if so configured, and starts the event watchers.
    fn recover(self: &Arc<Self>) -> Result<()> {
        let volumes: Vec<VolumeRecord> = self.state.read(|t| t.volumes.values().cloned().collect());
        let (zeroing, volumes): (Vec<_>, Vec<_>) = volumes.into_iter().partition(|v| v.zeroing);
        for vol in zeroing {
            if let Err(e) = self.release(&vol) {
                tracing::error!(volume = %vol.local, error = %e, "zeroing not resumed");
            }
        }
        let (unfinished, volumes): (Vec<_>, Vec<_>) = volumes.into_iter().partition(|v| v.creating);
        for vol in unfinished {
            tracing::warn!(volume = %vol.local, name = %vol.name, "undoing a volume whose creation did not finish");
            if let Err(e) = self.undo_volume(&vol) {
                tracing::error!(volume = %vol.local, error = %e, "unfinished volume not undone");
            }
        }
        for vol in volumes {
            if let Err(e) = self.track(&vol) {
                tracing::error!(volume = %vol.local, error = %e, "volume could not be tracked again");
            }
        }

        // A group take commits with its group record, written after its
        // members' (and removed before them by a delete): members without
        // it are a CreateVolumeGroupSnapshot that never answered, or a
        // delete cut short. Undone: one member's DeleteSnapshot would
        // otherwise destroy what the others name, and a retried create
        // makes the group anew.
        let unfinished: BTreeMap<Uuid, Vec<String>> = self.state.read(|t| {
            let mut groups: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
            for s in t.snapshots.values() {
                if let Some(g) = s.group.filter(|g| !t.groups.contains_key(&group_key(*g))) {
                    groups.entry(g).or_default().push(s.key());
                }
            }
            groups
        });
        for (kernel, keys) in unfinished {
            tracing::warn!(kernel_snapshot = %kernel, "undoing a group snapshot whose creation or deletion did not finish");
            let undone = self.destroy_kernel(kernel).and_then(|()| {
                keys.iter()
                    .try_for_each(|k| self.state.remove::<SnapshotRecord>(k))
            });
            if let Err(e) = undone {
                tracing::error!(kernel_snapshot = %kernel, error = %e, "unfinished group snapshot not undone");
            }
        }

        let held: BTreeSet<Uuid> = self
            .kernel
            .snapshot_collect()?
            .into_iter()
            .map(|id| id.0)
            .collect();
        let records: Vec<SnapshotRecord> =
            self.state.read(|t| t.snapshots.values().cloned().collect());
        let mut referenced = BTreeSet::new();
        for rec in records {
            referenced.insert(rec.kernel);
            if rec.lost.is_some() {
                continue;
            }
            if held.contains(&rec.kernel) {
                self.checked(rec);
            } else if let Err(e) = self.mark_lost(
                rec.kernel,
                LostReason::KernelForgot,
                "the kernel no longer holds it (node rebooted or module reloaded)",
            ) {
                tracing::error!(snapshot = %self.snapshot_id(&rec), error = %e, "loss not recorded");
            }
        }
        for id in held.difference(&referenced) {
            if self.settings.collect_orphans {
                tracing::warn!(kernel_snapshot = %id, "destroying a kernel snapshot no record references");
                if let Err(e) = self.destroy_kernel(*id) {
                    tracing::error!(kernel_snapshot = %id, error = %e, "orphan not destroyed");
                }
            } else {
                tracing::warn!(kernel_snapshot = %id, "kernel snapshot no record references (left alone)");
            }
        }
        // A group whose members are all gone was half deleted.
        let groups: Vec<GroupRecord> = self.state.read(|t| t.groups.values().cloned().collect());
        for g in groups {
            let any = self
                .state
                .read(|t| t.snapshots.values().any(|s| s.group == Some(g.kernel)));
            if !any {
                self.state.remove::<GroupRecord>(&g.key())?;
            }
        }
        let kernels: BTreeSet<Uuid> = self.state.read(|t| {
            t.snapshots
                .values()
                .filter(|s| s.lost.is_none())
                .map(|s| s.kernel)
                .collect()
        });
        for k in kernels {
            self.watch(k);
        }
        self.update_gauges();
        Ok(())
    }

    /// Attaches change tracking to `dev`; a tracker already attached is
    /// kept.
    pub(crate) fn attach(&self, dev: &File) -> Result<()> {
        match self.kernel.attach(dev) {
            Ok(()) | Err(blksnap::Error::AlreadyAttached { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Detaches change tracking from `dev`; none attached is fine. A
    /// device in a kernel snapshot keeps its tracker.
    pub(crate) fn detach(&self, dev: &File) -> Result<()> {
        match self.kernel.detach(dev) {
            Ok(()) | Err(blksnap::Error::NotAttached { .. }) => Ok(()),
            Err(blksnap::Error::Busy { .. }) => Err(Error::Precondition(
                "the volume is in a kernel snapshot".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Binds the volume's device and attaches change tracking; a tracker
    /// already attached (a plugin restart without a reboot) is kept. A new
    /// tracker starts a new generation, so the volume's full history is
    /// known no more.
    pub(crate) fn track(&self, vol: &VolumeRecord) -> Result<()> {
        let path = self.device_of(vol)?;
        let dev = open_device(&path)?;
        self.attach(&dev)?;
        let info = self.kernel.cbt_info(&dev)?;
        if vol.full_history.is_some() && vol.full_history != Some(info.generation_id) {
            let mut v = vol.clone();
            v.full_history = None;
            self.state.put(&v)?;
        }
        Ok(())
    }

    /// What the kernel holds of `rec` on `dev`: asked by the record's own
    /// kernel id, since the device may be in several snapshots.
    fn held(&self, rec: &SnapshotRecord, dev: &File) -> Result<Held> {
        let forgot = |detail: &str| Ok(Held::Lost(LostReason::KernelForgot, detail.to_owned()));
        let info = match self
            .kernel
            .snapshot_info_of(blksnap::SnapshotId(rec.kernel), dev)
        {
            Ok(i) => i,
            Err(blksnap::Error::NotAttached { .. }) => {
                return forgot("the volume is no longer tracked")
            }
            Err(blksnap::Error::NoSuchSnapshot { .. }) => {
                return forgot("the kernel no longer holds it")
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(errno) = info.error {
            let (reason, detail) = corrupted(errno);
            return Ok(Held::Lost(reason, detail));
        }
        match info.image_path() {
            Some(path) => Ok(Held::Image(path)),
            None => forgot("the kernel no longer holds its image"),
        }
    }

    /// Checks `rec`'s snapshot with the kernel and records it as lost if
    /// it is gone or unreadable; `None` for a record whose volume is gone
    /// (a lost snapshot outlives its volume).
    fn check_held(&self, rec: &SnapshotRecord) -> Result<Option<Held>> {
        let Some(vol) = self.state.read(|t| t.volumes.get(&rec.volume).cloned()) else {
            return Ok(None);
        };
        let dev = open_device(&self.device_of(&vol)?)?;
        let held = self.held(rec, &dev)?;
        if let Held::Lost(reason, detail) = &held {
            self.mark_lost(rec.kernel, *reason, detail)?;
        }
        Ok(Some(held))
    }

    /// Checks a held snapshot with the kernel (see `check_held`) and
    /// returns the record as it is now.
    pub(crate) fn refresh(&self, rec: SnapshotRecord) -> Result<SnapshotRecord> {
        if rec.lost.is_some() {
            return Ok(rec);
        }
        let Some(Held::Lost(..)) = self.check_held(&rec)? else {
            return Ok(rec);
        };
        let key = rec.key();
        Ok(self
            .state
            .read(|t| t.snapshots.get(&key).cloned())
            .unwrap_or(rec))
    }

    /// Path of the image of a held snapshot: the record's own, never that
    /// of another snapshot of the volume.
    pub(crate) fn image_of(&self, rec: &SnapshotRecord) -> Result<PathBuf> {
        let id = self.snapshot_id(rec).to_string();
        match self.check_held(rec)? {
            Some(Held::Image(path)) => Ok(path),
            Some(Held::Lost(reason, detail)) => {
                Err(Error::Precondition(Lost { reason, detail }.message(&id)))
            }
            None => Err(Error::Precondition(format!(
                "the volume of snapshot {id} is gone"
            ))),
        }
    }

    /// Marks kernel snapshot `kernel` as being deleted until the result is
    /// dropped; taken before the destroy, dropped after the records go.
    pub(crate) fn deleting(&self, kernel: Uuid) -> Deleting<'_> {
        self.deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kernel);
        Deleting {
            plugin: self,
            kernel,
        }
    }

    /// Records every snapshot of kernel snapshot `kernel` as lost, unless
    /// a delete is under way: called after the kernel answered, so a
    /// snapshot that answer missed because the delete destroyed it is
    /// still marked as being deleted here, or its record is gone already
    /// (and `update` does not write it back).
    pub(crate) fn mark_lost(&self, kernel: Uuid, reason: LostReason, detail: &str) -> Result<()> {
        if self
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&kernel)
        {
            tracing::debug!(kernel_snapshot = %kernel, "not lost: being deleted");
            return Ok(());
        }
        let members: Vec<String> = self.state.read(|t| {
            t.snapshots
                .values()
                .filter(|s| s.kernel == kernel && s.lost.is_none())
                .map(SnapshotRecord::key)
                .collect()
        });
        for key in members {
            let marked = self.state.update(&key, |rec: &SnapshotRecord| {
                rec.lost.is_none().then(|| SnapshotRecord {
                    lost: Some(Lost {
                        reason,
                        detail: detail.to_owned(),
                    }),
                    ..rec.clone()
                })
            })?;
            if marked {
                tracing::warn!(kernel_snapshot = %kernel, snapshot = key, reason = reason.as_str(), detail, "snapshot lost");
            }
        }
        self.forget_storage(kernel);
        self.update_gauges();
        Ok(())
    }

    /// Kernel snapshot `kernel` is gone: its storage stops counting once
    /// no older held snapshot may read it (`storages`).
    pub(crate) fn forget_storage(&self, kernel: Uuid) {
        self.storages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .destroyed(kernel, |f| crate::storage::used_bytes(f).ok());
        self.sample_storage();
    }

    /// The storage of kernel snapshot `kernel`, just taken of `volumes`.
    pub(crate) fn keep_storage(&self, kernel: Uuid, file: File, limit: u64, volumes: Vec<String>) {
        self.storages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .taken(kernel, file, limit, volumes);
        self.sample_storage();
    }

    /// Sets the storage gauges: node totals (labels per snapshot would
    /// grow without bound).
    fn sample_storage(&self) {
        let (used, limit) = self
            .storages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .totals(|f| crate::storage::used_bytes(f).ok());
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.storage_used.set(gauge(used));
        self.metrics.storage_limit.set(gauge(limit));
    }

    pub(crate) fn update_gauges(&self) {
        let (held, lost) = self.state.read(|t| {
            let held: BTreeSet<Uuid> = t
                .snapshots
                .values()
                .filter(|s| s.lost.is_none())
                .map(|s| s.kernel)
                .collect();
            let lost = t.snapshots.values().filter(|s| s.lost.is_some()).count();
            (held.len(), lost)
        });
        self.metrics.snapshots_held.set(held as i64);
        self.metrics.snapshots_lost.set(lost as i64);
    }

    fn is_held(&self, kernel: Uuid) -> bool {
        self.state.read(|t| {
            t.snapshots
                .values()
                .any(|s| s.kernel == kernel && s.lost.is_none())
        })
    }

    /// Follows the kernel's events of a held snapshot on a thread of its
    /// own (the wait is a blocking ioctl) until the snapshot is released
    /// or lost.
    pub(crate) fn watch(self: &Arc<Self>, kernel: Uuid) {
        let plugin = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("events-{}", &kernel.simple().to_string()[..8]))
            .spawn(move || plugin.watch_loop(kernel));
        if let Err(e) = spawned {
            tracing::error!(kernel_snapshot = %kernel, error = %e, "cannot start the event watcher");
        }
    }

    fn watch_loop(&self, kernel: Uuid) {
        let id = blksnap::SnapshotId(kernel);
        while self.is_held(kernel) {
            self.sample_storage();
            match self.kernel.wait_event(id, EVENT_WAIT) {
                Ok(None) => {}
                Ok(Some(Event::Corrupted { errno, .. })) => {
                    self.metrics.overflow_events.inc();
                    let (reason, detail) = corrupted(errno);
                    if let Err(e) = self.mark_lost(kernel, reason, &detail) {
                        tracing::error!(kernel_snapshot = %kernel, error = %e, "cannot record the loss");
                    }
                    return;
                }
                Ok(Some(Event::LowSpace {
                    free_sectors,
                    limit_sectors,
                })) => {
                    self.metrics.low_space_events.inc();
                    tracing::warn!(kernel_snapshot = %kernel, free_bytes = free_sectors * 512,
                        limit_bytes = limit_sectors * 512, "difference storage is running out");
                }
                Ok(Some(Event::Unknown { code })) => {
                    tracing::info!(kernel_snapshot = %kernel, code, "unknown kernel event");
                }
                Err(blksnap::Error::NoSuchSnapshot { .. }) => return,
                Err(e) => {
                    tracing::warn!(kernel_snapshot = %kernel, error = %e, "waiting for events failed");
                    std::thread::sleep(EVENT_WAIT);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::kernel::Kernel;
    use crate::plugin::CreateVolume;
    use crate::state::LostReason;
    use crate::storage::PARAM_LIMIT;
    use crate::testing::Env;

    fn pvc(p: &std::sync::Arc<super::Plugin>) -> crate::state::VolumeRecord {
        p.create_volume(&CreateVolume {
            name: "pvc".into(),
            required: 1 << 20,
            limit: 0,
            backend: None,
            source: None,
        })
        .expect("volume")
    }

    fn snapshot_of_a_pvc(p: &std::sync::Arc<super::Plugin>) -> crate::state::SnapshotRecord {
        let vol = pvc(p);
        p.create_snapshot("s", &p.volume_id(&vol), &HashMap::new())
            .expect("snapshot")
    }

    #[test]
    fn a_restart_matches_each_snapshot_of_a_volume_to_its_own_kernel_snapshot() {
        let env = Env::new();
        let p = &env.plugin;
        let vol = pvc(p);
        let snaps: Vec<_> = ["s0", "s1", "s2", "s3"]
            .iter()
            .map(|n| {
                p.create_snapshot(n, &p.volume_id(&vol), &HashMap::new())
                    .expect("snapshot")
            })
            .collect();
        // While the plugin is down: one is destroyed (an operator), one
        // overflows; the newest and the oldest stay sound.
        env.kernel
            .snapshot_destroy(blksnap::SnapshotId(snaps[1].kernel))
            .expect("destroy");
        env.kernel.corrupt(snaps[2].kernel);
        let env = env.restart();
        let p = &env.plugin;
        let (list, _) = p.list_snapshots(&Default::default()).expect("list");
        let state = |kernel| {
            list.iter()
                .find(|r| r.kernel == kernel)
                .expect("listed")
                .lost
                .as_ref()
                .map(|l| l.reason)
        };
        assert_eq!(state(snaps[0].kernel), None);
        assert_eq!(state(snaps[1].kernel), Some(LostReason::KernelForgot));
        assert_eq!(state(snaps[2].kernel), Some(LostReason::Overflow));
        assert_eq!(state(snaps[3].kernel), None);
        // The sound ones stay servable, each by its own id.
        for s in [&snaps[0], &snaps[3]] {
            let id = p.snapshot_id(s).to_string();
            p.metadata_allocated(&id, 0).expect("allocated");
        }
        let delta = p
            .metadata_delta(
                &p.snapshot_id(&snaps[0]).to_string(),
                &p.snapshot_id(&snaps[3]).to_string(),
                0,
            )
            .expect("delta between the two left");
        assert!(delta.ranges.is_empty(), "nothing written between");
    }

    #[test]
    fn storage_gauges_are_node_totals_never_labelled_by_snapshot() {
        let env = Env::new();
        let p = &env.plugin;
        let params = HashMap::from([(PARAM_LIMIT.to_owned(), "64Mi".to_owned())]);
        let mut snaps = Vec::new();
        for name in ["a", "b"] {
            let vol = p
                .create_volume(&CreateVolume {
                    name: name.into(),
                    required: 1 << 20,
                    limit: 0,
                    backend: None,
                    source: None,
                })
                .expect("volume");
            let s = p
                .create_snapshot(name, &p.volume_id(&vol), &params)
                .expect("snapshot");
            snaps.push(p.snapshot_id(&s).to_string());
        }
        let text = p.metrics.encode();
        assert!(
            text.contains("blksnap_csi_snapshot_storage_limit_bytes 134217728"),
            "{text}"
        );
        assert!(
            text.contains("blksnap_csi_snapshot_storage_used_bytes 0"),
            "{text}"
        );
        assert!(!text.contains("snapshot=\""), "{text}");
        p.delete_snapshot(&snaps[0]).expect("delete");
        let text = p.metrics.encode();
        assert!(
            text.contains("blksnap_csi_snapshot_storage_limit_bytes 67108864"),
            "{text}"
        );
    }

    /// A delete destroys the kernel snapshot, then removes its record; a
    /// listing in between (the reconciler asks all the time) found a record
    /// without its kernel snapshot and recorded it lost (seen in tests/e2e:
    /// false losses, and a lost record could be written back after the
    /// delete removed it).
    #[test]
    fn a_snapshot_a_delete_is_destroying_is_not_recorded_lost() {
        let env = Env::new();
        let p = &env.plugin;
        let snap = snapshot_of_a_pvc(p);
        let lost = || {
            let (list, _) = p.list_snapshots(&Default::default()).expect("list");
            list.iter()
                .find(|r| r.kernel == snap.kernel)
                .and_then(|r| r.lost.as_ref().map(|l| l.reason))
        };
        // The state between a delete's destroy and its record's removal.
        let deleting = p.deleting(snap.kernel);
        env.kernel
            .snapshot_destroy(blksnap::SnapshotId(snap.kernel))
            .expect("destroy");
        assert_eq!(lost(), None);
        // Without a delete under way, the same absence is a loss.
        drop(deleting);
        assert_eq!(lost(), Some(LostReason::KernelForgot));
    }

    #[test]
    fn an_update_never_writes_back_a_removed_record() {
        let env = Env::new();
        let p = &env.plugin;
        let snap = snapshot_of_a_pvc(p);
        p.state
            .remove::<crate::state::SnapshotRecord>(&snap.key())
            .expect("remove");
        assert!(!p
            .state
            .update(&snap.key(), |r: &crate::state::SnapshotRecord| Some(
                r.clone()
            ))
            .expect("update"));
        assert!(p.state.read(|t| t.snapshots.is_empty()));
    }
}
