//! Volume operations: create (empty, from a snapshot, from a volume),
//! delete, expand.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use uuid::Uuid;

use super::{now, open_device, Paging, Plugin};
use crate::guard::{name_key, snapshot_key, volume_key};
use crate::state::{self, BackendKind, SnapshotRecord, Source, VolumeRecord};
use crate::{Error, Result};
use blksnap_node_api::ids::{SnapshotId, VolumeId};

/// Copy unit of restores and clones.
const COPY_CHUNK: usize = 1 << 20;

/// A CreateVolume request, validated by the controller service.
#[derive(Debug, Clone)]
pub struct CreateVolume {
    pub name: String,
    /// At least this many bytes.
    pub required: u64,
    /// At most this many bytes; 0 for no limit.
    pub limit: u64,
    pub backend: Option<BackendKind>,
    pub source: Option<Source>,
}

impl Plugin {
    /// Creates a volume, or returns the one this name already made.
    pub fn create_volume(self: &Arc<Self>, req: &CreateVolume) -> Result<VolumeRecord> {
        let _guard = self.locks.try_lock([name_key("volume", &req.name)])?;
        let backend_kind = req.backend.unwrap_or(self.settings.default_backend);
        if req.limit > 0 && req.limit < req.required {
            return Err(Error::OutOfRange(format!(
                "limit_bytes {} is below required_bytes {}",
                req.limit, req.required
            )));
        }

        let existing = self.state.read(|t| {
            t.volumes
                .values()
                .find(|v| v.name == req.name && !v.zeroing)
                .cloned()
        });
        if let Some(v) = existing {
            let fits = v.capacity >= req.required && (req.limit == 0 || v.capacity <= req.limit);
            if v.backend == backend_kind && v.source == req.source && fits {
                return Ok(v);
            }
            return Err(Error::AlreadyExists {
                kind: "volume",
                name: req.name.clone(),
            });
        }

        // The source decides the minimum size. Its guard is taken before
        // it is looked up and held until it is copied: a DeleteSnapshot
        // and a CreateSnapshot of its volume in between would leave this
        // call with the record of a snapshot the kernel no longer holds
        // (DeleteVolumeGroupSnapshot takes its members' guards too).
        let (source_snapshot, source_volume, _source_guard) = match &req.source {
            None => (None, None, None),
            Some(Source::Snapshot(text)) => {
                let id: SnapshotId = text.parse()?;
                let guard = self
                    .locks
                    .try_lock([snapshot_key(&state::snapshot_key(id.kernel, &id.volume))])?;
                (Some(self.snapshot_for_use(&id, text)?), None, Some(guard))
            }
            Some(Source::Volume(text)) => {
                let id: VolumeId = text.parse()?;
                let guard = self.locks.try_lock([volume_key(&id.local)])?;
                (None, Some(self.volume(&id)?), Some(guard))
            }
        };
        let source_size = source_snapshot
            .as_ref()
            .map(|s| s.capacity)
            .or(source_volume.as_ref().map(|v| v.capacity))
            .unwrap_or(0);
        if req.limit > 0 && req.limit < source_size {
            return Err(Error::OutOfRange(format!(
                "the source holds {source_size} bytes, more than limit_bytes {}",
                req.limit
            )));
        }
        let size = req.required.max(source_size).max(1);
        let mut vol = self.place_volume(
            VolumeRecord {
                local: self.new_local_name(),
                name: req.name.clone(),
                backend: backend_kind,
                // Set by the backend.
                location: String::new(),
                capacity: 0,
                source: req.source.clone(),
                created_unix: now().0,
                full_history: None,
                creating: true,
                zeroing: false,
            },
            size,
        )?;
        if let Err(e) = self.finish_volume(&mut vol, req, source_snapshot, source_volume) {
            if let Err(cleanup) = self.undo_volume(&vol) {
                tracing::error!(volume = %vol.local, error = %cleanup, "half-made volume not removed");
            }
            return Err(e);
        }
        vol.creating = false;
        self.state.put(&vol)?;
        tracing::info!(volume = %vol.local, name = %vol.name, capacity = vol.capacity, "volume created");
        Ok(vol)
    }

