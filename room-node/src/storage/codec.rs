//! The snapshot codec, one for every backend: a header (room, epoch, what
//! of the log it covers) and the document state, checksummed. Two layouts
//! exist on disk and in object stores, and both stay readable and written
//! as they always were, so old data loads and old nodes read new
//! snapshots:
//!
//! ```text
//! PLSNAP\0\x01   (files)  magic | version u32 | epoch u64 | covered segment u64
//!                         | room (u32 len + bytes) | state (u64 len + bytes)
//!                         | crc32 of everything after the magic
//! PLRSNAP\x01    (remote) magic | version u32 | epoch u64 | covered log id (u32 len + bytes)
//!                         | room (u32 len + bytes) | state (u32 len + bytes)
//!                         | crc32 of everything before it
//! ```
//!
//! Integers are little-endian. What a snapshot covers picks the layout:
//! a file segment number, or a Redis stream id. Pure: no I/O.

/// Magic of a snapshot written by the file backend.
const FILES_MAGIC: &[u8; 8] = b"PLSNAP\0\x01";
/// Magic of a snapshot written by the remote backend.
const REMOTE_MAGIC: &[u8; 8] = b"PLRSNAP\x01";
/// The only version of either layout so far.
const VERSION: u32 = 1;

/// What of the room's log a snapshot contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Covered {
    /// Every file log segment up to this number.
    Segment(u64),
    /// Every Redis stream entry up to this id.
    LogId(String),
}

/// A snapshot's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The room's name.
    pub room: String,
    /// Slot-map epoch of the node that wrote it.
    pub epoch: u64,
    /// What of the log it contains.
    pub covered: Covered,
}

/// Why bytes are not a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Unknown magic or version, or a length past the end.
    #[error("bad magic, version or length")]
    Malformed,
    /// The checksum does not match: the bytes were damaged.
    #[error("checksum mismatch")]
    Checksum,
}

