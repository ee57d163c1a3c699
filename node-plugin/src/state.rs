//! What the plugin remembers across restarts: its volumes, snapshots and
//! group snapshots.
//!
//! [`Store`] is the small persistence trait: load a table, write or remove
//! one record. [`FsStore`] keeps one JSON file per record and writes it the
//! only safe way (write a temporary file, fsync it, rename it over the old
//! one, fsync the directory), so a crash leaves either the old or the new
//! record, never half of one. [`State`] keeps the tables in memory and is
//! the one code path through which every change goes: it persists first and
//! updates memory only when the store has the record.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ranges, Error, Result};

/// The tables of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Volumes,
    Snapshots,
    Groups,
}

impl Table {
    fn dir(self) -> &'static str {
        match self {
            Table::Volumes => "volumes",
            Table::Snapshots => "snapshots",
            Table::Groups => "groups",
        }
    }
}

/// Persistence of records: whole values under a key, written atomically.
pub trait Store: Send + Sync {
    /// Every record of `table`, as `(key, bytes)`.
    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>>;
    /// Replaces the record `key` of `table` with `value`, or removes it
    /// when `value` is `None`; durable when this returns.
    fn write(&self, table: Table, key: &str, value: Option<&[u8]>) -> Result<()>;
}

/// A [`Store`] in a directory: `<dir>/<table>/<key>.json`.
#[derive(Debug)]
pub struct FsStore {
    dir: PathBuf,
}

impl FsStore {
    /// Opens (creating) the state directory; leftovers of writes that a
    /// crash interrupted are removed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for table in [Table::Volumes, Table::Snapshots, Table::Groups] {
            let d = dir.join(table.dir());
            fs::create_dir_all(&d).map_err(|e| Error::io("create", &d, e))?;
            for entry in fs::read_dir(&d).map_err(|e| Error::io("read", &d, e))? {
                let entry = entry.map_err(|e| Error::io("read", &d, e))?;
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let p = entry.path();
                    fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
                }
            }
        }
        Ok(FsStore { dir })
    }

    fn table_dir(&self, table: Table) -> PathBuf {
        self.dir.join(table.dir())
    }
}

fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !key.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Corrupt {
            key: key.to_owned(),
            reason: "not a valid record key".into(),
        })
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}

impl Store for FsStore {
    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>> {
        let d = self.table_dir(table);
        let mut out = Vec::new();
        for entry in fs::read_dir(&d).map_err(|e| Error::io("read", &d, e))? {
            let entry = entry.map_err(|e| Error::io("read", &d, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            let p = entry.path();
            let bytes = fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
            out.push((key.to_owned(), bytes));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn write(&self, table: Table, key: &str, value: Option<&[u8]>) -> Result<()> {
        check_key(key)?;
        let d = self.table_dir(table);
        let path = d.join(format!("{key}.json"));
        match value {
            Some(bytes) => {
                let tmp = d.join(format!("{key}.json.tmp"));
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .map_err(|e| Error::io("create", &tmp, e))?;
                f.write_all(bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io("write", &tmp, e))?;
                fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
            }
            None => match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("remove", &path, e)),
            },
        }
        sync_dir(&d)
    }
}

/// Which volume backend holds a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A sparse file in the pool directory, attached as a loop device.
    Pool,
    /// A static raw block device named by a stable path.
    Device,
}

impl BackendKind {
    /// The StorageClass parameter value naming the backend.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Pool => "pool",
            BackendKind::Device => "device",
        }
    }
}

/// Where a volume's first content came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

/// A volume of this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The volume's name on the node (the `<local>` of its id).
    pub local: String,
    /// The CreateVolume name, for idempotency.
    pub name: String,
    pub backend: BackendKind,
    /// Backend-specific location: the pool file's name, or the static
    /// device's configured name.
    pub location: String,
    pub capacity: u64,
    pub source: Option<Source>,
    pub created_unix: i64,
    /// The change-map generation under which every byte of the volume was
    /// written, when that is known (a new volume whose tracking started
    /// before its first write); while the generation is unchanged, the
    /// blocks marked in the map are all that was ever written.
    pub full_history: Option<Uuid>,
    /// Recorded as soon as the volume's storage exists and cleared when
    /// the volume is complete: a record still creating at start is a
    /// CreateVolume that never answered (the process died copying its
    /// source), which recovery undoes instead of leaving storage nobody
    /// owns, or a static device holding another volume's data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
    /// Set when the volume was deleted and its storage is being zeroed in
    /// the background: the record keeps the device taken (neither handed
    /// out nor counted free) until it is zero, and a start zeroes it
    /// again; the volume itself is gone for every call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zeroing: bool,
}

