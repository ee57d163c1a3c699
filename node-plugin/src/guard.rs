//! Per-object operation guards.
//!
//! The CO should send one call per volume at a time but may not (after its
//! own restart, say). A call takes the guards of the objects it works on
//! (a volume, a snapshot name, ...) before doing anything; a second call
//! that wants one of them is answered `ABORTED` at once instead of racing
//! the first. A guard is released when it is dropped, so every return path,
//! panics included, gives it back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// The set of objects with a call in flight.
#[derive(Debug, Clone, Default)]
pub struct Locks {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Holds the objects of one call until dropped.
#[derive(Debug)]
#[must_use = "the guard releases its objects when dropped"]
pub struct Guard {
    held: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl Locks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes all of `keys` or none: [`Error::Busy`] naming the first key
    /// another call holds.
    pub fn try_lock<I, S>(&self, keys: I) -> Result<Guard>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        keys.sort();
        keys.dedup();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = keys.iter().find(|k| held.contains(*k)) {
            return Err(Error::Busy(busy.clone()));
        }
        for k in &keys {
            held.insert(k.clone());
        }
        Ok(Guard {
            held: Arc::clone(&self.held),
            keys,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            held.remove(k);
        }
    }
}

/// Guard key of a volume.
pub fn volume_key(local: &str) -> String {
    format!("volume {local}")
}

/// Guard key of a volume's node calls: stage, publish, their undoing and
/// node expansion. Apart from [`volume_key`], which the controller's calls
/// take: the CO orders a volume's controller and node calls itself, and a
/// clone holds its source's volume key for the whole copy, which must not
/// hold off the source's pods.
pub fn node_volume_key(local: &str) -> String {
    format!("node volume {local}")
}

/// Guard key of a name (CreateVolume, CreateSnapshot, group snapshot).
pub fn name_key(kind: &str, name: &str) -> String {
    format!("{kind} name {name:?}")
}

/// Guard key of a snapshot record.
pub fn snapshot_key(key: &str) -> String {
    format!("snapshot {key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_call_is_aborted_until_the_first_drops() {
        let locks = Locks::new();
        let g = locks.try_lock(["a", "b"]).expect("free");
        match locks.try_lock(["c", "b"]) {
            Err(Error::Busy(k)) => assert_eq!(k, "b"),
            other => panic!("expected Busy, got {other:?}"),
        }
        // All or nothing: "c" was not taken by the failed attempt.
        let c = locks.try_lock(["c"]).expect("c is free");
        drop(c);
        drop(g);
        let _again = locks.try_lock(["a", "b", "c"]).expect("released on drop");
    }

    #[test]
    fn released_on_panic() {
        let locks = Locks::new();
        let l2 = locks.clone();
        let r = std::thread::spawn(move || {
            let _g = l2.try_lock(["x"]).expect("free");
            panic!("call failed");
        })
        .join();
        assert!(r.is_err());
        let _g = locks.try_lock(["x"]).expect("released by the unwinding");
    }

    #[test]
    fn duplicate_keys_in_one_call_are_fine() {
        let locks = Locks::new();
        let _g = locks.try_lock(["v", "v"]).expect("one call, one key");
    }
}
