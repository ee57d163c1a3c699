//! Snapshot operations: take (one volume or a group in one kernel
//! snapshot), delete, list, and the change-block metadata of snapshots.
//!
//! A volume may be in as many snapshots at once as the module keeps of one
//! device (its parameter `snapshots_per_device_maximum`, read at start; one
//! on a module of interface 1.0);
//! each record names its own kernel snapshot, and everything read of it
//! (image, state) is asked for by that id. One more snapshot or clone past
//! the limit is [`Error::SnapshotLimit`], a final code: the sidecar would
//! retry RESOURCE_EXHAUSTED without end, and its VolumeSnapshot could not
//! be deleted meanwhile. Deltas do not need the base snapshot to be held:
//! the target's change map, frozen at take and kept in its record, marks
//! every block written since any earlier snapshot number of the same
//! generation.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use uuid::Uuid;

use super::{now, open_device, Paging, Plugin};
use crate::guard::{name_key, snapshot_key, volume_key};
use crate::state::{self, GroupRecord, SnapshotRecord, VolumeRecord};
use crate::{ranges, storage, Error, Result};
use blksnap_node_api::ids::{GroupSnapshotId, SnapshotId, VolumeId};

/// What ListSnapshots asks for.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    pub snapshot_id: String,
    pub source_volume_id: String,
    pub max_entries: i32,
    pub starting_token: String,
}

/// The answer of a metadata call: the volume's capacity at take and the
/// byte ranges, from the (rounded down) starting offset on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataPage {
    pub capacity: u64,
    pub ranges: Vec<Range<u64>>,
}

/// Destroys a kernel snapshot on drop unless disarmed: the rollback of a
/// take that failed half way.
struct Taken<'a> {
    plugin: &'a Plugin,
    id: blksnap::SnapshotId,
    armed: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.plugin.destroy_kernel(self.id.0) {
                tracing::error!(kernel_snapshot = %self.id, error = %e, "rollback: destroy failed");
            }
        }
    }
}

fn map_take_error(e: blksnap::Error) -> Error {
    match e.errno() {
        Some(nix::errno::Errno::ENOSPC) => {
            Error::Exhausted(format!("no space for the difference storage: {e}"))
        }
        _ => Error::Kernel(e),
    }
}

impl Plugin {
    /// The CSI id of a snapshot record.
    pub fn snapshot_id(&self, rec: &SnapshotRecord) -> SnapshotId {
        SnapshotId {
            volume: rec.volume.clone(),
            node: self.settings.node_id.clone(),
            kernel: rec.kernel,
            generation: rec.generation,
            number: rec.number,
        }
    }

    /// The CSI id of a group record.
    pub fn group_id(&self, g: &GroupRecord) -> GroupSnapshotId {
        GroupSnapshotId {
            kernel: g.kernel,
            node: self.settings.node_id.clone(),
        }
    }

    /// The record an id names, if it is this node's and fully matches.
    pub fn snapshot_record(&self, id: &SnapshotId) -> Option<SnapshotRecord> {
        if id.node != self.settings.node_id {
            return None;
        }
        self.state
            .read(|t| {
                t.snapshots
                    .get(&state::snapshot_key(id.kernel, &id.volume))
                    .cloned()
            })
            .filter(|r| r.generation == id.generation && r.number == id.number)
    }

    /// The snapshots of `local` that the kernel holds. A record that claims
    /// so is checked with the kernel first (see `checked`): one whose
    /// kernel snapshot is gone must not keep the volume busy.
    pub(crate) fn held_snapshots_of(&self, local: &str) -> Vec<SnapshotRecord> {
        let claimed: Vec<SnapshotRecord> = self.state.read(|t| {
            t.snapshots
                .values()
                .filter(|s| s.volume == local && s.lost.is_none())
                .cloned()
                .collect()
        });
        claimed
            .into_iter()
            .map(|s| self.checked(s))
            .filter(|s| s.lost.is_none())
            .collect()
    }

    /// The answer to one more snapshot of `vol` past the module's limit.
    fn snapshot_limit(&self, vol: &VolumeRecord) -> Error {
        Error::SnapshotLimit {
            volume: self.volume_id(vol).to_string(),
            limit: self.snapshots_per_device,
        }
    }