impl VolumeRecord {
    pub fn key(&self) -> String {
        self.local.clone()
    }
}

/// Why a snapshot can no longer be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LostReason {
    /// The kernel no longer holds it: the node rebooted or the module was
    /// reloaded.
    KernelForgot,
    /// The difference storage overflowed.
    Overflow,
    /// Copy-on-write failed with an I/O error.
    IoError,
}

impl LostReason {
    /// The word the node API sends for it (`x-blksnap-lost`): the
    /// contract's, so that the controller parses what the node writes.
    pub fn as_str(self) -> &'static str {
        use blksnap_node_api::lost::LostReason as Wire;
        match self {
            LostReason::KernelForgot => Wire::KernelForgot,
            LostReason::Overflow => Wire::Overflow,
            LostReason::IoError => Wire::IoError,
        }
        .as_str()
    }
}

/// A snapshot that was lost, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    pub reason: LostReason,
    pub detail: String,
}

impl Lost {
    /// Why snapshot `id` cannot be used, for an error message.
    pub fn message(&self, id: &str) -> String {
        format!(
            "snapshot {id} is lost ({}): {}",
            self.reason.as_str(),
            self.detail
        )
    }
}

/// A snapshot of one volume, as cut by the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub kernel: Uuid,
    /// The snapshotted volume's local name.
    pub volume: String,
    /// The CreateSnapshot name (for a group member: the group's name).
    pub name: String,
    /// The group snapshot this one belongs to.
    pub group: Option<Uuid>,
    pub created_secs: i64,
    pub created_nanos: i32,
    /// Volume capacity at take.
    pub capacity: u64,
    /// Change-map coordinates at take.
    pub generation: Uuid,
    pub number: u8,
    pub block_size: u32,
    /// The change map frozen at take, one byte per tracking block (up to
    /// some MiB): shared, not copied, by every copy of the record.
    #[serde(with = "map_text")]
    pub map: Arc<[u8]>,
    /// Byte ranges that may hold data in this snapshot, computed at take.
    pub allocated: Vec<Range<u64>>,
    /// Difference storage limit in bytes.
    pub storage_limit: u64,
    /// Set once the snapshot can no longer be served.
    pub lost: Option<Lost>,
}

impl SnapshotRecord {
    pub fn key(&self) -> String {
        snapshot_key(self.kernel, &self.volume)
    }
}

/// The record key of the snapshot of `volume` in kernel snapshot `kernel`.
pub fn snapshot_key(kernel: Uuid, volume: &str) -> String {
    format!("{}.{}", kernel.simple(), volume)
}

/// A group snapshot: one kernel snapshot over several volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub kernel: Uuid,
    pub name: String,
    /// Local names of the member volumes, sorted.
    pub members: Vec<String>,
    pub created_secs: i64,
    pub created_nanos: i32,
}

impl GroupRecord {
    pub fn key(&self) -> String {
        group_key(self.kernel)
    }
}

/// The record key of the group snapshot in kernel snapshot `kernel`.
pub fn group_key(kernel: Uuid) -> String {
    kernel.simple().to_string()
}

mod map_text {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Longest map the kernel makes (`u32` block count).
    const MAX: usize = u32::MAX as usize;

    pub fn serialize<S: Serializer>(map: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::ranges::encode_map(map))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[u8]>, D::Error> {
        let text = String::deserialize(d)?;
        crate::ranges::decode_map(&text, MAX)
            .map(Arc::from)
            .ok_or_else(|| serde::de::Error::custom("malformed change map"))
    }
}

/// The tables in memory.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    pub volumes: BTreeMap<String, VolumeRecord>,
    pub snapshots: BTreeMap<String, SnapshotRecord>,
    pub groups: BTreeMap<String, GroupRecord>,
}

/// A record type and its table.
pub trait Record: Serialize + DeserializeOwned + Clone {
    const TABLE: Table;
    fn key(&self) -> String;
    fn table(tables: &mut Tables) -> &mut BTreeMap<String, Self>;
}

impl Record for VolumeRecord {
    const TABLE: Table = Table::Volumes;
    fn key(&self) -> String {
        VolumeRecord::key(self)
    }
    fn table(t: &mut Tables) -> &mut BTreeMap<String, Self> {
        &mut t.volumes
    }
}

