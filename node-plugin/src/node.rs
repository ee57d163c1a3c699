//! CSI Node, for the kubelet: stage, publish, statistics and expansion of
//! this node's volumes, as raw block devices or file systems.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use csi::node_server::Node;
use csi::node_service_capability::rpc::Type as Cap;
use csi_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use crate::backend::device_size;
use crate::csi_convert::{access_of, topology, Access};
use crate::guard::{node_volume_key, Guard};
use crate::plugin::Plugin;
use crate::server::blocking;
use crate::{block_volume, filesystem_volume, format, mount, Error, Result};
use blksnap_node_api::ids::VolumeId;

/// The Node service.
///
/// Each call checks its request in the order of the CSI spec's tables:
/// missing fields (`INVALID_ARGUMENT`), then the volume (`NOT_FOUND`), then
/// the values of the other fields.
#[derive(Debug, Clone)]
pub struct NodeService {
    plugin: Arc<Plugin>,
    max_volumes: i64,
    kubelet: Arc<KubeletDir>,
}

/// The kubelet's directory, below which lie all the paths a call may
/// mount on, unmount or remove.
#[derive(Debug)]
struct KubeletDir {
    /// As configured, the form in which the kubelet names its paths.
    given: PathBuf,
    /// With symbolic links resolved.
    real: PathBuf,
}

impl KubeletDir {
    /// `v` as a path below the kubelet's directory: absolute, without
    /// `..`, and still below it once the links of the part that exists
    /// are resolved.
    fn path(&self, field: &'static str, v: &str) -> Result<PathBuf> {
        let p = PathBuf::from(v);
        if !p.is_absolute() {
            return Err(Error::invalid(field, "must be an absolute path"));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(Error::invalid(field, "must not contain \"..\""));
        }
        let below = |q: &Path, dir: &Path| q.starts_with(dir) && q != dir;
        if !below(&p, &self.given) {
            return Err(Error::invalid(
                field,
                format!(
                    "must be below the kubelet's directory {}",
                    self.given.display()
                ),
            ));
        }
        // The root always resolves, so some ancestor does.
        let resolved = p.ancestors().find_map(|a| std::fs::canonicalize(a).ok());
        if !resolved.is_some_and(|r| r.starts_with(&self.real)) {
            return Err(Error::invalid(
                field,
                format!(
                    "leads out of the kubelet's directory {} through a symbolic link",
                    self.given.display()
                ),
            ));
        }
        Ok(p)
    }

    /// `v` as a path a volume was published at. The plugin publishes only
    /// below the kubelet's directory, so any other path (relative, outside
    /// it, through `..` or a link out of it) is one the volume is not at:
    /// NOT_FOUND, as the spec and csi-sanity want of NodeGetVolumeStats,
    /// not a malformed request.
    fn published_path(&self, field: &'static str, v: &str) -> Result<PathBuf> {
        self.path(field, v).map_err(|_| Error::not_found(field, v))
    }
}

fn required(field: &'static str, v: &str) -> Result<()> {
    if v.is_empty() {
        Err(Error::Missing(field))
    } else {
        Ok(())
    }
}

/// A volume id of this plugin's form; any other names no volume here.
fn volume_id(v: &str) -> Result<VolumeId> {
    v.parse().map_err(|_| Error::not_found("volume", v))
}

/// SINGLE_NODE_SINGLE_WRITER (Kubernetes' ReadWriteOncePod) allows one
/// target: a publication of `device` anywhere below the kubelet's
/// directory but at `staging` (its file system's stage) refuses another.
/// A publish again at a target that holds it is a repeat, whatever else
/// holds it: the kubelet binds a raw block target's node once more for
/// the pod, and asks again after its restart. Read from the mount table,
/// so it holds across restarts of the plugin.
fn check_single_writer(
    kubelet: &KubeletDir,
    cap: &csi::VolumeCapability,
    device: &Path,
    staging: &Path,
    target: &Path,
) -> Result<()> {
    use csi::volume_capability::access_mode::Mode;
    if cap.access_mode.as_ref().map(|m| m.mode()) != Some(Mode::SingleNodeSingleWriter) {
        return Ok(());
    }
    let (staging, target) = (
        std::fs::canonicalize(staging).ok(),
        std::fs::canonicalize(target).ok(),
    );
    let held = crate::mount::publications(&kubelet.real, device)?;
    if held.iter().any(|p| Some(p) == target.as_ref()) {
        return Ok(());
    }
    match held.into_iter().find(|p| Some(p) != staging.as_ref()) {
        Some(p) => Err(Error::Precondition(format!(
            "the volume is published at {} and its access mode SINGLE_NODE_SINGLE_WRITER allows one target",
            p.display()
        ))),
        None => Ok(()),
    }
}

