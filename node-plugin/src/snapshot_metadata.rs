//! CSI SnapshotMetadata: which byte ranges of a snapshot hold data, and
//! which changed between two snapshots of a volume.
//!
//! Answers are VARIABLE_LENGTH tuples (adjacent changed blocks merged),
//! ascending, streamed in messages of `max_results` tuples (the plugin's
//! own batch when 0, never more than [`MAX_BATCH`]). The first message is
//! sent even when there are no ranges, so that the client learns the
//! volume's capacity.

use std::pin::Pin;
use std::sync::Arc;

use csi::snapshot_metadata_server::SnapshotMetadata;
use csi_proto::csi::v1 as csi;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::plugin::{MetadataPage, Plugin};
use crate::server::blocking;
use crate::Error;

/// Tuples per message when the client leaves the choice to us.
pub const DEFAULT_BATCH: usize = 1024;

/// Most tuples per message, whatever `max_results` asks (the spec lets the
/// plugin send fewer): a tuple encodes to at most 22 bytes, so a message
/// stays under 1.5 MiB, inside the 4 MiB that gRPC receivers accept by
/// default (Go's, so the snapshot-metadata sidecar's, and tonic's).
pub const MAX_BATCH: usize = 1 << 16;

/// The response stream of both calls.
pub type MetadataStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The SnapshotMetadata service.
#[derive(Debug, Clone)]
pub struct SnapshotMetadataService {
    plugin: Arc<Plugin>,
}

impl SnapshotMetadataService {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        SnapshotMetadataService { plugin }
    }
}

/// Tuples per message for a request's `max_results`.
pub fn batch(max_results: i32) -> Result<usize, Error> {
    match max_results {
        0 => Ok(DEFAULT_BATCH),
        n if n > 0 => Ok((n as usize).min(MAX_BATCH)),
        _ => Err(Error::invalid("max_results", "must not be negative")),
    }
}

/// Splits a page into the messages of a stream, each built only when the
/// stream gets to it. An empty page is still one message: it tells the
/// capacity.
pub fn messages(
    page: MetadataPage,
    batch: usize,
) -> impl Iterator<Item = (i64, Vec<csi::BlockMetadata>)> + Send + 'static {
    let capacity = i64::try_from(page.capacity).unwrap_or(i64::MAX);
    let batch = batch.max(1);
    let ranges = page.ranges;
    let count = ranges.len().div_ceil(batch).max(1);
    (0..count).map(move |i| {
        let part = &ranges[i * batch..((i + 1) * batch).min(ranges.len())];
        let tuples = part
            .iter()
            .map(|r| csi::BlockMetadata {
                byte_offset: r.start as i64,
                size_bytes: (r.end - r.start) as i64,
            })
            .collect();
        (capacity, tuples)
    })
}

/// The stream of a page's messages, as responses made by `response`.
fn stream_of<T: Send + 'static>(
    page: MetadataPage,
    batch: usize,
    response: impl Fn(i64, Vec<csi::BlockMetadata>) -> T + Send + 'static,
) -> MetadataStream<T> {
    Box::pin(tokio_stream::iter(
        messages(page, batch).map(move |(capacity, tuples)| Ok(response(capacity, tuples))),
    ))
}

#[tonic::async_trait]
impl SnapshotMetadata for SnapshotMetadataService {
    type GetMetadataAllocatedStream = MetadataStream<csi::GetMetadataAllocatedResponse>;
    type GetMetadataDeltaStream = MetadataStream<csi::GetMetadataDeltaResponse>;

    async fn get_metadata_allocated(
        &self,
        request: Request<csi::GetMetadataAllocatedRequest>,
    ) -> Result<Response<Self::GetMetadataAllocatedStream>, Status> {
        let r = request.into_inner();
        let batch = batch(r.max_results)?;
        let plugin = Arc::clone(&self.plugin);
        let page =
            blocking(move || plugin.metadata_allocated(&r.snapshot_id, r.starting_offset)).await?;
        Ok(Response::new(stream_of(page, batch, |cap, tuples| {
            csi::GetMetadataAllocatedResponse {
                block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes: cap,
                block_metadata: tuples,
            }
        })))
    }

