//! CSI GroupController: one kernel snapshot across several volumes of
//! this node, taken at one instant.

use std::sync::Arc;

use csi::group_controller_server::GroupController;
use csi_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use crate::csi_convert::{annotate_lost, csi_snapshot, timestamp};
use crate::plugin::Plugin;
use crate::server::blocking;
use crate::state::{GroupRecord, SnapshotRecord};
use crate::Error;

/// The GroupController service.
#[derive(Debug, Clone)]
pub struct GroupControllerService {
    plugin: Arc<Plugin>,
}

impl GroupControllerService {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        GroupControllerService { plugin }
    }

    fn csi_group(&self, g: &GroupRecord, members: &[SnapshotRecord]) -> csi::VolumeGroupSnapshot {
        csi::VolumeGroupSnapshot {
            group_snapshot_id: self.plugin.group_id(g).to_string(),
            snapshots: members
                .iter()
                .map(|m| csi_snapshot(&self.plugin, m))
                .collect(),
            creation_time: Some(timestamp(g.created_secs, g.created_nanos)),
            ready_to_use: !members.is_empty() && members.iter().all(|m| m.lost.is_none()),
        }
    }
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _request: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(
            blksnap_node_api::capabilities::group_controller_response(),
        ))
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        if r.source_volume_ids.is_empty() {
            return Err(Error::Missing("source_volume_ids").into());
        }
        let plugin = Arc::clone(&self.plugin);
        let (g, members) =
            blocking(move || plugin.create_group(&r.name, &r.source_volume_ids, &r.parameters))
                .await?;
        let mut response = Response::new(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.csi_group(&g, &members)),
        });
        annotate_lost(&self.plugin, &mut response, &members);
        Ok(response)
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        let r = request.into_inner();
        if r.group_snapshot_id.is_empty() {
            return Err(Error::Missing("group_snapshot_id").into());
        }
        let plugin = Arc::clone(&self.plugin);
        blocking(move || plugin.delete_group(&r.group_snapshot_id, &r.snapshot_ids)).await?;
        Ok(Response::new(csi::DeleteVolumeGroupSnapshotResponse {}))
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        let r = request.into_inner();
        if r.group_snapshot_id.is_empty() {
            return Err(Error::Missing("group_snapshot_id").into());
        }
        let plugin = Arc::clone(&self.plugin);
        let (g, members) =
            blocking(move || plugin.get_group(&r.group_snapshot_id, &r.snapshot_ids)).await?;
        let mut response = Response::new(csi::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.csi_group(&g, &members)),
        });
        annotate_lost(&self.plugin, &mut response, &members);
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    //! GroupController against the spec's codes, on the test stand-ins.

    use super::*;
    use crate::controller::tests::{new_snapshot, new_volume};
    use crate::testing::{Env, FAKE_SNAPSHOTS_PER_DEVICE, NODE};
    use std::collections::BTreeSet;
    use tonic::Code;

    const MIB: i64 = 1 << 20;

    fn create(names: &[String], name: &str) -> csi::CreateVolumeGroupSnapshotRequest {
        csi::CreateVolumeGroupSnapshotRequest {
            name: name.into(),
            source_volume_ids: names.to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn one_kernel_snapshot_across_the_volumes() {
        let env = Env::new();
        let vols = vec![new_volume(&env, "a", MIB), new_volume(&env, "b", MIB)];
        let g = env
            .groups
            .create_volume_group_snapshot(Request::new(create(&vols, "g1")))
            .await
            .expect("create")
            .into_inner()
            .group_snapshot
            .expect("group");
        assert!(g.ready_to_use);
        assert_eq!(g.snapshots.len(), 2);
        assert_eq!(env.kernel.held().len(), 1, "one kernel snapshot");
        let mut sources: Vec<&str> = g
            .snapshots
            .iter()
            .map(|s| s.source_volume_id.as_str())
            .collect();
        sources.sort();
        let mut want: Vec<&str> = vols.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(sources, want);
        for s in &g.snapshots {
            assert_eq!(s.group_snapshot_id, g.group_snapshot_id);
            assert!(s.ready_to_use);
        }
        // Idempotent by name, also in another order.
        let again = env
            .groups
            .create_volume_group_snapshot(Request::new(create(
                &[vols[1].clone(), vols[0].clone()],
                "g1",
            )))
            .await
            .expect("again")
            .into_inner()
            .group_snapshot
            .expect("group");
        assert_eq!(again.group_snapshot_id, g.group_snapshot_id);

        let ids: Vec<String> = g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
        let got = env
            .groups
            .get_volume_group_snapshot(Request::new(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: g.group_snapshot_id.clone(),
                snapshot_ids: ids.clone(),
                ..Default::default()
            }))
            .await
            .expect("get")
            .into_inner()
            .group_snapshot
            .expect("group");
        assert_eq!(got.group_snapshot_id, g.group_snapshot_id);

        let bad = env
            .groups
            .delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: g.group_snapshot_id.clone(),
                snapshot_ids: vec![ids[0].clone()],
                ..Default::default()
            }))
            .await;
        assert_eq!(bad.err().map(|s| s.code()), Some(Code::InvalidArgument));
        // The same group named as another node's: misrouted, refused, kept.
        let mut foreign: blksnap_node_api::ids::GroupSnapshotId =
            g.group_snapshot_id.parse().expect("group id");
        foreign.node = "node-b".into();
        let misrouted = env
            .groups
            .delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: foreign.to_string(),
                snapshot_ids: ids.clone(),
                ..Default::default()
            }))
            .await;
        assert_eq!(
            misrouted.err().map(|s| s.code()),
            Some(Code::InvalidArgument)
        );
        assert!(!env.kernel.held().is_empty(), "the group is kept");
        env.groups
            .delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: g.group_snapshot_id.clone(),
                snapshot_ids: ids,
                ..Default::default()
            }))
            .await
            .expect("delete");
        assert!(env.kernel.held().is_empty());
        let gone = env
            .groups
            .get_volume_group_snapshot(Request::new(csi::GetVolumeGroupSnapshotRequest {
                group_snapshot_id: g.group_snapshot_id.clone(),
                ..Default::default()
            }))
            .await;
        assert_eq!(gone.err().map(|s| s.code()), Some(Code::NotFound));
        // Deleting again is fine.
        env.groups
            .delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: g.group_snapshot_id,
                ..Default::default()
            }))
            .await
            .expect("delete again");
    }

    #[tokio::test]
    async fn create_group_codes() {
        type Setup = Box<dyn Fn(&Env) -> csi::CreateVolumeGroupSnapshotRequest>;
        let cases: Vec<(&str, Setup, Code)> = vec![
            (
                "missing name",
                Box::new(|e| create(&[new_volume(e, "a", MIB)], "")),
                Code::InvalidArgument,
            ),
            (
                "missing volumes",
                Box::new(|_e| create(&[], "g")),
                Code::InvalidArgument,
            ),
            (
                "unknown volume",
                Box::new(|e| {
                    create(
                        &[new_volume(e, "a", MIB), format!("v1:nothere:{NODE}")],
                        "g",
                    )
                }),
                Code::NotFound,
            ),
            (
                "volume id not ours",
                Box::new(|_e| create(&["x".into()], "g")),
                Code::NotFound,
            ),
            (
                "volume of another node",
                Box::new(|_e| create(&["v1:abc:node-b".into()], "g")),
                Code::InvalidArgument,
            ),
            (
                "same name, other volumes",
                Box::new(|e| {
                    let a = new_volume(e, "a", MIB);
                    let b = new_volume(e, "b", MIB);
                    e.plugin
                        .create_group("g", std::slice::from_ref(&a), &Default::default())
                        .expect("first");
                    create(&[b], "g")
                }),
                Code::AlreadyExists,
            ),
            (
                "a member holds a snapshot",
                Box::new(|e| {
                    let a = new_volume(e, "a", MIB);
                    new_snapshot(e, "s", &a);
                    create(&[a, new_volume(e, "b", MIB)], "g")
                }),
                Code::Ok,
            ),
            (
                "a member is in as many snapshots as the module keeps",
                Box::new(|e| {
                    let a = new_volume(e, "a", MIB);
                    for i in 0..FAKE_SNAPSHOTS_PER_DEVICE {
                        new_snapshot(e, &format!("s{i}"), &a);
                    }
                    create(&[new_volume(e, "b", MIB), a], "g")
                }),
                Code::FailedPrecondition,
            ),
        ];
        for (name, setup, want) in cases {
            let env = Env::new();
            let req = setup(&env);
            let got = env
                .groups
                .create_volume_group_snapshot(Request::new(req))
                .await;
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                want,
                "case {name:?}"
            );
            if want != Code::Ok {
                let recorded: BTreeSet<uuid::Uuid> = env
                    .plugin
                    .state
                    .read(|t| t.snapshots.values().map(|s| s.kernel).collect());
                let held: BTreeSet<uuid::Uuid> = env.kernel.held().into_iter().collect();
                assert_eq!(held, recorded, "{name}: nothing half made");
            }
        }
    }

    #[tokio::test]
    async fn get_and_delete_codes() {
        let env = Env::new();
        for (id, want) in [
            (String::new(), Code::InvalidArgument),
            // Not our id: no such group here (DeleteVolumeGroupSnapshot
            // answers OK for it).
            ("x".to_owned(), Code::NotFound),
        ] {
            let got = env
                .groups
                .get_volume_group_snapshot(Request::new(csi::GetVolumeGroupSnapshotRequest {
                    group_snapshot_id: id.clone(),
                    ..Default::default()
                }))
                .await;
            assert_eq!(got.err().map(|s| s.code()), Some(want), "{id}");
        }
        let missing = env
            .groups
            .delete_volume_group_snapshot(Request::new(
                csi::DeleteVolumeGroupSnapshotRequest::default(),
            ))
            .await;
        assert_eq!(missing.err().map(|s| s.code()), Some(Code::InvalidArgument));
        env.groups
            .delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: "unknown".into(),
                ..Default::default()
            }))
            .await
            .expect("unknown group: OK");
    }

    /// The process died after the members' records were written and
    /// before the group's, which is the commit point of a group take.
    fn half_made_group(env: &Env) -> Vec<SnapshotRecord> {
        let vols = vec![new_volume(env, "a", MIB), new_volume(env, "b", MIB)];
        let (g, members) = env
            .plugin
            .create_group("g1", &vols, &Default::default())
            .expect("group");
        env.plugin
            .state
            .remove::<GroupRecord>(&g.key())
            .expect("remove");
        members
    }

    #[tokio::test]
    async fn deleting_one_member_of_a_half_made_group_keeps_the_kernel_snapshot() {
        let env = Env::new();
        let members = half_made_group(&env);
        let id = |m: &SnapshotRecord| env.plugin.snapshot_id(m).to_string();
        env.plugin
            .delete_snapshot(&id(&members[0]))
            .expect("delete one member");
        assert_eq!(env.kernel.held(), vec![members[0].kernel], "still used");
        let (left, _) = env
            .plugin
            .list_snapshots(&Default::default())
            .expect("list");
        assert_eq!(left.len(), 1);
        assert!(left[0].lost.is_none(), "the other member is still served");
        env.plugin
            .delete_snapshot(&id(&members[1]))
            .expect("delete the last member");
        assert!(env.kernel.held().is_empty(), "released with the last one");
    }

    #[tokio::test]
    async fn a_half_made_group_is_undone_at_start() {
        let env = Env::new();
        let members = half_made_group(&env);
        let env = env.restart();
        assert!(env.kernel.held().is_empty(), "kernel snapshot released");
        let (left, _) = env
            .plugin
            .list_snapshots(&Default::default())
            .expect("list");
        assert!(left.is_empty(), "member records removed: {left:?}");
        // The sidecar's retry makes the group anew.
        let vols: Vec<String> = members
            .iter()
            .map(|m| format!("v1:{}:{NODE}", m.volume))
            .collect();
        env.groups
            .create_volume_group_snapshot(Request::new(create(&vols, "g1")))
            .await
            .expect("retried create");
    }

    #[tokio::test]
    async fn a_group_is_not_deleted_while_a_member_is_restored() {
        let env = Env::new();
        let vols = vec![new_volume(&env, "a", MIB), new_volume(&env, "b", MIB)];
        let (g, members) = env
            .plugin
            .create_group("g1", &vols, &Default::default())
            .expect("group");
        // A CreateVolume copying from member 0 holds its guard.
        let restoring = env
            .plugin
            .locks
            .try_lock([crate::guard::snapshot_key(&members[0].key())])
            .expect("free");
        let gid = env.plugin.group_id(&g).to_string();
        assert!(matches!(
            env.plugin.delete_group(&gid, &[]),
            Err(crate::Error::Busy(_))
        ));
        assert_eq!(env.kernel.held(), vec![g.kernel], "the group is kept");
        drop(restoring);
        env.plugin.delete_group(&gid, &[]).expect("delete");
        assert!(env.kernel.held().is_empty());
    }
}
