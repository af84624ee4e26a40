//! Reassembly of y-partykit's chunked messages.
//!
//! y-partykit sends a client message over 1,000,000 bytes as
//! `y-pk-batch#{"id","type":"start","size","count"}` (text), `count` binary
//! chunks, then `y-pk-batch#{…,"type":"end",…}` (text) with the same id,
//! size and count. The parts are checked against each other and against the
//! size limit before the joined message is passed on as one frame. Chunking
//! is never used toward clients: they ignore text frames.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

/// Text prefix of a batch marker.
pub const BATCH_PREFIX: &str = "y-pk-batch#";

/// A batch marker's JSON.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct Marker {
    id: String,
    #[serde(rename = "type")]
    kind: MarkerKind,
    size: u64,
    count: u64,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum MarkerKind {
    Start,
    End,
}

/// Why a batch was refused; the socket is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// Marker text is not the JSON y-partykit sends.
    #[error("malformed batch marker")]
    Malformed,
    /// Start while a batch is open, or end without a start.
    #[error("batch marker out of order")]
    OutOfOrder,
    /// End marker or chunks disagree with the start marker.
    #[error("batch does not match its start marker")]
    Mismatch,
    /// The announced or received size is over the limit.
    #[error("batch of {0} bytes is over the message size limit")]
    TooLarge(u64),
}

/// An open batch.
#[derive(Debug)]
struct Open {
    id: String,
    size: u64,
    count: u64,
    received_chunks: u64,
    data: BytesMut,
}

/// One socket's reassembly state.
#[derive(Debug)]
pub struct Reassembler {
    max_bytes: usize,
    open: Option<Box<Open>>,
}

impl Reassembler {
    /// A reassembler refusing batches over `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            open: None,
        }
    }

    /// Whether binary frames are currently chunks of a batch.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Handles a marker; returns the joined message on a valid end marker.
    pub fn marker(&mut self, text: &str) -> Result<Option<Bytes>, BatchError> {
        let json = text
            .strip_prefix(BATCH_PREFIX)
            .ok_or(BatchError::Malformed)?;
        let marker: Marker = serde_json::from_str(json).map_err(|_| BatchError::Malformed)?;
        match marker.kind {
            MarkerKind::Start => {
                if self.open.is_some() {
                    return Err(BatchError::OutOfOrder);
                }
                if marker.size > self.max_bytes as u64 {
                    return Err(BatchError::TooLarge(marker.size));
                }
                self.open = Some(Box::new(Open {
                    id: marker.id,
                    size: marker.size,
                    count: marker.count,
                    received_chunks: 0,
                    // Grown by the chunks that actually arrive: a start marker
                    // alone must not make the server reserve its announced size.
                    data: BytesMut::new(),
                }));
                Ok(None)
            }
            MarkerKind::End => {
                let open = self.open.take().ok_or(BatchError::OutOfOrder)?;
                let matches = open.id == marker.id
                    && open.size == marker.size
                    && open.count == marker.count
                    && open.received_chunks == open.count
                    && open.data.len() as u64 == open.size;
                if matches {
                    Ok(Some(open.data.freeze()))
                } else {
                    Err(BatchError::Mismatch)
                }
            }
        }
    }

    /// Adds a binary chunk to the open batch.
    pub fn chunk(&mut self, chunk: &[u8]) -> Result<(), BatchError> {
        let open = self.open.as_mut().ok_or(BatchError::OutOfOrder)?;
        let new_len = (open.data.len() + chunk.len()) as u64;
        if new_len > open.size || open.received_chunks >= open.count {
            return Err(BatchError::Mismatch);
        }
        open.data.extend_from_slice(chunk);
        open.received_chunks += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(kind: &str, id: &str, size: u64, count: u64) -> String {
        format!(r#"{BATCH_PREFIX}{{"id":"{id}","type":"{kind}","size":{size},"count":{count}}}"#)
    }

    #[test]
    fn joins_chunks_between_matching_markers() {
        let mut r = Reassembler::new(100);
        assert_eq!(r.marker(&marker("start", "x1", 5, 2)), Ok(None));
        assert!(r.is_open());
        r.chunk(b"abc").unwrap();
        r.chunk(b"de").unwrap();
        let joined = r.marker(&marker("end", "x1", 5, 2)).unwrap().unwrap();
        assert_eq!(&joined[..], b"abcde");
        assert!(!r.is_open());
    }

    #[test]
    fn refuses_mismatches_order_and_size() {
        let mut r = Reassembler::new(100);
        assert_eq!(
            r.marker(&marker("end", "x", 1, 1)),
            Err(BatchError::OutOfOrder)
        );
        assert_eq!(
            r.marker(&marker("start", "x", 1000, 1)),
            Err(BatchError::TooLarge(1000))
        );
        r.marker(&marker("start", "x", 4, 2)).unwrap();
        assert_eq!(
            r.marker(&marker("start", "y", 4, 2)),
            Err(BatchError::OutOfOrder)
        );
        r.chunk(b"ab").unwrap();
        assert_eq!(r.chunk(b"abc"), Err(BatchError::Mismatch));
        r.chunk(b"cd").unwrap();
        assert_eq!(
            r.marker(&marker("end", "other", 4, 2)),
            Err(BatchError::Mismatch)
        );
        assert_eq!(r.marker("y-pk-batch#{not json"), Err(BatchError::Malformed));
        assert_eq!(r.chunk(b"x"), Err(BatchError::OutOfOrder));
    }
}
