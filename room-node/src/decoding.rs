//! Decoding y-sync messages and Yjs updates from outside (clients, the
//! HTTP API, hooks) without risking the process: the checks that run
//! before yrs sees the bytes (claimed counts, `Any` nesting, sub-documents,
//! deletions of unknown clocks) and yrs's panics turned into errors. Knows
//! nothing of rooms or sessions ([`crate::protocol`] applies what passes).

use yrs::encoding::read::Read;
use yrs::updates::decoder::Decode;
use yrs::Update;

use crate::depth::DepthError;

/// Why a client frame was refused. The session is closed with
/// [`partyline_proto::close::PROTOCOL_ERROR`]; the room is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Empty binary frame.
    #[error("empty frame")]
    Empty,
    /// The frame is not a y-sync message (bad varint, truncated buffer…).
    #[error("undecodable message: {0}")]
    Decode(#[from] yrs::encoding::read::Error),
    /// A message type stock clients never send.
    #[error("unsupported message type {0}")]
    UnsupportedType(u8),
    /// Bytes left after the one message a frame may carry.
    #[error("trailing bytes after the message")]
    TrailingBytes,
    /// The update decoded but yrs refused to integrate it.
    #[error("update rejected: {0}")]
    Update(#[from] yrs::error::UpdateError),
    /// yrs panicked decoding the frame (its debug assertions reject some
    /// values, e.g. client ids over 53 bits, by panicking).
    #[error("undecodable message")]
    DecodePanic,
    /// The update nests values deeper than yrs can decode safely.
    #[error("update refused: {0}")]
    UnsafeUpdate(#[from] crate::update_check::UpdateCheckError),
    /// Applying the update would nest shared types too deep, or it builds
    /// on content the room does not have.
    #[error("update refused: {0}")]
    Depth(#[from] DepthError),
    /// A SyncStep1 or awareness message claims more entries than its
    /// bytes hold (yrs would reserve room for all of them first).
    #[error("message claims {0} entries in {1} bytes")]
    ImplausibleCount(u64, usize),
}

/// yrs sizes a hash map by the count a SyncStep1 or awareness message
/// claims, before reading a single entry: 8 bytes claiming 2^28 entries
/// cost half a GB. Refuse a count the message's bytes cannot hold (a
/// state-vector entry takes at least 2 bytes, an awareness entry 3).
pub(crate) fn claimed_counts_fit(frame: &[u8]) -> Result<(), ProtocolError> {
    use yrs::encoding::read::Cursor;
    let mut cursor = Cursor::new(frame);
    let kind: u32 = cursor.read_var()?;
    let (payload, entry_bytes) = match kind {
        0 => {
            let sub: u32 = cursor.read_var()?;
            if sub != 0 {
                return Ok(());
            }
            (cursor.read_buf()?, 2)
        }
        1 => (cursor.read_buf()?, 3),
        _ => return Ok(()),
    };
    let mut inner = Cursor::new(payload);
    let count: u64 = inner.read_var()?;
    let left = payload.len() - inner.next;
    if count > (left / entry_bytes) as u64 {
        return Err(ProtocolError::ImplausibleCount(count, left));
    }
    Ok(())
}

/// Runs a yrs decoder, turning its panics into an error: decoding touches
/// no room state, so nothing is left half-done.
pub(crate) fn decode_guarded<T>(decode: impl FnOnce() -> T) -> Result<T, ProtocolError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .map_err(|_| ProtocolError::DecodePanic)
}

/// Decodes a Yjs update v1 from outside (a client, the HTTP API, a hook)
/// without risking the process: nesting checked before yrs recurses into
/// it, and yrs's panics turned into an error.
pub fn decode_update(bytes: &[u8]) -> Result<Update, ProtocolError> {
    crate::update_check::check_update(bytes)?;
    Ok(decode_guarded(|| Update::decode_v1(bytes))??)
}

/// [`decode_update`], also listing the update's blocks for the depth check.
pub(crate) fn decode_update_with_blocks(
    bytes: &[u8],
) -> Result<(Update, Vec<crate::update_check::BlockRef>), ProtocolError> {
    let mut blocks = Vec::new();
    crate::update_check::scan_outside_update(bytes, |block| blocks.push(block))?;
    let update = decode_guarded(|| Update::decode_v1(bytes))??;
    Ok((update, blocks))
}

/// The update deletes only clocks the room holds or the update brings. yrs
/// keeps deletions of unknown clocks as a pending delete set, and merging
/// that into the next state it encodes failed with `EndOfBuffer` and a
/// panic (found by fuzzing). A client sent everything it lacks answers
/// with deletions the room can apply.
pub(crate) fn deletes_only_known(
    update: &Update,
    depth: &crate::depth::DepthIndex,
    blocks: &[crate::update_check::BlockRef],
) -> Result<(), DepthError> {
    if update.delete_set().is_empty() {
        return Ok(());
    }
    // Where the update's blocks take each client, once: a lookup per
    // deleting client, not a pass over every block (both lists are only
    // bounded by the frame's bytes).
    let mut brought: Vec<(u64, u32)> = blocks
        .iter()
        .map(|block| (block.client, block.clock.saturating_add(block.len)))
        .collect();
    brought.sort_unstable();
    for (client, ranges) in update.delete_set().iter() {
        let client = client.get();
        let after = brought.partition_point(|&(c, _)| c <= client);
        let brought_end = brought[..after]
            .last()
            .filter(|&&(c, _)| c == client)
            .map_or(0, |&(_, end)| end);
        let known = depth.end(client).max(brought_end);
        // An empty range, or any entry for a client the room has never
        // seen, yrs keeps pending too (found by fuzzing: `[0..0)` of an
        // unknown client); stock clients send neither.
        let unknown = |range: &std::ops::Range<u32>| range.end > known || range.start >= range.end;
        if known == 0 || ranges.iter().any(unknown) {
            return Err(DepthError::MissingDependency);
        }
    }
    Ok(())
}
