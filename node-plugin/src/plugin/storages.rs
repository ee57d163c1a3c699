//! The difference storage of the snapshots this process took, for the
//! storage gauges.
//!
//! A destroyed snapshot's storage can outlive it: the module keeps each
//! copy in the storage of the snapshot that was newest when it was made,
//! and that copy also serves the older snapshots of the same volumes that
//! still see the data. So a storage is counted while its snapshot is held,
//! and after its destroy while an older snapshot of one of its volumes is
//! held (the longest the module can keep it). Its file is not kept open
//! then, which would keep the space from being freed when the module lets
//! go: what it held at the destroy is counted, as nothing is copied to it
//! any more.

use std::collections::HashMap;
use std::fs::File;

use uuid::Uuid;

/// Storages by kernel snapshot id.
#[derive(Default)]
pub(crate) struct Storages {
    entries: HashMap<Uuid, Entry>,
    /// Take order: a take of a volume comes after every earlier one.
    next: u64,
}

struct Entry {
    state: State,
    limit: u64,
    volumes: Vec<String>,
    order: u64,
}

enum State {
    /// Its snapshot is held: the file, measured when asked.
    Held(File),
    /// Its snapshot is gone: the bytes written as of then.
    Gone { used: u64 },
}

impl Storages {
    /// The storage `file` (limit `limit`) of a snapshot just taken of
    /// `volumes`.
    pub(crate) fn taken(&mut self, kernel: Uuid, file: File, limit: u64, volumes: Vec<String>) {
        let order = self.next;
        self.next += 1;
        self.entries.insert(
            kernel,
            Entry {
                state: State::Held(file),
                limit,
                volumes,
                order,
            },
        );
    }

    /// Snapshot `kernel` is gone (destroyed or lost): its storage is
    /// counted as long as an older held snapshot may still read it.
    /// `used` measures a file's written bytes.
    pub(crate) fn destroyed(&mut self, kernel: Uuid, used: impl Fn(&File) -> Option<u64>) {
        if let Some(e) = self.entries.get_mut(&kernel) {
            if let State::Held(f) = &e.state {
                e.state = State::Gone {
                    used: used(f).unwrap_or(e.limit),
                };
            }
        }
        let held: Vec<(u64, Vec<String>)> = self
            .entries
            .values()
            .filter(|e| matches!(e.state, State::Held(_)))
            .map(|e| (e.order, e.volumes.clone()))
            .collect();
        self.entries.retain(|_, e| {
            matches!(e.state, State::Held(_))
                || held.iter().any(|(order, volumes)| {
                    *order < e.order && volumes.iter().any(|v| e.volumes.contains(v))
                })
        });
    }

    /// `(used, limit)` over all counted storages; `used` measures a held
    /// snapshot's file (a file it cannot read counts as full).
    pub(crate) fn totals(&self, used: impl Fn(&File) -> Option<u64>) -> (u64, u64) {
        self.entries.values().fold((0, 0), |(u, l), e| {
            let now = match &e.state {
                State::Held(f) => used(f).unwrap_or(e.limit),
                State::Gone { used } => *used,
            };
            (u.saturating_add(now), l.saturating_add(e.limit))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> File {
        tempfile::tempfile().expect("tempfile")
    }

    /// Every file reads as 10 bytes written.
    fn ten(_: &File) -> Option<u64> {
        Some(10)
    }

    #[test]
    fn a_destroyed_storage_counts_while_an_older_snapshot_of_its_volume_is_held() {
        let mut s = Storages::default();
        let (a1, a2, b1) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let vol = |v: &str| vec![v.to_owned()];
        s.taken(a1, file(), 100, vol("a"));
        s.taken(b1, file(), 1000, vol("b"));
        s.taken(a2, file(), 100, vol("a"));
        assert_eq!(s.totals(ten), (30, 1200));

        // The newest of "a" goes: the older one may read its copies.
        s.destroyed(a2, |_| Some(7));
        assert_eq!(s.totals(ten), (27, 1200), "a2 as of its destroy");
        // Another volume's snapshot keeps nothing of "a".
        s.destroyed(b1, ten);
        assert_eq!(s.totals(ten), (17, 200));
        // The last of "a": both of its storages are let go.
        s.destroyed(a1, ten);
        assert_eq!(s.totals(ten), (0, 0));
    }

    #[test]
    fn an_older_snapshot_destroyed_first_is_let_go_at_once() {
        let mut s = Storages::default();
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        s.taken(old, file(), 100, vec!["a".into()]);
        s.taken(new, file(), 100, vec!["a".into()]);
        s.destroyed(old, ten);
        assert_eq!(s.totals(ten), (10, 100), "only the newer one's");
        // A group's storage is kept by an older snapshot of any member.
        let (single, group) = (Uuid::new_v4(), Uuid::new_v4());
        s.taken(single, file(), 50, vec!["b".into()]);
        s.taken(group, file(), 200, vec!["c".into(), "b".into()]);
        s.destroyed(group, ten);
        assert_eq!(s.totals(ten), (30, 350));
        s.destroyed(single, ten);
        assert_eq!(s.totals(ten), (10, 100));
        // A file that cannot be read counts as full.
        assert_eq!(s.totals(|_| None), (100, 100));
    }
}