    fn finish_volume(
        self: &Arc<Self>,
        vol: &mut VolumeRecord,
        req: &CreateVolume,
        source_snapshot: Option<SnapshotRecord>,
        source_volume: Option<VolumeRecord>,
    ) -> Result<()> {
        if req.limit > 0 && vol.capacity > req.limit {
            return Err(Error::OutOfRange(format!(
                "the smallest {} volume holding {} bytes has {} bytes, above limit_bytes {}",
                vol.backend.name(),
                req.required,
                vol.capacity,
                req.limit
            )));
        }
        // Tracking starts before the first write, so that for a fresh
        // (zeroed) volume the change map is its complete history.
        let path = self.device_of(vol)?;
        let dev = open_device(&path)?;
        self.attach(&dev)?;
        let info = self.kernel().cbt_info(&dev)?;
        let zeroed = self.backend(vol.backend)?.zeroed_on_create();
        if zeroed {
            vol.full_history = Some(info.generation_id);
        }
        if let Some(snap) = source_snapshot {
            self.copy_image(&snap, &dev, zeroed)?;
        } else if let Some(src) = source_volume {
            self.clone_from(&src, &dev, zeroed)?;
        }
        Ok(())
    }

    /// Removes a volume that was never handed out: its tracking, its
    /// storage, then its record.
    pub(crate) fn undo_volume(self: &Arc<Self>, vol: &VolumeRecord) -> Result<()> {
        let backend = self.backend(vol.backend)?;
        if let Ok(path) = backend.device(vol) {
            if let Ok(dev) = open_device(&path) {
                self.detach(&dev)?;
            }
        }
        self.release(vol)
    }

    fn new_local_name(&self) -> String {
        loop {
            let name = Uuid::new_v4().simple().to_string()[..16].to_owned();
            if !self.state.read(|t| t.volumes.contains_key(&name)) {
                return name;
            }
        }
    }

    /// Copies the snapshot's image into `dst`: only the ranges that may
    /// hold data, and (when `dst` reads as zeros) skipping zero chunks so
    /// a pool file stays sparse.
    fn copy_image(&self, snap: &SnapshotRecord, dst: &File, dst_zeroed: bool) -> Result<()> {
        let image = self.image_of(snap)?;
        let src = File::open(&image).map_err(|e| Error::io("open", &image, e))?;
        let ranges = if dst_zeroed {
            snap.allocated.clone()
        } else {
            crate::state::whole(snap.capacity)
        };
        copy_ranges(&src, dst, &ranges, dst_zeroed)
            .map_err(|e| Error::io("copy from", &image, e))?;
        dst.sync_all()
            .map_err(|e| Error::io("fsync", "new volume", e))
    }

    /// Copies volume `src` into `dst` through a temporary snapshot, so the
    /// copy is of one instant while `src` stays in use; its snapshots held
    /// meanwhile are untouched. The temporary one counts against the
    /// module's limit of snapshots per volume while the copy runs: a source
    /// already at the limit is refused ([`Error::SnapshotLimit`]).
    fn clone_from(
        self: &Arc<Self>,
        src: &VolumeRecord,
        dst: &File,
        dst_zeroed: bool,
    ) -> Result<()> {
        let snap = self.take_temporary(src)?;
        let result = self.copy_image(&snap, dst, dst_zeroed);
        self.release_temporary(&snap);
        result
    }