impl Record for SnapshotRecord {
    const TABLE: Table = Table::Snapshots;
    fn key(&self) -> String {
        SnapshotRecord::key(self)
    }
    fn table(t: &mut Tables) -> &mut BTreeMap<String, Self> {
        &mut t.snapshots
    }
}

impl Record for GroupRecord {
    const TABLE: Table = Table::Groups;
    fn key(&self) -> String {
        GroupRecord::key(self)
    }
    fn table(t: &mut Tables) -> &mut BTreeMap<String, Self> {
        &mut t.groups
    }
}

/// The tables in memory over a [`Store`].
pub struct State {
    store: Box<dyn Store>,
    /// Held by a change from its write to the store until memory has it:
    /// changes reach memory in the order the store has them.
    writing: Mutex<()>,
    /// The tables; held only to read or to apply a change already stored,
    /// never across the store's write and fsyncs.
    tables: Mutex<Tables>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

fn load_table<T: Record>(store: &dyn Store, tables: &mut Tables) -> Result<()> {
    for (key, bytes) in store.load(T::TABLE)? {
        let record: T = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        if record.key() != key {
            return Err(Error::Corrupt {
                key,
                reason: format!("holds the record of {}", record.key()),
            });
        }
        T::table(tables).insert(key, record);
    }
    Ok(())
}

impl State {
    /// Loads every table from `store`.
    pub fn load(store: Box<dyn Store>) -> Result<Self> {
        let mut tables = Tables::default();
        load_table::<VolumeRecord>(store.as_ref(), &mut tables)?;
        load_table::<SnapshotRecord>(store.as_ref(), &mut tables)?;
        load_table::<GroupRecord>(store.as_ref(), &mut tables)?;
        Ok(State {
            store,
            writing: Mutex::new(()),
            tables: Mutex::new(tables),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while the lock was held cannot leave the tables half
        // changed: every change is one insert or remove after the store
        // has it.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the tables.
    pub fn read<R>(&self, f: impl FnOnce(&Tables) -> R) -> R {
        f(&self.lock())
    }

    /// Stores `record` (insert or replace); the one way records change.
    pub fn put<T: Record>(&self, record: &T) -> Result<()> {
        let key = record.key();
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let _writing = self.lock_writing();
        self.store.write(T::TABLE, &key, Some(&bytes))?;
        T::table(&mut self.lock()).insert(key, record.clone());
        Ok(())
    }

    /// Replaces the record `key` of `T`'s table with what `f` makes of it,
    /// if it is there and `f` gives one; in one step with respect to
    /// `put` and `remove`, so a record removed meanwhile is never written
    /// back. True when it was replaced.
    pub fn update<T: Record>(&self, key: &str, f: impl FnOnce(&T) -> Option<T>) -> Result<bool> {
        let _writing = self.lock_writing();
        let Some(record) = T::table(&mut self.lock()).get(key).and_then(f) else {
            return Ok(false);
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| Error::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        self.store.write(T::TABLE, key, Some(&bytes))?;
        T::table(&mut self.lock()).insert(key.to_owned(), record);
        Ok(true)
    }

    /// Removes the record `key` of `T`'s table (absent is fine).
    pub fn remove<T: Record>(&self, key: &str) -> Result<()> {
        let _writing = self.lock_writing();
        self.store.write(T::TABLE, key, None)?;
        T::table(&mut self.lock()).remove(key);
        Ok(())
    }
}

/// Whole-volume allocation, for volumes nothing better is known about.
pub fn whole(capacity: u64) -> Vec<Range<u64>> {
    ranges::coalesce(std::iter::once(0..capacity).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_reasons_are_stored_and_sent_as_the_contract_parses_them() {
        use blksnap_node_api::lost::LostReason as Wire;
        for r in [
            LostReason::KernelForgot,
            LostReason::Overflow,
            LostReason::IoError,
        ] {
            let stored = serde_json::to_string(&r).expect("json");
            assert_eq!(stored, format!("\"{}\"", r.as_str()));
            assert_ne!(Wire::parse(r.as_str()), Wire::Other, "{r:?}");
        }
    }

    fn snapshot(volume: &str) -> SnapshotRecord {
        SnapshotRecord {
            kernel: Uuid::new_v4(),
            volume: volume.into(),
            name: "snap".into(),
            group: None,
            created_secs: 1,
            created_nanos: 2,
            capacity: 1 << 20,
            generation: Uuid::new_v4(),
            number: 3,
            block_size: 65536,
            map: vec![0, 0, 1, 3, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].into(),
            allocated: std::iter::once(0..4096).collect(),
            storage_limit: 1 << 20,
            lost: None,
        }
    }

    #[test]
    fn records_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::load(Box::new(FsStore::open(dir.path()).expect("open"))).expect("load");
        let s = snapshot("vol-a");
        state.put(&s).expect("put");
        let v = VolumeRecord {
            local: "vol-a".into(),
            name: "pvc-1".into(),
            backend: BackendKind::Pool,
            location: "vol-a.img".into(),
            capacity: 1 << 20,
            source: Some(Source::Snapshot("s1:x".into())),
            created_unix: 5,
            full_history: Some(Uuid::new_v4()),
            creating: false,
            zeroing: false,
        };
        state.put(&v).expect("put");

        let again = State::load(Box::new(FsStore::open(dir.path()).expect("open"))).expect("load");
        again.read(|t| {
            assert_eq!(t.snapshots.get(&s.key()), Some(&s));
            assert_eq!(t.volumes.get("vol-a"), Some(&v));
        });
        again.remove::<SnapshotRecord>(&s.key()).expect("remove");
        again
            .remove::<SnapshotRecord>(&s.key())
            .expect("removing twice is fine");
        let third = State::load(Box::new(FsStore::open(dir.path()).expect("open"))).expect("load");
        assert!(third.read(|t| t.snapshots.is_empty()));
    }

    #[test]
    fn interrupted_writes_are_cleaned_and_corruption_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(dir.path()).expect("open");
        drop(store);
        let tmp = dir.path().join("snapshots/abc.json.tmp");
        fs::write(&tmp, b"half").expect("write");
        let _ = FsStore::open(dir.path()).expect("open");
        assert!(!tmp.exists(), "leftover temporary file removed");

        fs::write(dir.path().join("volumes/x.json"), b"{not json").expect("write");
        let err = State::load(Box::new(FsStore::open(dir.path()).expect("open")))
            .expect_err("corrupt record");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_record_under_a_foreign_key_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(dir.path()).expect("open");
        let s = snapshot("vol-b");
        store
            .write(
                Table::Snapshots,
                "other",
                Some(&serde_json::to_vec(&s).expect("json")),
            )
            .expect("write");
        assert!(State::load(Box::new(store)).is_err());
    }

    #[test]
    fn keys_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(dir.path()).expect("open");
        for key in ["../x", "a/b", "", ".hidden"] {
            assert!(
                store.write(Table::Volumes, key, Some(b"{}")).is_err(),
                "{key}"
            );
        }
    }

    /// A store whose writes wait until released, as an fsync on a busy
    /// disk does.
    struct SlowStore {
        entered: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Store for SlowStore {
        fn load(&self, _table: Table) -> Result<Vec<(String, Vec<u8>)>> {
            Ok(Vec::new())
        }
        fn write(&self, _table: Table, _key: &str, _value: Option<&[u8]>) -> Result<()> {
            self.entered.send(()).expect("entered");
            self.release
                .lock()
                .expect("release")
                .recv()
                .expect("released");
            Ok(())
        }
    }

    #[test]
    fn readers_do_not_wait_for_a_write_to_reach_the_disk() {
        use std::sync::mpsc::{channel, sync_channel};
        use std::time::Duration;
        let (entered, in_write) = sync_channel(1);
        let (release, released) = channel();
        let state = Arc::new(
            State::load(Box::new(SlowStore {
                entered,
                release: Mutex::new(released),
            }))
            .expect("load"),
        );
        let writer = {
            let state = Arc::clone(&state);
            std::thread::spawn(move || state.put(&snapshot("vol-w")).expect("put"))
        };
        in_write.recv().expect("the put is writing");
        let (done, read) = channel();
        {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                let _ = done.send(state.read(|t| t.snapshots.len()));
            });
        }
        let seen = read.recv_timeout(Duration::from_secs(5));
        release.send(()).expect("release");
        writer.join().expect("writer");
        assert_eq!(seen, Ok(0), "a read waited for the write");
        assert_eq!(state.read(|t| t.snapshots.len()), 1);
    }

    #[test]
    fn copies_of_a_record_share_its_change_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::load(Box::new(FsStore::open(dir.path()).expect("open"))).expect("load");
        let s = snapshot("vol-m");
        state.put(&s).expect("put");
        let listed: Vec<SnapshotRecord> = state.read(|t| t.snapshots.values().cloned().collect());
        assert!(Arc::ptr_eq(&listed[0].map, &s.map), "the map was copied");
    }
}
