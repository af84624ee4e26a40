//! Large messages on the gateway ↔ room node link: a payload larger than
//! [`CHUNK_BYTES`] crosses as several frames of the same kind, all but the
//! last marked `more`, and is joined again on the other side. The client
//! still gets one WebSocket message (the providers require it); the link
//! never needs a gRPC message larger than a chunk, whatever the document
//! size.
//!
//! A stream's frames are sent in order by one task, so the chunks of one
//! message are consecutive: a receiver keeps at most one message in
//! progress, and a frame of another kind or session in between is a
//! protocol error.

use prost::bytes::{Bytes, BytesMut};

use crate::pb::{gateway_frame, node_frame, GatewayFrame, NodeFrame};

/// Largest payload one link frame carries.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Largest gRPC message on a room stream: a chunk and its envelope.
pub const MAX_STREAM_MESSAGE: usize = CHUNK_BYTES + 64 * 1024;

/// Largest gRPC message of the unary calls (a whole document state, an
/// update): above any document a room accepts (`--max-doc-bytes`).
pub const MAX_UNARY_MESSAGE: usize = 1024 * 1024 * 1024;

/// A frame kind whose payload may be split.
pub trait Chunked: Sized {
    /// The payload and the `more` flag, when this frame carries one.
    fn payload_mut(&mut self) -> Option<(&mut Bytes, &mut bool)>;
    /// Which message a chunk belongs to: frames with another key may not
    /// come between two chunks of one message.
    fn key(&self) -> Option<(u8, u64)>;
}

impl Chunked for NodeFrame {
    fn payload_mut(&mut self) -> Option<(&mut Bytes, &mut bool)> {
        match self.kind.as_mut()? {
            node_frame::Kind::Deliver(d) => Some((&mut d.payload, &mut d.more)),
            node_frame::Kind::Broadcast(b) => Some((&mut b.payload, &mut b.more)),
            _ => None,
        }
    }

    fn key(&self) -> Option<(u8, u64)> {
        match self.kind.as_ref()? {
            node_frame::Kind::Deliver(d) => Some((1, d.session_id)),
            node_frame::Kind::Broadcast(b) => Some((2, b.except_session)),
            _ => None,
        }
    }
}

impl Chunked for GatewayFrame {
    fn payload_mut(&mut self) -> Option<(&mut Bytes, &mut bool)> {
        match self.kind.as_mut()? {
            gateway_frame::Kind::ClientMessage(m) => Some((&mut m.payload, &mut m.more)),
            _ => None,
        }
    }

    fn key(&self) -> Option<(u8, u64)> {
        match self.kind.as_ref()? {
            gateway_frame::Kind::ClientMessage(m) => Some((3, m.session_id)),
            _ => None,
        }
    }
}

/// Splits `frame` into frames whose payloads are at most [`CHUNK_BYTES`]
/// (slices of the same buffer: nothing is copied). A small frame comes
/// back as it is, without an allocation: this runs for every frame.
pub fn split<F: Chunked + Clone>(mut frame: F) -> impl Iterator<Item = F> {
    // Only the leading chunks of a large frame go here; an empty Vec
    // allocates nothing.
    let mut pieces = Vec::new();
    if let Some((payload, _)) = frame.payload_mut() {
        if payload.len() > CHUNK_BYTES {
            let mut rest = std::mem::take(payload);
            while rest.len() > CHUNK_BYTES {
                let head = rest.split_to(CHUNK_BYTES);
                let mut piece = frame.clone();
                if let Some((p, more)) = piece.payload_mut() {
                    *p = head;
                    *more = true;
                }
                pieces.push(piece);
            }
            if let Some((p, more)) = frame.payload_mut() {
                *p = rest;
                *more = false;
            }
        }
    }
    pieces.into_iter().chain(std::iter::once(frame))
}

