//! Collecting node snapshots that no content refers to any more, so that
//! no difference storage leaks: a snapshot whose CreateSnapshot answer was
//! lost and whose VolumeSnapshot was then deleted, one left behind by a
//! content deleted while its node was unreachable, or by a content with
//! `deletionPolicy: Retain` that was deleted (a kernel snapshot on a node
//! cannot be kept for later import the way a cloud snapshot can: it costs
//! copy-on-write on every write to the volume).
//!
//! A snapshot being created has no content with its handle yet: the
//! csi-snapshotter creates the content (with `source.volumeHandle`),
//! calls CreateSnapshot, and only then writes the handle into the
//! content's status. Three things keep such a snapshot safe:
//! - each pass lists the nodes first and reads the contents from the API
//!   (not a cache) after, so a handle written before the read is seen;
//! - a content or group content of a volume that has no handle yet
//!   protects every unreferenced snapshot of that volume (the sidecar
//!   retries CreateSnapshot with the same name after a crash, which
//!   returns the same snapshot);
//! - a snapshot is deleted only once it has been seen unreferenced for the
//!   whole grace period by this process's clock *and* was created more
//!   than the grace period ago by its node's clock, so the window between
//!   CreateSnapshot returning and the status write (normally well under a
//!   second) must exceed the grace period (minutes) before anything goes.
//!   A new leader starts its clock afresh, which only delays collection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use kube::api::ListParams;
use kube::Api;
use tokio::time::{sleep, Instant};
use tracing::{info, warn};

use super::resources::{VolumeGroupSnapshotContent, VolumeSnapshotContent};
use super::{Context, NodeSnapshot, NodeSnapshots};
use crate::Result;

/// Sweeps every `orphan_interval` until cancelled.
pub async fn run<N: NodeSnapshots>(ctx: Arc<Context<N>>) {
    let mut unreferenced = HashMap::new();
    loop {
        if let Err(e) = sweep(&ctx, &mut unreferenced).await {
            warn!(error = %e, "collecting orphaned snapshots");
        }
        sleep(ctx.config.orphan_interval).await;
    }
}

/// What this driver's contents refer to.
#[derive(Default)]
struct References {
    /// Snapshot and group snapshot ids.
    ids: HashSet<String>,
    /// Volumes with a snapshot or group snapshot being created.
    creating: HashSet<String>,
}

impl References {
    async fn read<N: NodeSnapshots>(ctx: &Context<N>) -> Result<References> {
        let mut refs = References::default();
        let driver = ctx.config.driver.as_str();
        let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
        for c in contents.list(&ListParams::default()).await? {
            if c.spec.driver != driver {
                continue;
            }
            match c.handle() {
                Some(h) => {
                    refs.ids.insert(h.to_owned());
                }
                None => refs.creating.extend(c.spec.source.volume_handle.clone()),
            }
        }
        let groups: Api<VolumeGroupSnapshotContent> = Api::all(ctx.client.clone());
        for g in groups.list(&ListParams::default()).await? {
            if g.spec.driver != driver {
                continue;
            }
            refs.ids.extend(g.member_handles().map(str::to_owned));
            match g.group_handle() {
                Some(h) => {
                    refs.ids.insert(h.to_owned());
                }
                None => refs
                    .creating
                    .extend(g.spec.source.volume_handles.iter().flatten().cloned()),
            }
        }
        Ok(refs)
    }

    /// Whether the unit `id` (a snapshot, or a group with `members`) is
    /// referred to or may be being created.
    fn keep(&self, id: &str, members: &[&NodeSnapshot]) -> bool {
        self.ids.contains(id)
            || members
                .iter()
                .any(|m| self.ids.contains(&m.id) || self.creating.contains(&m.source_volume))
    }
}

/// One pass. `unreferenced` maps a unit (a snapshot id, or a group id for
/// its members, which go together) to when it was first seen unreferenced.
async fn sweep<N: NodeSnapshots>(
    ctx: &Context<N>,
    unreferenced: &mut HashMap<String, Instant>,
) -> Result<()> {
    let mut held = Vec::new();
    for node in ctx.nodes.nodes() {
        match ctx.nodes.list(&node).await {
            Ok(list) => held.extend(list),
            Err(e) => warn!(node, error = %e, "listing a node's snapshots; skipped this pass"),
        }
    }
    let refs = References::read(ctx).await?;

    let mut units: BTreeMap<&str, Vec<&NodeSnapshot>> = BTreeMap::new();
    for s in &held {
        units
            .entry(s.group.as_deref().unwrap_or(&s.id))
            .or_default()
            .push(s);
    }
    let grace = ctx.config.orphan_grace;
    let now = SystemTime::now();
    let mut still = HashSet::new();
    for (unit, members) in units {
        if refs.keep(unit, &members) {
            continue;
        }
        still.insert(unit.to_owned());
        let first = *unreferenced
            .entry(unit.to_owned())
            .or_insert_with(Instant::now);
        let old = members
            .iter()
            .all(|m| now.duration_since(m.created).is_ok_and(|age| age >= grace));
        if first.elapsed() < grace || !old {
            continue;
        }
        match ctx.nodes.delete(unit).await {
            Ok(()) => {
                info!(
                    snapshot = unit,
                    "deleted a node snapshot no content refers to"
                );
                ctx.metrics.orphans_deleted.inc();
                still.remove(unit);
            }
            Err(e) => warn!(snapshot = unit, error = %e, "deleting an orphaned snapshot"),
        }
    }
    unreferenced.retain(|unit, _| still.contains(unit));
    Ok(())
}
