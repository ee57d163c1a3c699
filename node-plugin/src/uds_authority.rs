//! Makes the kubelet's plugin-registration calls acceptable to tonic.
//!
//! The kubelet (1.37 and before) dials the registration socket by its path
//! without overriding the HTTP/2 `:authority` (its CSI and device-plugin
//! clients set `localhost`, this one does not), so grpc-go sends the socket
//! path, e.g. `/var/lib/kubelet/plugins_registry/x-reg.sock`, as the
//! authority. That is not a valid authority, and the `h2` crate under tonic
//! resets the stream (`PROTOCOL_ERROR`) before any service sees the call;
//! Go servers, such as node-driver-registrar, do not check it.
//!
//! [`AuthorityFix`] wraps an accepted unix stream and rewrites, in each
//! HEADERS frame the client sends, the value of a header field whose name
//! is HPACK's static `:authority` entry to `localhost` (on a unix socket
//! the authority names nothing). Only the HPACK representations are walked,
//! the values are not decoded, so Huffman coding does not matter; an
//! indexed literal keeps its place in the dynamic table (only its value is
//! shorter), so later references stay in step with the client. A header
//! block split over CONTINUATION frames is passed on unchanged. Writes go
//! through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

/// The client connection preface that starts every HTTP/2 connection.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value, which this server keeps.
const MAX_FRAME_LEN: usize = 16_384;
/// HPACK static table index of `:authority`.
const AUTHORITY_INDEX: u64 = 1;
const AUTHORITY: &[u8] = b"localhost";

/// A unix stream whose inbound HTTP/2 frames get a valid `:authority`.
#[derive(Debug)]
pub struct AuthorityFix<S = UnixStream> {
    inner: S,
    /// Bytes read but not yet a whole frame.
    pending: Vec<u8>,
    /// Bytes ready for the reader, from `pos` on.
    ready: Vec<u8>,
    pos: usize,
    preface_left: usize,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            pending: Vec::new(),
            ready: Vec::new(),
            pos: 0,
            preface_left: PREFACE_LEN,
        }
    }

    /// Moves the preface and every complete frame from `pending` to
    /// `ready`, rewriting HEADERS frames.
    fn frame(&mut self) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.pending.len());
            self.ready.extend(self.pending.drain(..n));
            self.preface_left -= n;
        }
        while self.preface_left == 0 && self.pending.len() >= FRAME_HEADER_LEN {
            let len = usize::from(self.pending[0]) << 16
                | usize::from(self.pending[1]) << 8
                | usize::from(self.pending[2]);
            if self.pending.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let frame: Vec<u8> = self.pending.drain(..FRAME_HEADER_LEN + len).collect();
            match rewrite_headers_frame(&frame) {
                Some(fixed) => self.ready.extend(fixed),
                None => self.ready.extend(frame),
            }
        }
    }
}

/// The frame with its `:authority` values replaced, or `None` to pass it
/// on as it is (not HEADERS, split, malformed or grown too big).
fn rewrite_headers_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let (kind, flags) = (frame[3], frame[4]);
    if kind != FRAME_HEADERS || flags & FLAG_END_HEADERS == 0 {
        return None;
    }
    let mut payload = &frame[FRAME_HEADER_LEN..];
    if flags & FLAG_PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        payload = payload.get(1..payload.len().checked_sub(pad)?)?;
    }
    let priority_len = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
    let priority = payload.get(..priority_len)?;
    let block = rewrite_block(payload.get(priority_len..)?)?;
    let len = priority.len() + block.len();
    if len > MAX_FRAME_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind]);
    // The padding is dropped with its flag.
    out.push(flags & !FLAG_PADDED);
    out.extend_from_slice(&frame[5..FRAME_HEADER_LEN]);
    out.extend_from_slice(priority);
    out.extend_from_slice(&block);
    Some(out)
}

/// An HPACK header block with each `:authority` value (static name index)
/// replaced; `None` when the block does not parse.
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let start = at;
        if first & 0x80 != 0 {
            // Indexed field.
            read_int(block, &mut at, 7)?;
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            read_int(block, &mut at, 5)?;
        } else {
            // Literal: with incremental indexing (6-bit name index), or
            // without / never indexed (4-bit).
            let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
            let name = read_int(block, &mut at, prefix)?;
            if name == 0 {
                skip_string(block, &mut at)?;
            }
            let value_at = at;
            skip_string(block, &mut at)?;
            if name == AUTHORITY_INDEX {
                out.extend_from_slice(&block[start..value_at]);
                // A plain (not Huffman) string shorter than 127 bytes: its
                // length is its one prefix byte.
                out.push(AUTHORITY.len() as u8);
                out.extend_from_slice(AUTHORITY);
                continue;
            }
        }
        out.extend_from_slice(&block[start..at]);
    }
    Some(out)
}