/// Why a chunked message could not be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// A frame of another message came between two chunks.
    #[error("link frame interleaved with a chunked message")]
    Interleaved,
    /// The joined message would exceed the receiver's limit.
    #[error("chunked message over {0} bytes")]
    TooLarge(usize),
}

/// Joins chunked frames back into whole ones.
#[derive(Debug, Default)]
pub struct Joiner {
    /// The message in progress: its key and the payload so far.
    partial: Option<((u8, u64), BytesMut)>,
    /// Largest joined payload accepted.
    limit: usize,
}

impl Joiner {
    /// A joiner that refuses messages over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            partial: None,
            limit,
        }
    }

    /// Takes one received frame: `Ok(Some)` when it is whole (or ends a
    /// chunked message, whose joined payload it then carries), `Ok(None)`
    /// while chunks are still coming.
    pub fn push<F: Chunked>(&mut self, mut frame: F) -> Result<Option<F>, JoinError> {
        let key = frame.key();
        let Some((payload, more)) = frame.payload_mut() else {
            return match self.partial {
                Some(_) => Err(JoinError::Interleaved),
                None => Ok(Some(frame)),
            };
        };
        let key = key.expect("a frame with a payload has a key");
        if let Some((partial_key, _)) = &self.partial {
            if *partial_key != key {
                return Err(JoinError::Interleaved);
            }
        } else if !*more {
            return Ok(Some(frame));
        }
        let (_, buffer) = self.partial.get_or_insert_with(|| (key, BytesMut::new()));
        if buffer.len() + payload.len() > self.limit {
            self.partial = None;
            return Err(JoinError::TooLarge(self.limit));
        }
        buffer.extend_from_slice(payload);
        if *more {
            return Ok(None);
        }
        let (_, joined) = self.partial.take().expect("a message in progress");
        *payload = joined.freeze();
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn deliver(session_id: u64, payload: Vec<u8>) -> NodeFrame {
        NodeFrame {
            kind: Some(node_frame::Kind::Deliver(pb::Deliver {
                session_id,
                payload: payload.into(),
                kind: pb::FrameKind::Binary as i32,
                more: false,
            })),
        }
    }

    fn payload(frame: &NodeFrame) -> &Bytes {
        match frame.kind.as_ref().unwrap() {
            node_frame::Kind::Deliver(d) => &d.payload,
            _ => panic!("a deliver"),
        }
    }

    #[test]
    fn a_large_payload_crosses_in_chunks_and_is_joined_whole() {
        let big: Vec<u8> = (0..(2 * CHUNK_BYTES + 123)).map(|i| i as u8).collect();
        let pieces: Vec<_> = split(deliver(7, big.clone())).collect();
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| payload(p).len() <= CHUNK_BYTES));
        let mut joiner = Joiner::new(usize::MAX);
        let mut whole = None;
        for piece in pieces {
            whole = joiner.push(piece).unwrap();
        }
        assert_eq!(payload(&whole.unwrap())[..], big[..]);
        // Small frames pass untouched.
        let small: Vec<_> = split(deliver(7, vec![1, 2, 3])).collect();
        assert_eq!(small.len(), 1);
        assert!(joiner.push(small[0].clone()).unwrap().is_some());
    }

    #[test]
    fn interleaving_and_oversize_are_errors() {
        let big = vec![0u8; CHUNK_BYTES + 1];
        let mut pieces = split(deliver(1, big.clone()));
        let mut joiner = Joiner::new(usize::MAX);
        assert!(joiner.push(pieces.next().unwrap()).unwrap().is_none());
        assert_eq!(
            joiner.push(deliver(2, vec![1])).unwrap_err(),
            JoinError::Interleaved
        );
        let mut small_limit = Joiner::new(CHUNK_BYTES);
        let mut pieces = split(deliver(1, big));
        assert!(small_limit.push(pieces.next().unwrap()).unwrap().is_none());
        assert_eq!(
            small_limit.push(pieces.next().unwrap()).unwrap_err(),
            JoinError::TooLarge(CHUNK_BYTES)
        );
    }
}
