//! gRPC codecs that move a response's encoded bytes as they are: the
//! router passes a node's SnapshotMetadata messages on without decoding
//! and encoding each again, as it needs nothing from them. The request
//! is still a typed message: the router reads its ids to pick the node.
//!
//! A message stays one message: tonic's framing hands each one over
//! whole (and checks the size limits), so a stream is still relayed
//! message by message, never gathered.

use std::marker::PhantomData;

use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::Bytes;
use tonic::Status;
use tonic_prost::prost::bytes::{Buf, BufMut};
use tonic_prost::{prost, ProstDecoder, ProstEncoder};

/// One message's encoded bytes, moved without looking inside.
#[derive(Debug, Default, Clone, Copy)]
pub struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The buffer is tonic's own: this splits the message off, no copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The router's side of a call to a node: the request encoded as a
/// message, the responses taken as bytes.
#[derive(Debug)]
pub struct ToNode<Req>(PhantomData<Req>);

impl<Req> Default for ToNode<Req> {
    fn default() -> Self {
        ToNode(PhantomData)
    }
}

impl<Req: prost::Message + Send + 'static> Codec for ToNode<Req> {
    type Encode = Req;
    type Decode = Bytes;
    type Encoder = ProstEncoder<Req>;
    type Decoder = Raw;

    fn encoder(&mut self) -> ProstEncoder<Req> {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// The router's side of a call from a sidecar: the request decoded as a
/// message, the responses sent as the bytes a node gave.
#[derive(Debug)]
pub struct FromCaller<Req>(PhantomData<Req>);

impl<Req> Default for FromCaller<Req> {
    fn default() -> Self {
        FromCaller(PhantomData)
    }
}

impl<Req: prost::Message + Default + Send + 'static> Codec for FromCaller<Req> {
    type Encode = Bytes;
    type Decode = Req;
    type Encoder = Raw;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> ProstDecoder<Req> {
        ProstDecoder::default()
    }
}