    /// Releases the kernel snapshots of `local`'s lost snapshots: an
    /// overflowed snapshot stays in the kernel (corrupted) and keeps the
    /// device busy until destroyed. The records stay, not ready, until
    /// DeleteSnapshot.
    pub(crate) fn release_lost(&self, local: &str) -> Result<()> {
        let kernels: BTreeSet<Uuid> = self.state.read(|t| {
            t.snapshots
                .values()
                .filter(|s| s.volume == local && s.lost.is_some())
                .map(|s| s.kernel)
                .collect()
        });
        for k in kernels {
            self.destroy_kernel(k)?;
        }
        Ok(())
    }

    /// Takes one kernel snapshot of `vols` and returns a record per volume
    /// (not yet stored) and the storage file.
    fn take(
        &self,
        vols: &[VolumeRecord],
        name: &str,
        group: bool,
        params: &HashMap<String, String>,
    ) -> Result<(Vec<SnapshotRecord>, File, u64, Taken<'_>)> {
        for v in vols {
            self.release_lost(&v.local)?;
        }
        // Refused before the storage is reserved, so that a full storage
        // directory does not answer a retried RESOURCE_EXHAUSTED instead;
        // the kernel's refusal of the add (it also counts snapshots no
        // record names) is the same answer.
        for v in vols {
            let held = self.held_snapshots_of(&v.local).len();
            if held >= self.snapshots_per_device.count() as usize {
                return Err(self.snapshot_limit(v));
            }
        }
        let total: u64 = vols.iter().map(|v| v.capacity).sum();
        let limit = storage::limit(params, total, self.settings.default_storage_percent)?;
        let mut devs = Vec::with_capacity(vols.len());
        for v in vols {
            let path = self.device_of(v)?;
            let f = open_device(&path)?;
            devs.push((path, f));
        }
        storage::check_not_on(&self.settings.storage_dir, &devs)?;

        // Before the take: what each file-backed volume has allocated, and
        // the generation, to tell whether the take starts a new one.
        let mut before = Vec::with_capacity(vols.len());
        for (v, (_, f)) in vols.iter().zip(&devs) {
            let extents = self.backend(v.backend)?.allocated(v)?;
            let generation = self.kernel().cbt_info(f)?.generation_id;
            before.push((extents, generation));
        }

        let storage_file = storage::open_tmpfile(&self.settings.storage_dir, limit)?;
        let id = self
            .kernel()
            .snapshot_create(&storage_file, limit.div_ceil(512))
            .map_err(map_take_error)?;
        let taken = Taken {
            plugin: self,
            id,
            armed: true,
        };
        for (v, (_, f)) in vols.iter().zip(&devs) {
            // A fresh snapshot not yet taken, each device once: busy means
            // the device is in as many snapshots as the module keeps (on
            // 1.0: in another snapshot).
            self.kernel().snapshot_add(id, f).map_err(|e| match e {
                blksnap::Error::Busy { .. } => self.snapshot_limit(v),
                e => map_take_error(e),
            })?;
        }
        self.kernel().snapshot_take(id).map_err(map_take_error)?;
        let (secs, nanos) = now();

        let mut records = Vec::with_capacity(vols.len());
        for ((v, (path, f)), (extents, gen_before)) in vols.iter().zip(&devs).zip(before) {
            let info = self.kernel().cbt_info(f)?;
            let map = self.kernel().cbt_map_all(f)?;
            let image = self.kernel().snapshot_info_of(id, f)?;
            if image.image.is_none() {
                return Err(Error::Kernel(blksnap::Error::Protocol {
                    op: "snapshot_info_of",
                    what: "no image after take",
                }));
            }
            let cap = info.device_capacity;
            let bs = info.block_size;
            let allocated = match extents {
                // Data allocated before the take, and blocks written
                // between that look and the take (they carry this
                // snapshot's number).
                Some(mut e) if info.generation_id == gen_before => {
                    e.extend(ranges::blocks_equal(&map, info.changes_number, bs, cap));
                    ranges::coalesce(e)
                        .into_iter()
                        .map(|r| r.start..r.end.min(cap))
                        .filter(|r| r.start < r.end)
                        .collect()
                }
                _ if v.full_history == Some(info.generation_id) => {
                    blksnap::cbt::changed_ranges(&map, bs, cap, 0)
                }
                _ => state::whole(cap),
            };
            tracing::debug!(device = %path.display(), number = info.changes_number, "snapshot taken");
            records.push(SnapshotRecord {
                kernel: id.0,
                volume: v.local.clone(),
                name: name.to_owned(),
                group: group.then_some(id.0),
                created_secs: secs,
                created_nanos: nanos,
                capacity: cap,
                generation: info.generation_id,
                number: info.changes_number,
                block_size: bs,
                map: map.into(),
                allocated,
                storage_limit: limit,
                lost: None,
            });
        }
        Ok((records, storage_file, limit, taken))
    }