/// Encodes a snapshot of `state` in the layout its `covered` implies.
pub fn encode(header: &SnapshotHeader, state: &[u8]) -> Vec<u8> {
    let room = header.room.as_bytes();
    match &header.covered {
        Covered::Segment(segment) => {
            let mut out = Vec::with_capacity(state.len() + room.len() + 48);
            out.extend_from_slice(FILES_MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.extend_from_slice(&header.epoch.to_le_bytes());
            out.extend_from_slice(&segment.to_le_bytes());
            out.extend_from_slice(&(room.len() as u32).to_le_bytes());
            out.extend_from_slice(room);
            out.extend_from_slice(&(state.len() as u64).to_le_bytes());
            out.extend_from_slice(state);
            let crc = crc32fast::hash(&out[FILES_MAGIC.len()..]);
            out.extend_from_slice(&crc.to_le_bytes());
            out
        }
        Covered::LogId(id) => {
            let mut out = Vec::with_capacity(state.len() + room.len() + id.len() + 40);
            out.extend_from_slice(REMOTE_MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.extend_from_slice(&header.epoch.to_le_bytes());
            for part in [id.as_bytes(), room, state] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_le_bytes());
            out
        }
    }
}

/// Decodes a snapshot in either layout, checking magic, version, lengths
/// and checksum.
pub fn decode(bytes: &[u8]) -> Result<(SnapshotHeader, Vec<u8>), CodecError> {
    let (body, crc) = bytes
        .split_at_checked(bytes.len().checked_sub(4).ok_or(CodecError::Malformed)?)
        .ok_or(CodecError::Malformed)?;
    if let Some(after_magic) = body.strip_prefix(FILES_MAGIC.as_slice()) {
        check(after_magic, crc)?;
        decode_files(after_magic)
    } else if let Some(after_magic) = body.strip_prefix(REMOTE_MAGIC.as_slice()) {
        check(body, crc)?;
        decode_remote(after_magic)
    } else {
        Err(CodecError::Malformed)
    }
}

/// Compares `covered`'s crc32 with the stored one.
fn check(covered: &[u8], crc: &[u8]) -> Result<(), CodecError> {
    if crc32fast::hash(covered).to_le_bytes() == crc {
        Ok(())
    } else {
        Err(CodecError::Checksum)
    }
}

/// The files layout after its magic (checksum already checked). Bytes after
/// the state are ignored, as they always were.
fn decode_files(body: &[u8]) -> Result<(SnapshotHeader, Vec<u8>), CodecError> {
    let mut reader = Reader(body);
    reader.version()?;
    let epoch = reader.u64()?;
    let segment = reader.u64()?;
    let room_len = reader.u32()? as usize;
    let room = reader.string(room_len)?;
    let state_len = usize::try_from(reader.u64()?).map_err(|_| CodecError::Malformed)?;
    let state = reader.take(state_len)?.to_vec();
    let header = SnapshotHeader {
        room,
        epoch,
        covered: Covered::Segment(segment),
    };
    Ok((header, state))
}

/// The remote layout after its magic (checksum already checked); nothing
/// may follow the state.
fn decode_remote(body: &[u8]) -> Result<(SnapshotHeader, Vec<u8>), CodecError> {
    let mut reader = Reader(body);
    reader.version()?;
    let epoch = reader.u64()?;
    let id_len = reader.u32()? as usize;
    let id = reader.string(id_len)?;
    let room_len = reader.u32()? as usize;
    let room = reader.string(room_len)?;
    let state_len = reader.u32()? as usize;
    let state = reader.take(state_len)?.to_vec();
    if !reader.0.is_empty() {
        return Err(CodecError::Malformed);
    }
    let header = SnapshotHeader {
        room,
        epoch,
        covered: Covered::LogId(id),
    };
    Ok((header, state))
}

/// Reads little-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(CodecError::Malformed)?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        self.take(N)?.try_into().map_err(|_| CodecError::Malformed)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn version(&mut self) -> Result<(), CodecError> {
        if self.u32()? == VERSION {
            Ok(())
        } else {
            Err(CodecError::Malformed)
        }
    }

    fn string(&mut self, len: usize) -> Result<String, CodecError> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| CodecError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Transact};

    /// A snapshot file committed when each layout was the only one, read
    /// at run time from the checkout.
    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        std::fs::read(format!("{dir}/tests/fixtures/snapshots/{name}")).unwrap()
    }

    /// The text `t` of the document a snapshot's state holds.
    fn text_of(state: &[u8]) -> String {
        let doc = yrs::Doc::new();
        let update = yrs::Update::decode_v1(state).unwrap();
        doc.transact_mut().apply_update(update).unwrap();
        let text = doc.get_or_insert_text("t");
        let txn = doc.transact();
        text.get_string(&txn)
    }

    #[test]
    fn snapshots_written_in_both_old_formats_load_and_encode_to_the_same_bytes() {
        for (name, covered, writer) in [
            ("plsnap-v1.bin", Covered::Segment(3), "PLSNAP"),
            (
                "plrsnap-v1.bin",
                Covered::LogId("1700000000000-3".to_owned()),
                "PLRSNAP",
            ),
        ] {
            let bytes = fixture(name);
            let (header, state) = decode(&bytes).unwrap();
            assert_eq!(header.room, "doc-fixture");
            assert_eq!(header.covered, covered);
            assert_eq!(
                text_of(&state),
                format!("fixture: written by the {writer} v1 encoder")
            );
            assert_eq!(
                encode(&header, &state),
                bytes,
                "{name} re-encodes byte for byte"
            );
        }
        assert_eq!(decode(&fixture("plsnap-v1.bin")).unwrap().0.epoch, 7);
        assert_eq!(decode(&fixture("plrsnap-v1.bin")).unwrap().0.epoch, 9);
    }

    #[test]
    fn damage_is_refused_in_both_layouts() {
        for covered in [Covered::Segment(2), Covered::LogId("1-0".to_owned())] {
            let header = SnapshotHeader {
                room: "doc-1".to_owned(),
                epoch: 4,
                covered,
            };
            let bytes = encode(&header, b"state");
            assert_eq!(decode(&bytes).unwrap(), (header.clone(), b"state".to_vec()));
            for at in [0, 9, 20, bytes.len() - 6, bytes.len() - 1] {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1;
                assert!(decode(&flipped).is_err(), "flip at {at} of {header:?}");
            }
            assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        }
        assert_eq!(decode(&[]), Err(CodecError::Malformed));
        assert_eq!(decode(b"PLSNAP\0\x01"), Err(CodecError::Malformed));
    }
}