    async fn get_metadata_delta(
        &self,
        request: Request<csi::GetMetadataDeltaRequest>,
    ) -> Result<Response<Self::GetMetadataDeltaStream>, Status> {
        let r = request.into_inner();
        let batch = batch(r.max_results)?;
        let plugin = Arc::clone(&self.plugin);
        let page = blocking(move || {
            plugin.metadata_delta(
                &r.base_snapshot_id,
                &r.target_snapshot_id,
                r.starting_offset,
            )
        })
        .await?;
        Ok(Response::new(stream_of(page, batch, |cap, tuples| {
            csi::GetMetadataDeltaResponse {
                block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes: cap,
                block_metadata: tuples,
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    //! The metadata RPCs against the spec's codes, on the test stand-ins
    //! (fresh state per case); the real change maps are checked in the VM.

    use super::*;
    use crate::controller::tests::{delete_snapshot, new_snapshot, new_volume};
    use crate::testing::{Env, BLOCK};
    use tokio_stream::StreamExt;
    use tonic::Code;

    const MIB: i64 = 1 << 20;

    async fn delta(
        env: &Env,
        base: &str,
        target: &str,
        starting_offset: i64,
        max_results: i32,
    ) -> Result<Vec<csi::GetMetadataDeltaResponse>, Status> {
        let mut s = env
            .metadata
            .get_metadata_delta(Request::new(csi::GetMetadataDeltaRequest {
                base_snapshot_id: base.into(),
                target_snapshot_id: target.into(),
                starting_offset,
                max_results,
                ..Default::default()
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            out.push(m?);
        }
        Ok(out)
    }

    async fn allocated(
        env: &Env,
        id: &str,
        starting_offset: i64,
    ) -> Result<Vec<csi::GetMetadataAllocatedResponse>, Status> {
        let mut s = env
            .metadata
            .get_metadata_allocated(Request::new(csi::GetMetadataAllocatedRequest {
                snapshot_id: id.into(),
                starting_offset,
                max_results: 0,
                ..Default::default()
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            out.push(m?);
        }
        Ok(out)
    }

    fn tuples(ms: &[csi::GetMetadataDeltaResponse]) -> Vec<(i64, i64)> {
        ms.iter()
            .flat_map(|m| {
                m.block_metadata
                    .iter()
                    .map(|b| (b.byte_offset, b.size_bytes))
            })
            .collect()
    }

    #[tokio::test]
    async fn delta_is_the_writes_between_and_survives_base_deletion_and_restart() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", 4 * MIB);
        let b = BLOCK as i64;
        env.write(&v, 0..BLOCK);
        let base = new_snapshot(&env, "s1", &v).snapshot_id;
        delete_snapshot(&env, &base);
        // Two adjacent blocks, and one further on.
        env.write(&v, 2 * BLOCK..4 * BLOCK);
        env.write(&v, 10 * BLOCK..10 * BLOCK + 1);
        let target = new_snapshot(&env, "s2", &v).snapshot_id;
        let want = vec![(2 * b, 2 * b), (10 * b, b)];
        let got = delta(&env, &base, &target, 0, 0).await.expect("delta");
        assert_eq!(tuples(&got), want);
        assert!(got.iter().all(|m| m.volume_capacity_bytes == 4 * MIB
            && m.block_metadata_type == csi::BlockMetadataType::VariableLength as i32));
        // Batches of one; a starting offset inside a range rounds down to
        // its block.
        let one = delta(&env, &base, &target, 0, 1).await.expect("delta");
        assert_eq!(one.len(), 2);
        assert_eq!(tuples(&one), want);
        let later = delta(&env, &base, &target, 3 * b + 7, 0)
            .await
            .expect("delta");
        assert_eq!(tuples(&later), vec![(3 * b, b), (10 * b, b)]);
        // Nothing after the last change: one message, no tuples.
        let none = delta(&env, &base, &target, 11 * b, 0).await.expect("delta");
        assert_eq!(none.len(), 1);
        assert!(none[0].block_metadata.is_empty());

        let env = env.restart();
        let got = delta(&env, &base, &target, 0, 0)
            .await
            .expect("delta after restart");
        assert_eq!(tuples(&got), want);
    }

    #[tokio::test]
    async fn delta_codes() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", 4 * MIB);
        let w = new_volume(&env, "pvc-w", 4 * MIB);
        let s1 = new_snapshot(&env, "s1", &v).snapshot_id;
        delete_snapshot(&env, &s1);
        let s2 = new_snapshot(&env, "s2", &v).snapshot_id;
        let other = new_snapshot(&env, "w1", &w).snapshot_id;
        let newer = {
            let mut id: blksnap_node_api::ids::SnapshotId = s2.parse().expect("id");
            id.number += 1;
            id.to_string()
        };
        let cases: Vec<(&str, String, String, i64, i32, Code)> = vec![
            ("ok", s1.clone(), s2.clone(), 0, 0, Code::Ok),
            ("same snapshot", s2.clone(), s2.clone(), 0, 0, Code::Ok),
            (
                "missing base",
                String::new(),
                s2.clone(),
                0,
                0,
                Code::InvalidArgument,
            ),
            (
                "missing target",
                s1.clone(),
                String::new(),
                0,
                0,
                Code::InvalidArgument,
            ),
            (
                "base id not ours",
                "x".into(),
                s2.clone(),
                0,
                0,
                Code::NotFound,
            ),
            (
                "target id not ours",
                s1.clone(),
                "x".into(),
                0,
                0,
                Code::NotFound,
            ),
            (
                "deleted target",
                s2.clone(),
                s1.clone(),
                0,
                0,
                Code::NotFound,
            ),
            (
                "base newer than target",
                newer,
                s2.clone(),
                0,
                0,
                Code::InvalidArgument,
            ),
            (
                "different volumes",
                s1.clone(),
                other.clone(),
                0,
                0,
                Code::InvalidArgument,
            ),
            (
                "negative offset",
                s1.clone(),
                s2.clone(),
                -1,
                0,
                Code::InvalidArgument,
            ),
            (
                "offset at the end",
                s1.clone(),
                s2.clone(),
                4 * MIB,
                0,
                Code::OutOfRange,
            ),
            (
                "negative max_results",
                s1.clone(),
                s2.clone(),
                0,
                -1,
                Code::InvalidArgument,
            ),
        ];
        for (name, base, target, off, max, want) in cases {
            let got = delta(&env, &base, &target, off, max).await;
            assert_eq!(
                got.err().map_or(Code::Ok, |s| s.code()),
                want,
                "case {name:?}"
            );
        }
    }

    #[tokio::test]
    async fn delta_across_a_new_generation_is_a_failed_precondition() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", 4 * MIB);
        let s1 = new_snapshot(&env, "s1", &v).snapshot_id;
        delete_snapshot(&env, &s1);
        // A reboot attaches tracking anew: a new generation.
        env.kernel.reboot();
        let env = env.restart();
        let s2 = new_snapshot(&env, "s2", &v).snapshot_id;
        let got = delta(&env, &s1, &s2, 0, 0).await;
        assert_eq!(got.err().map(|s| s.code()), Some(Code::FailedPrecondition));
    }

    #[tokio::test]
    async fn a_lost_target_is_unavailable() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", 4 * MIB);
        let s1 = new_snapshot(&env, "s1", &v).snapshot_id;
        let id: blksnap_node_api::ids::SnapshotId = s1.parse().expect("id");
        env.kernel.corrupt(id.kernel);
        assert_eq!(
            allocated(&env, &s1, 0).await.err().map(|s| s.code()),
            Some(Code::Unavailable)
        );
        assert_eq!(
            delta(&env, &s1, &s1, 0, 0).await.err().map(|s| s.code()),
            Some(Code::Unavailable)
        );
    }

    #[tokio::test]
    async fn allocated_is_the_written_blocks_of_a_fresh_volume() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", 4 * MIB);
        env.write(&v, 0..2 * BLOCK);
        env.write(&v, 3 * MIB as u64..3 * MIB as u64 + BLOCK);
        let s = new_snapshot(&env, "s1", &v).snapshot_id;
        let got = allocated(&env, &s, 0).await.expect("allocated");
        let ranges: Vec<(i64, i64)> = got
            .iter()
            .flat_map(|m| {
                m.block_metadata
                    .iter()
                    .map(|b| (b.byte_offset, b.byte_offset + b.size_bytes))
            })
            .collect();
        // The file system may allocate more than was written, never less,
        // and never the untouched middle.
        let covers = |o: i64| ranges.iter().any(|&(a, b)| a <= o && o < b);
        assert!(
            covers(0) && covers(2 * BLOCK as i64 - 1) && covers(3 * MIB),
            "{ranges:?}"
        );
        assert!(!covers(2 * MIB), "{ranges:?}");
        for w in ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "sorted, disjoint, coalesced: {ranges:?}");
        }
        for (id, off, want) in [
            (String::new(), 0, Code::InvalidArgument),
            ("x".to_owned(), 0, Code::NotFound),
            (s.clone(), 4 * MIB, Code::OutOfRange),
            (s.clone(), -5, Code::InvalidArgument),
        ] {
            assert_eq!(
                allocated(&env, &id, off).await.err().map(|s| s.code()),
                Some(want),
                "{id} {off}"
            );
        }
        delete_snapshot(&env, &s);
        assert_eq!(
            allocated(&env, &s, 0).await.err().map(|s| s.code()),
            Some(Code::NotFound)
        );
    }

    #[test]
    fn pages_split_into_batches_and_empty_pages_still_say_the_capacity() {
        let page = MetadataPage {
            capacity: 1 << 20,
            ranges: vec![0..10, 20..30, 40..50],
        };
        let m: Vec<_> = messages(page, 2).collect();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1.len(), 2);
        assert_eq!(m[1].1[0].byte_offset, 40);
        assert_eq!(m[1].1[0].size_bytes, 10);
        let empty = MetadataPage {
            capacity: 7,
            ranges: vec![],
        };
        assert_eq!(messages(empty, 5).collect::<Vec<_>>(), vec![(7, vec![])]);
        assert!(batch(-1).is_err());
        assert_eq!(batch(0).expect("default"), DEFAULT_BATCH);
        assert_eq!(batch(i32::MAX).expect("capped"), MAX_BATCH);
    }

    #[test]
    fn messages_stay_within_the_receivers_limit_whatever_max_results_asks() {
        use prost::Message as _;
        // A delta as scattered as a 1 TiB map of 1 MiB blocks allows: every
        // other block changed, 512Ki ranges at offsets near 2^40.
        let page = MetadataPage {
            capacity: 1 << 40,
            ranges: (0..1u64 << 19)
                .map(|i| (2 * i) << 20..(2 * i + 1) << 20)
                .collect(),
        };
        let batch = batch(i32::MAX).expect("batch");
        let mut tuples = 0;
        let ranges = page.ranges.len();
        for (capacity, block_metadata) in messages(page, batch) {
            tuples += block_metadata.len();
            let m = csi::GetMetadataDeltaResponse {
                block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes: capacity,
                block_metadata,
            };
            // gRPC's customary receive limit (Go's and tonic's default).
            assert!(m.encoded_len() < 4 << 20, "{} bytes", m.encoded_len());
        }
        assert_eq!(tuples, ranges);
    }
}