/// Reads an HPACK integer with an N-bit prefix (RFC 7541, 5.1).
fn read_int(block: &[u8], at: &mut usize, prefix: u32) -> Option<u64> {
    let max = (1u64 << prefix) - 1;
    let mut value = u64::from(*block.get(*at)?) & max;
    *at += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *block.get(*at)?;
        *at += 1;
        value = value.checked_add(u64::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// Skips an HPACK string literal (its Huffman flag, length and bytes).
fn skip_string(block: &[u8], at: &mut usize) -> Option<()> {
    let len = usize::try_from(read_int(block, at, 7)?).ok()?;
    let end = at.checked_add(len)?;
    (end <= block.len()).then(|| *at = end)
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.pos);
                buf.put_slice(&this.ready[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.ready.len() {
                    this.ready.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of stream: whatever is left, as it came.
                    if this.pending.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    this.ready.append(&mut this.pending);
                }
                Poll::Ready(Ok(())) => {
                    this.pending.extend_from_slice(read.filled());
                    this.frame();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `:method POST`, `:scheme http`, `:path` and `:authority` as
    /// literals with incremental indexing, `te: trailers` without
    /// indexing with a literal name: what grpc-go sends, less Huffman.
    fn go_like_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x86];
        let path = b"/pluginregistration.Registration/GetInfo";
        b.push(0x44);
        b.push(path.len() as u8);
        b.extend_from_slice(path);
        b.push(0x41);
        b.push(authority.len() as u8);
        b.extend_from_slice(authority);
        b.extend_from_slice(&[0x00, 0x02]);
        b.extend_from_slice(b"te");
        b.push(0x08);
        b.extend_from_slice(b"trailers");
        b
    }

    fn headers_frame(flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            FRAME_HEADERS,
            flags,
        ];
        f.extend_from_slice(&[0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_authority_value_becomes_localhost_and_the_rest_stays() {
        let socket = b"/var/lib/kubelet/plugins_registry/blksnap.csi.io-reg.sock";
        let fixed = rewrite_block(&go_like_block(socket)).expect("parses");
        assert_eq!(fixed, go_like_block(b"localhost"));
    }

    #[test]
    fn a_huffman_coded_or_long_value_is_replaced_by_its_length_alone() {
        // 0x41, Huffman flag with a length of 200 (prefix 127 + 73), then
        // 200 opaque bytes.
        let mut block = vec![0x41, 0xff, 73];
        block.extend(std::iter::repeat_n(0xaa, 200));
        block.push(0x82);
        let mut want = vec![0x41, 9];
        want.extend_from_slice(b"localhost");
        want.push(0x82);
        assert_eq!(rewrite_block(&block).expect("parses"), want);
    }

    #[test]
    fn truncated_blocks_are_refused() {
        let block = go_like_block(b"/x.sock");
        // Cut inside a literal: its name index, its length, its bytes.
        for cut in [3, 4, 10, block.len() - 1] {
            if let Some(out) = rewrite_block(&block[..cut]) {
                panic!("cut at {cut} parsed into {out:?}");
            }
        }
    }

    #[test]
    fn padding_and_priority_are_handled_and_other_frames_pass() {
        let block = go_like_block(b"/x.sock");
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0, 0]);
        let frame = headers_frame(FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY, &payload);
        let fixed = rewrite_headers_frame(&frame).expect("rewritten");
        let mut want = vec![0, 0, 0, 0, 16];
        want.extend_from_slice(&go_like_block(b"localhost"));
        assert_eq!(
            fixed,
            headers_frame(FLAG_END_HEADERS | FLAG_PRIORITY, &want)
        );
        // Split over CONTINUATION frames: left alone.
        assert!(rewrite_headers_frame(&headers_frame(0, &block)).is_none());
        // DATA.
        let mut data = headers_frame(FLAG_END_HEADERS, &block);
        data[3] = 0x0;
        assert!(rewrite_headers_frame(&data).is_none());
    }

    #[tokio::test]
    async fn frames_split_across_reads_come_out_whole_and_fixed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
        wire.extend(headers_frame(
            FLAG_END_HEADERS,
            &go_like_block(b"/run/x.sock"),
        ));
        let mut want = wire[..PREFACE_LEN + FRAME_HEADER_LEN].to_vec();
        want.extend(headers_frame(
            FLAG_END_HEADERS,
            &go_like_block(b"localhost"),
        ));

        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(5) {
                client.write_all(piece).await.expect("write");
            }
        });
        let mut got = Vec::new();
        AuthorityFix::new(server)
            .read_to_end(&mut got)
            .await
            .expect("read");
        writer.await.expect("writer");
        assert_eq!(got, want);
    }
}