    /// Deletes a volume; an unknown one is fine. A volume whose snapshots
    /// the kernel still holds is refused: they read through it.
    pub fn delete_volume(self: &Arc<Self>, id_text: &str) -> Result<()> {
        let Ok(id) = id_text.parse::<VolumeId>() else {
            return Ok(());
        };
        self.check_own_node("volume_id", "volume", &id.node)?;
        let _guard = self.locks.try_lock([volume_key(&id.local)])?;
        let Some(vol) = self.state.read(|t| t.volumes.get(&id.local).cloned()) else {
            return Ok(());
        };
        if vol.zeroing {
            return Ok(());
        }
        let held = self.held_snapshots_of(&vol.local);
        if let Some(s) = held.first() {
            return Err(Error::Precondition(format!(
                "volume {id_text} has {} snapshot(s) held, {} among them; delete them first",
                held.len(),
                self.snapshot_id(s)
            )));
        }
        self.release_lost(&vol.local)?;
        let backend = self.backend(vol.backend)?;
        match backend.device(&vol) {
            Ok(path) => {
                // Refused while mounted, before anything is undone.
                drop(crate::backend::open_exclusive(&path)?);
                self.detach(&open_device(&path)?)?
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.release(&vol)?;
        tracing::info!(volume = %vol.local, "volume deleted");
        Ok(())
    }

    /// ListVolumes: the volumes in key order, paged like ListSnapshots. A
    /// volume still being made is left out: its id is not handed out
    /// until its CreateVolume answers.
    pub fn list_volumes(
        &self,
        max_entries: i32,
        starting_token: &str,
    ) -> Result<(Vec<VolumeRecord>, String)> {
        let paging = Paging::new(
            max_entries,
            starting_token,
            blksnap_node_api::ids::is_local_name,
        )?;
        let volumes = self.state.read(|t| {
            t.volumes
                .values()
                .filter(|v| !v.creating)
                .cloned()
                .collect()
        });
        Ok(paging.apply(volumes, VolumeRecord::key))
    }

    /// Grows a volume to at least `required` bytes; returns its capacity.
    /// Tracking is attached anew over the new size (the kernel sizes a
    /// change map at attach), which starts a new change-map generation:
    /// deltas across a resize are refused. A volume whose snapshots are
    /// held cannot grow.
    pub fn expand_volume(&self, id: &VolumeId, required: u64, limit: u64) -> Result<u64> {
        let _guard = self.locks.try_lock([volume_key(&id.local)])?;
        let mut vol = self.volume(id)?;
        if required <= vol.capacity {
            return Ok(vol.capacity);
        }
        if limit > 0 && limit < required {
            return Err(Error::OutOfRange(format!(
                "limit_bytes {limit} is below required_bytes {required}"
            )));
        }
        let held = self.held_snapshots_of(&vol.local);
        if let Some(s) = held.first() {
            return Err(Error::Precondition(format!(
                "volume {id} has {} snapshot(s) held, {} among them; it cannot grow until they are deleted",
                held.len(),
                self.snapshot_id(s)
            )));
        }
        self.release_lost(&vol.local)?;
        // Grow first: a backend that cannot grow leaves tracking alone.
        let capacity = self.backend(vol.backend)?.expand(&vol, required)?;
        let dev = open_device(&self.device_of(&vol)?)?;
        self.detach(&dev)?;
        self.kernel().attach(&dev)?;
        if limit > 0 && capacity > limit {
            tracing::warn!(volume = %vol.local, capacity, limit, "volume grew past limit_bytes by rounding");
        }
        vol.capacity = capacity;
        vol.full_history = None;
        self.state.put(&vol)?;
        Ok(capacity)
    }
}

/// Copies `ranges` of `src` to the same offsets of `dst`; with
/// `skip_zeros`, chunks that are all zero are not written.
pub(crate) fn copy_ranges(
    src: &File,
    dst: &File,
    ranges: &[Range<u64>],
    skip_zeros: bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    for r in ranges {
        let mut off = r.start;
        while off < r.end {
            let len = ((r.end - off) as usize).min(COPY_CHUNK);
            let chunk = &mut buf[..len];
            src.read_exact_at(chunk, off)?;
            if !(skip_zeros && chunk.iter().all(|&b| b == 0)) {
                dst.write_all_at(chunk, off)?;
            }
            off += len as u64;
        }
    }
    Ok(())
}

impl Plugin {
    /// The snapshot a CreateVolume source names, ready to be read. A lost
    /// one never becomes readable again: a final code, not one the
    /// provisioner retries.
    fn snapshot_for_use(&self, id: &SnapshotId, text: &str) -> Result<SnapshotRecord> {
        let rec = self
            .snapshot_record(id)
            .ok_or_else(|| Error::not_found("snapshot", text))?;
        let rec = self.refresh(rec)?;
        if let Some(lost) = &rec.lost {
            return Err(Error::Precondition(lost.message(text)));
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges_copies_only_the_ranges_and_can_skip_zeros() {
        let src = tempfile::tempfile().expect("src");
        let dst = tempfile::tempfile().expect("dst");
        let mut data = vec![0u8; 3 * COPY_CHUNK];
        data[10] = 1;
        data[COPY_CHUNK * 2 + 5] = 2;
        src.write_all_at(&data, 0).expect("fill");
        dst.set_len(data.len() as u64).expect("size");
        copy_ranges(
            &src,
            &dst,
            &[0..100, (2 * COPY_CHUNK) as u64..data.len() as u64],
            true,
        )
        .expect("copy");
        let mut back = vec![0u8; data.len()];
        dst.read_exact_at(&mut back, 0).expect("read");
        assert_eq!(back, data);
    }
}