    /// Stores the records of a take and starts watching its events.
    fn commit_take(
        self: &Arc<Self>,
        records: &[SnapshotRecord],
        group: Option<&GroupRecord>,
        storage_file: File,
        limit: u64,
        mut taken: Taken<'_>,
    ) -> Result<()> {
        let mut stored = Vec::new();
        let mut result = Ok(());
        for r in records {
            match self.state.put(r) {
                Ok(()) => stored.push(r.key()),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            if let Some(g) = group {
                result = self.state.put(g);
            }
        }
        if let Err(e) = result {
            for key in stored {
                let _ = self.state.remove::<SnapshotRecord>(&key);
            }
            return Err(e);
        }
        taken.armed = false;
        let kernel = taken.id.0;
        drop(taken);
        let volumes = records.iter().map(|r| r.volume.clone()).collect();
        self.keep_storage(kernel, storage_file, limit, volumes);
        self.update_gauges();
        self.watch(kernel);
        Ok(())
    }

    /// CreateSnapshot: idempotent by name. A replay for a snapshot that
    /// was lost since returns it not ready (the spec's answer for a
    /// snapshot that is not usable), which the sidecar can delete.
    pub fn create_snapshot(
        self: &Arc<Self>,
        name: &str,
        source: &VolumeId,
        params: &HashMap<String, String>,
    ) -> Result<SnapshotRecord> {
        let _guard = self
            .locks
            .try_lock([name_key("snapshot", name), volume_key(&source.local)])?;
        let existing = self.state.read(|t| {
            t.snapshots
                .values()
                .find(|s| s.name == name && s.group.is_none())
                .cloned()
        });
        if let Some(rec) = existing {
            if rec.volume != source.local || source.node != self.settings.node_id {
                return Err(Error::AlreadyExists {
                    kind: "snapshot",
                    name: name.to_owned(),
                });
            }
            return self.refresh(rec);
        }
        let vol = self.volume(source)?;
        let (records, file, limit, taken) =
            self.take(std::slice::from_ref(&vol), name, false, params)?;
        self.commit_take(&records, None, file, limit, taken)?;
        let rec = records.into_iter().next().ok_or_else(no_record)?;
        tracing::info!(snapshot = %self.snapshot_id(&rec), name, "snapshot created");
        Ok(rec)
    }

    /// A snapshot for a clone: not stored, released by
    /// [`Plugin::release_temporary`] (or collected as an orphan after a
    /// crash).
    pub(crate) fn take_temporary(&self, vol: &VolumeRecord) -> Result<SnapshotRecord> {
        let mut params = HashMap::new();
        // The copy may be slow; room for every chunk of the volume to be
        // rewritten meanwhile.
        params.insert(storage::PARAM_PERCENT.to_owned(), "100".to_owned());
        let (records, _file, _limit, mut taken) =
            self.take(std::slice::from_ref(vol), "clone", false, &params)?;
        taken.armed = false;
        records.into_iter().next().ok_or_else(no_record)
    }

    pub(crate) fn release_temporary(&self, rec: &SnapshotRecord) {
        if let Err(e) = self.destroy_kernel(rec.kernel) {
            tracing::error!(kernel_snapshot = %rec.kernel, error = %e, "temporary snapshot not released");
        }
    }

    /// DeleteSnapshot: unknown ids are fine. A member of a group snapshot
    /// goes with its group only.
    pub fn delete_snapshot(&self, text: &str) -> Result<()> {
        let Ok(id) = text.parse::<SnapshotId>() else {
            return Ok(());
        };
        self.check_own_node("snapshot_id", "snapshot", &id.node)?;
        let key = state::snapshot_key(id.kernel, &id.volume);
        let _guard = self.locks.try_lock([snapshot_key(&key)])?;
        let Some(rec) = self.snapshot_record(&id) else {
            return Ok(());
        };
        if let Some(g) = rec.group {
            if self
                .state
                .read(|t| t.groups.contains_key(&state::group_key(g)))
            {
                return Err(Error::Precondition(format!(
                    "snapshot {text} belongs to a group snapshot; delete the group"
                )));
            }
        }
        // A kernel snapshot that other records still name (the members of
        // a group whose group record is missing) goes with the last of them.
        let shared = self.state.read(|t| {
            t.snapshots
                .values()
                .any(|s| s.kernel == rec.kernel && s.key() != key)
        });
        let _deleting = if shared {
            None
        } else {
            let deleting = self.deleting(rec.kernel);
            self.destroy_kernel(rec.kernel)?;
            Some(deleting)
        };
        self.state.remove::<SnapshotRecord>(&key)?;
        self.update_gauges();
        tracing::info!(snapshot = text, "snapshot deleted");
        Ok(())
    }

    /// Destroys kernel snapshot `kernel` and drops its storage file and
    /// gauges; one the kernel no longer has is fine.
    pub(crate) fn destroy_kernel(&self, kernel: Uuid) -> Result<()> {
        match self.kernel().snapshot_destroy(blksnap::SnapshotId(kernel)) {
            Ok(()) | Err(blksnap::Error::NoSuchSnapshot { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.forget_storage(kernel);
        Ok(())
    }

    /// `rec` checked with the kernel (see `refresh`), or as recorded when
    /// the check itself fails (its volume's device cannot be opened, say):
    /// one unreadable volume must not fail a listing of all the others.
    /// The snapshot is checked again when it is used.
    pub(crate) fn checked(&self, rec: SnapshotRecord) -> SnapshotRecord {
        match self.refresh(rec.clone()) {
            Ok(now) => now,
            Err(e) => {
                tracing::error!(snapshot = %self.snapshot_id(&rec), error = %e, "snapshot not checked");
                rec
            }
        }
    }

    /// ListSnapshots: records in key order, after the token's key, at most
    /// `max_entries` (0: all). Unknown filters give an empty list.
    pub fn list_snapshots(&self, f: &SnapshotFilter) -> Result<(Vec<SnapshotRecord>, String)> {
        let paging = Paging::new(f.max_entries, &f.starting_token, is_snapshot_key)?;
        let mut all: Vec<SnapshotRecord> = if !f.snapshot_id.is_empty() {
            match f.snapshot_id.parse::<SnapshotId>() {
                Ok(id) => self.snapshot_record(&id).into_iter().collect(),
                Err(_) => Vec::new(),
            }
        } else {
            self.state.read(|t| t.snapshots.values().cloned().collect())
        };
        if !f.source_volume_id.is_empty() {
            match f.source_volume_id.parse::<VolumeId>() {
                Ok(v) if v.node == self.settings.node_id => all.retain(|s| s.volume == v.local),
                _ => all.clear(),
            }
        }
        let (page, next) = paging.apply(all, SnapshotRecord::key);
        Ok((page.into_iter().map(|r| self.checked(r)).collect(), next))
    }

    /// CreateVolumeGroupSnapshot: one kernel snapshot over all volumes.
    pub fn create_group(
        self: &Arc<Self>,
        name: &str,
        volume_ids: &[String],
        params: &HashMap<String, String>,
    ) -> Result<(GroupRecord, Vec<SnapshotRecord>)> {
        let mut vids = Vec::with_capacity(volume_ids.len());
        for text in volume_ids {
            // An id that is not ours names no volume here.
            let id: VolumeId = text
                .parse()
                .map_err(|_| Error::not_found("volume", text.as_str()))?;
            if id.node != self.settings.node_id {
                return Err(Error::invalid(
                    "source_volume_ids",
                    format!(
                        "{text} is on node {}; a group snapshot is of one node's volumes",
                        id.node
                    ),
                ));
            }
            vids.push(id);
        }
        let members: BTreeSet<String> = vids.iter().map(|v| v.local.clone()).collect();
        let mut keys = vec![name_key("group snapshot", name)];
        keys.extend(members.iter().map(|l| volume_key(l)));
        let _guard = self.locks.try_lock(keys)?;

        let existing = self
            .state
            .read(|t| t.groups.values().find(|g| g.name == name).cloned());
        if let Some(g) = existing {
            if g.members.iter().cloned().collect::<BTreeSet<_>>() != members {
                return Err(Error::AlreadyExists {
                    kind: "group snapshot",
                    name: name.to_owned(),
                });
            }
            let snaps = self.group_members(&g)?;
            return Ok((g, snaps));
        }
        let mut vols = Vec::with_capacity(members.len());
        for local in &members {
            let id = VolumeId {
                local: local.clone(),
                node: self.settings.node_id.clone(),
            };
            vols.push(self.volume(&id)?);
        }
        let (records, file, limit, taken) = self.take(&vols, name, true, params)?;
        let (secs, nanos) = (records[0].created_secs, records[0].created_nanos);
        let group = GroupRecord {
            kernel: taken.id.0,
            name: name.to_owned(),
            members: members.into_iter().collect(),
            created_secs: secs,
            created_nanos: nanos,
        };
        self.commit_take(&records, Some(&group), file, limit, taken)?;
        tracing::info!(group = %self.group_id(&group), name, "group snapshot created");
        Ok((group, records))
    }

    fn group_members(&self, g: &GroupRecord) -> Result<Vec<SnapshotRecord>> {
        let members: Vec<SnapshotRecord> = self.state.read(|t| {
            t.snapshots
                .values()
                .filter(|s| s.group == Some(g.kernel))
                .cloned()
                .collect()
        });
        Ok(members.into_iter().map(|r| self.checked(r)).collect())
    }

    fn check_member_ids(&self, g: &GroupRecord, snapshot_ids: &[String]) -> Result<()> {
        if snapshot_ids.is_empty() {
            return Ok(());
        }
        let given: BTreeSet<&str> = snapshot_ids.iter().map(String::as_str).collect();
        let members: Vec<SnapshotRecord> = self.state.read(|t| {
            t.snapshots
                .values()
                .filter(|s| s.group == Some(g.kernel))
                .cloned()
                .collect()
        });
        let have: Vec<String> = members
            .iter()
            .map(|m| self.snapshot_id(m).to_string())
            .collect();
        let have: BTreeSet<&str> = have.iter().map(String::as_str).collect();
        if given != have {
            return Err(Error::invalid(
                "snapshot_ids",
                "do not match the members of the group snapshot",
            ));
        }
        Ok(())
    }

    fn group_record(&self, id: &GroupSnapshotId) -> Option<GroupRecord> {
        if id.node != self.settings.node_id {
            return None;
        }
        self.state
            .read(|t| t.groups.get(&state::group_key(id.kernel)).cloned())
    }

    /// GetVolumeGroupSnapshot. An id that is not ours names no group here.
    pub fn get_group(
        &self,
        text: &str,
        snapshot_ids: &[String],
    ) -> Result<(GroupRecord, Vec<SnapshotRecord>)> {
        let g = text
            .parse::<GroupSnapshotId>()
            .ok()
            .and_then(|id| self.group_record(&id))
            .ok_or_else(|| Error::not_found("group snapshot", text))?;
        self.check_member_ids(&g, snapshot_ids)?;
        let members = self.group_members(&g)?;
        Ok((g, members))
    }

    /// DeleteVolumeGroupSnapshot: the kernel snapshot and every member.
    pub fn delete_group(&self, text: &str, snapshot_ids: &[String]) -> Result<()> {
        let Ok(id) = text.parse::<GroupSnapshotId>() else {
            return Ok(());
        };
        self.check_own_node("group_snapshot_id", "group snapshot", &id.node)?;
        // Guarded before it is looked up, so that what is deleted is what
        // was checked.
        let _guard = self
            .locks
            .try_lock([snapshot_key(&state::group_key(id.kernel))])?;
        let Some(g) = self.group_record(&id) else {
            return Ok(());
        };
        // And each member's, which a restore from that member holds.
        let keys: Vec<String> = self.state.read(|t| {
            t.snapshots
                .values()
                .filter(|s| s.group == Some(g.kernel))
                .map(SnapshotRecord::key)
                .collect()
        });
        let _members = self.locks.try_lock(keys.iter().map(|k| snapshot_key(k)))?;
        self.check_member_ids(&g, snapshot_ids)?;
        let _deleting = self.deleting(g.kernel);
        self.destroy_kernel(g.kernel)?;
        // The group record goes first: members left without it are undone
        // at start, so a crash half way still ends in a complete delete.
        self.state.remove::<GroupRecord>(&g.key())?;
        for k in keys {
            self.state.remove::<SnapshotRecord>(&k)?;
        }
        self.update_gauges();
        tracing::info!(group = text, "group snapshot deleted");
        Ok(())
    }

    /// A snapshot that metadata calls may read: known here and not lost.
    fn servable(&self, field: &'static str, text: &str) -> Result<(SnapshotId, SnapshotRecord)> {
        if text.is_empty() {
            return Err(Error::Missing(field));
        }
        // An id that is not ours names no snapshot here.
        let id: SnapshotId = text
            .parse()
            .map_err(|_| Error::not_found("snapshot", text))?;
        let rec = self
            .snapshot_record(&id)
            .ok_or_else(|| Error::not_found("snapshot", text))?;
        let rec = self.refresh(rec)?;
        if let Some(lost) = &rec.lost {
            return Err(Error::Unavailable(lost.message(text)));
        }
        Ok((id, rec))
    }

    /// GetMetadataAllocated: the ranges of the snapshot that may hold data.
    pub fn metadata_allocated(&self, text: &str, starting_offset: i64) -> Result<MetadataPage> {
        let (_, rec) = self.servable("snapshot_id", text)?;
        let from = check_offset(starting_offset, rec.capacity)?;
        Ok(MetadataPage {
            capacity: rec.capacity,
            ranges: ranges::from_offset(&rec.allocated, from, u64::from(rec.block_size)),
        })
    }

    /// GetMetadataDelta: the ranges written between `base` and `target`,
    /// from the target's frozen map; `base` may be deleted already.
    pub fn metadata_delta(
        &self,
        base_text: &str,
        target_text: &str,
        starting_offset: i64,
    ) -> Result<MetadataPage> {
        if base_text.is_empty() {
            return Err(Error::Missing("base_snapshot_id"));
        }
        let base: SnapshotId = base_text
            .parse()
            .map_err(|_| Error::not_found("snapshot", base_text))?;
        let (target, rec) = self.servable("target_snapshot_id", target_text)?;
        if base.volume != target.volume || base.node != target.node {
            return Err(Error::invalid(
                "base_snapshot_id",
                "base and target are snapshots of different volumes",
            ));
        }
        if base.generation != target.generation {
            return Err(Error::Precondition(format!(
                "the change history between {base_text} and {target_text} is gone \
                 (change-map generation changed: reboot, resize or 255 snapshots); take a full backup"
            )));
        }
        if base.number > target.number
            || (base.number == target.number && base.kernel != target.kernel)
        {
            return Err(Error::invalid(
                "base_snapshot_id",
                "the base snapshot is not older than the target",
            ));
        }
        let from = check_offset(starting_offset, rec.capacity)?;
        let changed =
            blksnap::cbt::changed_ranges(&rec.map, rec.block_size, rec.capacity, base.number);
        Ok(MetadataPage {
            capacity: rec.capacity,
            ranges: ranges::from_offset(&changed, from, u64::from(rec.block_size)),
        })
    }
}

fn no_record() -> Error {
    Error::Kernel(blksnap::Error::Protocol {
        op: "snapshot_take",
        what: "no record",
    })
}

fn check_offset(starting_offset: i64, capacity: u64) -> Result<u64> {
    let from = u64::try_from(starting_offset)
        .map_err(|_| Error::invalid("starting_offset", "must not be negative"))?;
    if from >= capacity {
        return Err(Error::OutOfRange(format!(
            "starting_offset {from} is at or past the volume's end ({capacity} bytes)"
        )));
    }
    Ok(from)
}

/// Whether `key` is a snapshot record's: 32 hex digits, a dot, a volume
/// name.
fn is_snapshot_key(key: &str) -> bool {
    key.split_once('.').is_some_and(|(k, v)| {
        k.len() == 32
            && k.bytes().all(|b| b.is_ascii_hexdigit())
            && blksnap_node_api::ids::is_local_name(v)
    })
}