fn is_readonly_mode(cap: &csi::VolumeCapability) -> bool {
    use csi::volume_capability::access_mode::Mode;
    cap.access_mode
        .as_ref()
        .is_some_and(|m| m.mode() == Mode::SingleNodeReaderOnly)
}

impl NodeService {
    /// The Node service; `kubelet_dir` (which must exist) bounds the paths
    /// calls may name.
    pub fn new(plugin: Arc<Plugin>, max_volumes: i64, kubelet_dir: &Path) -> Result<Self> {
        let real =
            std::fs::canonicalize(kubelet_dir).map_err(|e| Error::io("resolve", kubelet_dir, e))?;
        Ok(NodeService {
            plugin,
            max_volumes,
            kubelet: Arc::new(KubeletDir {
                given: kubelet_dir.to_path_buf(),
                real,
            }),
        })
    }

    /// Takes the guard of a volume's node calls, then finds its device, so
    /// that all a call reads of its volume is read under the guard.
    fn locked_device(plugin: &Plugin, vid: &VolumeId) -> Result<(Guard, PathBuf)> {
        let guard = plugin.locks.try_lock([node_volume_key(&vid.local)])?;
        let dev = plugin.device_of(&plugin.volume(vid)?)?;
        Ok((guard, dev))
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = request.into_inner();
        required("volume_id", &r.volume_id)?;
        required("staging_target_path", &r.staging_target_path)?;
        let cap = r
            .volume_capability
            .ok_or(Error::Missing("volume_capability"))?;
        let vid = volume_id(&r.volume_id)?;
        let (plugin, kubelet) = (Arc::clone(&self.plugin), Arc::clone(&self.kubelet));
        blocking(move || {
            let (_guard, dev) = Self::locked_device(&plugin, &vid)?;
            let staging = kubelet.path("staging_target_path", &r.staging_target_path)?;
            match access_of(&cap)? {
                // A raw block volume is published straight from its device.
                Access::Block => Ok(()),
                Access::Mount { fs_type, flags } => filesystem_volume::stage(
                    &dev,
                    &staging,
                    &fs_type,
                    &flags,
                    is_readonly_mode(&cap),
                ),
            }
        })
        .await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = request.into_inner();
        required("volume_id", &r.volume_id)?;
        required("staging_target_path", &r.staging_target_path)?;
        let vid = volume_id(&r.volume_id)?;
        let (plugin, kubelet) = (Arc::clone(&self.plugin), Arc::clone(&self.kubelet));
        blocking(move || {
            // No lookup: a volume whose record is gone can still be
            // unmounted.
            let _guard = plugin.locks.try_lock([node_volume_key(&vid.local)])?;
            let staging = kubelet.path("staging_target_path", &r.staging_target_path)?;
            filesystem_volume::unstage(&staging)
        })
        .await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = request.into_inner();
        required("volume_id", &r.volume_id)?;
        required("target_path", &r.target_path)?;
        let cap = r
            .volume_capability
            .ok_or(Error::Missing("volume_capability"))?;
        let vid = volume_id(&r.volume_id)?;
        let (plugin, kubelet) = (Arc::clone(&self.plugin), Arc::clone(&self.kubelet));
        blocking(move || {
            let (_guard, dev) = Self::locked_device(&plugin, &vid)?;
            if r.staging_target_path.is_empty() {
                // The spec's code for this case, as the plugin stages.
                return Err(Error::Precondition(
                    "staging_target_path is required: volumes are staged first".into(),
                ));
            }
            let staging = kubelet.path("staging_target_path", &r.staging_target_path)?;
            let target = kubelet.path("target_path", &r.target_path)?;
            let readonly = r.readonly || is_readonly_mode(&cap);
            let access = access_of(&cap)?;
            check_single_writer(&kubelet, &cap, &dev, &staging, &target)?;
            match access {
                Access::Block => block_volume::publish(&dev, &target, readonly),
                Access::Mount { .. } => {
                    filesystem_volume::publish(&dev, &staging, &target, readonly)
                }
            }
        })
        .await?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = request.into_inner();
        required("volume_id", &r.volume_id)?;
        required("target_path", &r.target_path)?;
        let vid = volume_id(&r.volume_id)?;
        let (plugin, kubelet) = (Arc::clone(&self.plugin), Arc::clone(&self.kubelet));
        blocking(move || {
            // No lookup, as in unstage.
            let _guard = plugin.locks.try_lock([node_volume_key(&vid.local)])?;
            let target = kubelet.path("target_path", &r.target_path)?;
            match std::fs::metadata(&target) {
                Ok(m) if m.is_dir() => filesystem_volume::unpublish(&target),
                Ok(_) => block_volume::unpublish(&target),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("stat", &target, e)),
            }
        })
        .await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        use csi::volume_usage::Unit;
        let r = request.into_inner();
        required("volume_id", &r.volume_id)?;
        required("volume_path", &r.volume_path)?;
        let vid = volume_id(&r.volume_id)?;
        let (plugin, kubelet) = (Arc::clone(&self.plugin), Arc::clone(&self.kubelet));
        let response = blocking(move || {
            // Only reads: no guard, so that a long call on the volume does
            // not hide its statistics.
            let dev = plugin.device_of(&plugin.volume(&vid)?)?;
            let volume_path = kubelet.published_path("volume_path", &r.volume_path)?;
            let meta = match std::fs::metadata(&volume_path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::not_found(
                        "volume path",
                        volume_path.display().to_string(),
                    ))
                }
                Err(e) => return Err(Error::io("stat", &volume_path, e)),
            };
            let condition = if dev.exists() {
                csi::VolumeCondition {
                    abnormal: false,
                    message: "volume is healthy".into(),
                }
            } else {
                csi::VolumeCondition {
                    abnormal: true,
                    message: format!("device {} is missing", dev.display()),
                }
            };
            let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let usage = if meta.is_dir() {
                let [b, n] = filesystem_volume::usage(&volume_path)?;
                vec![
                    csi::VolumeUsage {
                        available: i(b.0),
                        total: i(b.1),
                        used: i(b.2),
                        unit: Unit::Bytes as i32,
                    },
                    csi::VolumeUsage {
                        available: i(n.0),
                        total: i(n.1),
                        used: i(n.2),
                        unit: Unit::Inodes as i32,
                    },
                ]
            } else {
                let f = File::open(&volume_path).map_err(|e| Error::io("open", &volume_path, e))?;
                vec![csi::VolumeUsage {
                    available: 0,
                    total: i(device_size(&f, &volume_path)?),
                    used: 0,
                    unit: Unit::Bytes as i32,
                }]
            };
            Ok(csi::NodeGetVolumeStatsResponse {
                usage,
                volume_condition: Some(condition),
            })
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        required("volume_id", &r.volume_id)?;
        required("volume_path", &r.volume_path)?;
        let vid = volume_id(&r.volume_id)?;
        let (plugin, kubelet) = (Arc::clone(&self.plugin), Arc::clone(&self.kubelet));
        let capacity = blocking(move || {
            let (_guard, dev) = Self::locked_device(&plugin, &vid)?;
            let volume_path = kubelet.path("volume_path", &r.volume_path)?;
            let access = r.volume_capability.as_ref().map(access_of).transpose()?;
            let f = File::open(&dev).map_err(|e| Error::io("open", &dev, e))?;
            let size = device_size(&f, &dev)?;
            let is_fs = match access {
                Some(Access::Block) => false,
                Some(Access::Mount { .. }) => true,
                None => volume_path.is_dir(),
            };
            if is_fs {
                // Only this volume's own mount: xfs_growfs grows whatever
                // is mounted at the path.
                let own = mount::device_number(&dev)?;
                let m = mount::mount_at(&volume_path)?
                    .filter(|m| m.device == own)
                    .ok_or_else(|| {
                        Error::not_found("the volume's mount at", volume_path.display().to_string())
                    })?;
                format::grow(&dev, &volume_path, &m.fs_type)?;
            }
            Ok(size)
        })
        .await?;
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: i64::try_from(capacity).unwrap_or(i64::MAX),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let caps = [
            Cap::StageUnstageVolume,
            Cap::GetVolumeStats,
            Cap::ExpandVolume,
            Cap::SingleNodeMultiWriter,
        ];
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: caps
                .into_iter()
                .map(|t| csi::NodeServiceCapability {
                    r#type: Some(csi::node_service_capability::Type::Rpc(
                        csi::node_service_capability::Rpc { r#type: t as i32 },
                    )),
                })
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let node = &self.plugin.settings.node_id;
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: node.clone(),
            max_volumes_per_node: self.max_volumes,
            accessible_topology: Some(topology(node)),
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Argument checks of the Node RPCs on the test stand-ins; staging and
    //! publishing real devices (mkfs, mounts) run in the VM.

    use super::*;
    use crate::controller::tests::{block_cap, new_volume};
    use crate::testing::{Env, NODE};
    use blksnap_node_api::TOPOLOGY_KEY;
    use tonic::Code;

    fn stage(
        volume_id: &str,
        staging: &str,
        cap: Option<csi::VolumeCapability>,
    ) -> csi::NodeStageVolumeRequest {
        csi::NodeStageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.into(),
            volume_capability: cap,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn stage_and_publish_argument_codes() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", 1 << 20);
        let unknown = format!("v1:nothere:{NODE}");
        let staging = env.dir.path().join("staging");
        let staging = staging.to_str().expect("utf-8");
        let cases = [
            (
                "missing volume",
                stage("", staging, Some(block_cap())),
                Code::InvalidArgument,
            ),
            (
                "missing staging path",
                stage(&v, "", Some(block_cap())),
                Code::InvalidArgument,
            ),
            (
                "relative staging path",
                stage(&v, "rel/path", Some(block_cap())),
                Code::InvalidArgument,
            ),
            (
                "missing capability",
                stage(&v, staging, None),
                Code::InvalidArgument,
            ),
            (
                "unknown volume",
                stage(&unknown, staging, Some(block_cap())),
                Code::NotFound,
            ),
            (
                "not our id",
                stage("pvc-123", staging, Some(block_cap())),
                Code::NotFound,
            ),
            (
                "block stage",
                stage(&v, staging, Some(block_cap())),
                Code::Ok,
            ),
        ];
        for (name, req, want) in cases {
            let got = env.node.node_stage_volume(Request::new(req)).await;
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                want,
                "case {name:?}"
            );
        }
        let publish = |volume_id: &str, target: &str| csi::NodePublishVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.into(),
            target_path: target.into(),
            volume_capability: Some(block_cap()),
            ..Default::default()
        };
        let target = env.dir.path().join("target");
        let target = target.to_str().expect("utf-8");
        for (name, req, want) in [
            ("missing target", publish(&v, ""), Code::InvalidArgument),
            ("missing volume", publish("", target), Code::InvalidArgument),
            ("unknown volume", publish(&unknown, target), Code::NotFound),
            (
                "unknown volume, relative target",
                publish(&unknown, "rel/target"),
                Code::NotFound,
            ),
            (
                "missing staging path",
                csi::NodePublishVolumeRequest {
                    staging_target_path: String::new(),
                    ..publish(&v, target)
                },
                Code::FailedPrecondition,
            ),
            (
                "target outside",
                publish(&v, "/tmp/target"),
                Code::InvalidArgument,
            ),
        ] {
            let got = env.node.node_publish_volume(Request::new(req)).await;
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                want,
                "case {name:?}"
            );
        }
        for (name, req, want) in [
            (
                "unpublish missing volume",
                csi::NodeUnpublishVolumeRequest {
                    volume_id: String::new(),
                    target_path: target.into(),
                },
                Code::InvalidArgument,
            ),
            (
                "unpublish missing target",
                csi::NodeUnpublishVolumeRequest {
                    volume_id: v.clone(),
                    target_path: String::new(),
                },
                Code::InvalidArgument,
            ),
            (
                "unpublish of nothing",
                csi::NodeUnpublishVolumeRequest {
                    volume_id: v.clone(),
                    target_path: target.into(),
                },
                Code::Ok,
            ),
        ] {
            let got = env.node.node_unpublish_volume(Request::new(req)).await;
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                want,
                "case {name:?}"
            );
        }
        for (name, req, want) in [
            (
                "unstage missing path",
                csi::NodeUnstageVolumeRequest {
                    volume_id: v.clone(),
                    staging_target_path: String::new(),
                },
                Code::InvalidArgument,
            ),
            (
                "unstage of nothing",
                csi::NodeUnstageVolumeRequest {
                    volume_id: v.clone(),
                    staging_target_path: staging.into(),
                },
                Code::Ok,
            ),
        ] {
            let got = env.node.node_unstage_volume(Request::new(req)).await;
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                want,
                "case {name:?}"
            );
        }
    }

    #[tokio::test]
    async fn stats_and_expand_argument_codes() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", 1 << 20);
        let dir = env.dir.path().to_str().expect("utf-8").to_owned();
        let sub = format!("{dir}/pool");
        let stats = |volume_id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
            volume_id: volume_id.into(),
            volume_path: path.into(),
            staging_target_path: String::new(),
        };
        for (name, req, want) in [
            ("missing volume", stats("", &dir), Code::InvalidArgument),
            ("missing path", stats(&v, ""), Code::InvalidArgument),
            (
                "unknown volume",
                stats(&format!("v1:nothere:{NODE}"), &dir),
                Code::NotFound,
            ),
            (
                "missing path on disk",
                stats(&v, &format!("{dir}/nothing")),
                Code::NotFound,
            ),
            (
                "unknown volume, relative path",
                stats(&format!("v1:nothere:{NODE}"), "some/path"),
                Code::NotFound,
            ),
            ("relative path", stats(&v, "some/path"), Code::NotFound),
            (
                "the kubelet's directory itself",
                stats(&v, &dir),
                Code::NotFound,
            ),
            (
                "a path outside the kubelet's directory",
                stats(&v, "/nonexistent/path"),
                Code::NotFound,
            ),
            ("a directory", stats(&v, &sub), Code::Ok),
        ] {
            let got = env.node.node_get_volume_stats(Request::new(req)).await;
            if let Ok(r) = &got {
                let r = r.get_ref();
                assert_eq!(r.usage.len(), 2, "bytes and inodes");
                assert!(r.usage[0].total > 0);
                assert!(!r.volume_condition.as_ref().expect("condition").abnormal);
            }
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                want,
                "case {name:?}"
            );
        }
        for (name, req, want) in [
            (
                "missing volume",
                csi::NodeExpandVolumeRequest {
                    volume_path: dir.clone(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
            (
                "missing path",
                csi::NodeExpandVolumeRequest {
                    volume_id: v.clone(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
            (
                "unknown volume",
                csi::NodeExpandVolumeRequest {
                    volume_id: format!("v1:nothere:{NODE}"),
                    volume_path: sub.clone(),
                    ..Default::default()
                },
                Code::NotFound,
            ),
            (
                "unknown volume, relative path",
                csi::NodeExpandVolumeRequest {
                    volume_id: format!("v1:nothere:{NODE}"),
                    volume_path: "some/path".into(),
                    ..Default::default()
                },
                Code::NotFound,
            ),
            (
                "relative path",
                csi::NodeExpandVolumeRequest {
                    volume_id: v.clone(),
                    volume_path: "some/path".into(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
        ] {
            let got = env.node.node_expand_volume(Request::new(req)).await;
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                want,
                "case {name:?}"
            );
        }
    }

    #[tokio::test]
    async fn paths_outside_the_kubelet_directory_are_refused_and_left_alone() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", 1 << 20);
        let outside = tempfile::tempdir().expect("tempdir");
        let file = outside.path().join("file");
        std::fs::write(&file, b"keep").expect("write");
        let link = env.dir.path().join("link");
        std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
        let dir = env.dir.path().display().to_string();
        for (name, path) in [
            ("outside", file.display().to_string()),
            (
                "through ..",
                format!("{dir}/state/../../{}/file", outside.path().display()),
            ),
            ("through a link", format!("{dir}/link/file")),
            ("the kubelet's directory", dir.clone()),
        ] {
            let got = env
                .node
                .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                    volume_id: v.clone(),
                    target_path: path,
                }))
                .await;
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                Code::InvalidArgument,
                "case {name:?}"
            );
        }
        assert!(file.exists() && env.dir.path().exists());
    }

    #[tokio::test]
    async fn info_and_capabilities() {
        let env = Env::new();
        let info = env
            .node
            .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.node_id, NODE);
        assert_eq!(
            info.accessible_topology
                .expect("topology")
                .segments
                .get(TOPOLOGY_KEY)
                .map(String::as_str),
            Some(NODE)
        );
        let caps: Vec<i32> = env
            .node
            .node_get_capabilities(Request::new(csi::NodeGetCapabilitiesRequest {}))
            .await
            .expect("caps")
            .into_inner()
            .capabilities
            .into_iter()
            .filter_map(|c| {
                c.r#type
                    .map(|csi::node_service_capability::Type::Rpc(r)| r.r#type)
            })
            .collect();
        for want in [
            Cap::StageUnstageVolume,
            Cap::GetVolumeStats,
            Cap::ExpandVolume,
            Cap::SingleNodeMultiWriter,
        ] {
            assert!(caps.contains(&(want as i32)), "{want:?}");
        }
    }
}
