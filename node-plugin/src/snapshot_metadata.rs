//! CSI SnapshotMetadata: which byte ranges of a snapshot hold data, and
//! which changed between two snapshots of a volume.
//!
//! Answers are VARIABLE_LENGTH tuples (adjacent changed blocks merged),
//! ascending, streamed in messages of `max_results` tuples (the plugin's
//! own batch when 0). The first message is sent even when there are no
//! ranges, so that the client learns the volume's capacity.

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

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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

fn batch(max_results: i32) -> Result<usize, Error> {
    match max_results {
        0 => Ok(DEFAULT_BATCH),
        n if n > 0 => Ok(n as usize),
        _ => Err(Error::invalid("max_results", "must not be negative")),
    }
}

/// Splits a page into the messages of a stream.
pub fn messages(page: &MetadataPage, batch: usize) -> Vec<(i64, Vec<csi::BlockMetadata>)> {
    let capacity = i64::try_from(page.capacity).unwrap_or(i64::MAX);
    let tuples: Vec<csi::BlockMetadata> = page
        .ranges
        .iter()
        .map(|r| csi::BlockMetadata {
            byte_offset: r.start as i64,
            size_bytes: (r.end - r.start) as i64,
        })
        .collect();
    if tuples.is_empty() {
        return vec![(capacity, Vec::new())];
    }
    tuples
        .chunks(batch.max(1))
        .map(|c| (capacity, c.to_vec()))
        .collect()
}

fn stream_of<T: Send + 'static>(items: Vec<T>) -> Stream_<T> {
    Box::pin(tokio_stream::iter(items.into_iter().map(Ok)))
}

#[tonic::async_trait]
impl SnapshotMetadata for SnapshotMetadataService {
    type GetMetadataAllocatedStream = Stream_<csi::GetMetadataAllocatedResponse>;
    type GetMetadataDeltaStream = Stream_<csi::GetMetadataDeltaResponse>;

    async fn get_metadata_allocated(
        &self,
        request: Request<csi::GetMetadataAllocatedRequest>,
    ) -> Result<Response<Self::GetMetadataAllocatedStream>, Status> {
        let r = request.into_inner();
        let batch = batch(r.max_results)?;
        let plugin = Arc::clone(&self.plugin);
        let page =
            blocking(move || plugin.metadata_allocated(&r.snapshot_id, r.starting_offset)).await?;
        let items = messages(&page, batch)
            .into_iter()
            .map(|(cap, tuples)| csi::GetMetadataAllocatedResponse {
                block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes: cap,
                block_metadata: tuples,
            })
            .collect();
        Ok(Response::new(stream_of(items)))
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
        let items = messages(&page, batch)
            .into_iter()
            .map(|(cap, tuples)| csi::GetMetadataDeltaResponse {
                block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes: cap,
                block_metadata: tuples,
            })
            .collect();
        Ok(Response::new(stream_of(items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_into_batches_and_empty_pages_still_say_the_capacity() {
        let page = MetadataPage {
            capacity: 1 << 20,
            ranges: vec![0..10, 20..30, 40..50],
        };
        let m = messages(&page, 2);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1.len(), 2);
        assert_eq!(m[1].1[0].byte_offset, 40);
        assert_eq!(m[1].1[0].size_bytes, 10);
        let empty = MetadataPage {
            capacity: 7,
            ranges: vec![],
        };
        assert_eq!(messages(&empty, 5), vec![(7, vec![])]);
        assert!(batch(-1).is_err());
        assert_eq!(batch(0).expect("default"), DEFAULT_BATCH);
    }
}
