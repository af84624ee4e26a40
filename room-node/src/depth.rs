//! How deep a room's shared types nest, kept per item id so an update is
//! refused *before* it is applied when it would nest types deeper than the
//! room's limit.
//!
//! Why: yrs deletes a shared type's subtree recursively while integrating
//! (an overwritten map key, a deleted array element) and renders it
//! recursively, so a few thousand nested `Y.Map`s overflow a thread's stack
//! and abort the whole process. A bound on the update alone is not enough:
//! an update may add one level under a type that is already deep, so the
//! check must know the depth of every item already in the document.
//!
//! The index maps every integrated item id to the depth of its parent
//! type (top-level types are depth 1), as runs of clocks per client: a
//! client's consecutive items usually share a parent depth, so a document
//! typed in one place costs one run per client. An update's blocks name
//! their parent either directly (a top-level name or the id of the item
//! that created the type) or through a neighbour (left or right origin:
//! same parent), so resolving a block may follow a chain through the
//! update; it is followed with an explicit stack, never recursion.
//!
//! An update that depends on an item neither the document nor the update
//! holds is not taken: yrs would keep it pending and integrate it later,
//! at a depth that cannot be known now. Stock clients send one only when
//! the room lost an unacknowledged edit it follows (a failover); the room
//! then asks the client for everything it lacks, in one self-contained
//! update ([`crate::protocol`]).

use std::collections::HashMap;

use crate::update_check::{BlockRef, Id, ParentRef};

/// Default for [`crate::RoomNodeConfig::max_type_depth`]: far beyond any
/// editor's schema (ProseMirror documents nest tens of levels), far inside
/// what yrs's recursion survives on a 2 MiB stack.
pub const DEFAULT_MAX_TYPE_DEPTH: u16 = 256;

/// Depth of a parent that is no type: garbage-collected or unknown
/// content, whose children yrs drops.
const DETACHED: u16 = 0;

/// Why an update was refused by the depth check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DepthError {
    /// Applying it would nest shared types deeper than the limit.
    #[error("shared types nested deeper than {0} levels")]
    TooDeep(u16),
    /// It builds on content the room does not have.
    #[error("update depends on content the room does not have")]
    MissingDependency,
    /// Its blocks name each other as parents in a circle.
    #[error("malformed update: circular parent references")]
    Circular,
    /// A block names as its parent an item that is no shared type (yrs
    /// would integrate part of the update, then refuse the rest).
    #[error("malformed update: a parent that is not a shared type")]
    NotAType,
}

/// What kind of item a run holds, as far as being a parent goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Content: never a parent.
    Content,
    /// A shared type.
    Type,
    /// Deleted or garbage-collected: yrs drops its children.
    Gone,
}

impl Class {
    fn of(block: &BlockRef) -> Self {
        if block.is_type {
            Self::Type
        } else if block.is_gone {
            Self::Gone
        } else {
            Self::Content
        }
    }
}

/// Depth of the parent of each item of one client, as runs.
#[derive(Debug, Default)]
struct ClientRuns {
    /// Clocks `[0, end)` are integrated.
    end: u32,
    /// Run starts, ascending; run `i` covers `[starts[i], starts[i+1])`.
    starts: Vec<u32>,
    /// Parent depth and class of run `i`.
    depths: Vec<(u16, Class)>,
}

impl ClientRuns {
    fn at(&self, clock: u32) -> Option<(u16, Class)> {
        if clock >= self.end {
            return None;
        }
        let run = self.starts.partition_point(|&start| start <= clock);
        // Clocks below the first run are a client's items the index never
        // saw (a document older than the index): unknown.
        run.checked_sub(1).map(|run| self.depths[run])
    }

    fn push(&mut self, start: u32, end: u32, depth: u16, class: Class) {
        if end <= self.end {
            return;
        }
        let start = start.max(self.end);
        // A type is one clock: it always gets a run of its own.
        if self.depths.last() != Some(&(depth, class)) || class == Class::Type {
            self.starts.push(start);
            self.depths.push((depth, class));
        }
        self.end = end;
    }
}

/// The parent depth of every item of a document.
#[derive(Debug, Default)]
pub struct DepthIndex {
    clients: HashMap<u64, ClientRuns>,
}

/// An update's new blocks with their parent depths, to record once the
/// update is applied.
#[derive(Debug, Default)]
pub struct Checked {
    /// (client, start, end, parent depth, class).
    runs: Vec<(u64, u32, u32, u16, Class)>,
    /// Deepest type the update creates.
    pub deepest: u16,
}

impl Checked {
    /// Only the blocks yrs integrated when it held the rest of the update
    /// back: each client's blocks continue where the document ended, and
    /// yrs integrates a prefix of them, so those below `clock_of(client)`
    /// (the document's clock now).
    pub fn integrated(mut self, clock_of: impl Fn(u64) -> u32) -> Self {
        self.runs
            .retain(|&(client, _, end, _, _)| end <= clock_of(client));
        self
    }
}

/// Resolution state of one block of an update.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Unresolved,
    InProgress,
    Done(u16),
}

impl DepthIndex {
    /// An index of an empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of a document whose whole state is `state` (a Yjs update
    /// v1 from `encode_state_as_update_v1`), and the deepest type in it.
    /// Not limited: a document stored before the limit still loads.
    pub fn of_state(blocks: &[BlockRef]) -> Result<(Self, u16), DepthError> {
        let mut index = Self::new();
        let checked = index.check(blocks, u16::MAX)?;
        let deepest = checked.deepest;
        index.record(checked);
        Ok((index, deepest))
    }

    /// Resolves the parent depth of every block of an update, refusing it
    /// when a type would nest deeper than `max_depth`.
    pub fn check(&self, blocks: &[BlockRef], max_depth: u16) -> Result<Checked, DepthError> {
        // A skip says "clocks this update does not carry": yrs stores it as
        // a placeholder, and a later block filling it can overflow its
        // clock arithmetic (found by fuzzing: a panic in `BlockStore::push`
        // with overflow checks on, wrapped clocks without). Stock clients
        // never send one (they encode whole transactions or whole states);
        // asking for everything gets an update without.
        if blocks.iter().any(|block| block.is_skip) {
            return Err(DepthError::MissingDependency);
        }
        // Blocks in (client, clock) order, for lookups by id: one small
        // sort per update, no map (this runs for every edit).
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        order.sort_unstable_by_key(|&i| (blocks[i].client, blocks[i].clock));
        let mut state = vec![State::Unresolved; blocks.len()];
        let mut checked = Checked::default();
        let mut stack = Vec::new();
        for root in 0..blocks.len() {
            stack.push(root);
            while let Some(&i) = stack.last() {
                if let State::Done(_) = state[i] {
                    stack.pop();
                    continue;
                }
                state[i] = State::InProgress;
                let block = &blocks[i];
                let (target, plus) = match block.parent {
                    ParentRef::Root => (Target::Known(1, Class::Type), 0),
                    ParentRef::Detached => (Target::Known(DETACHED, Class::Gone), 0),
                    ParentRef::SameAs(id) => (self.find(id, blocks, &order)?, 0),
                    ParentRef::Type(id) => {
                        let target = self.find(id, blocks, &order)?;
                        let class = match target {
                            Target::Known(_, class) => class,
                            Target::Block(j) => Class::of(&blocks[j]),
                        };
                        if class == Class::Content {
                            return Err(DepthError::NotAType);
                        }
                        (target, 1)
                    }
                };
                let parent_of_target = match target {
                    Target::Known(depth, _) => depth,
                    Target::Block(j) => match state[j] {
                        State::Done(depth) => depth,
                        State::InProgress => return Err(DepthError::Circular),
                        State::Unresolved => {
                            stack.push(j);
                            continue;
                        }
                    },
                };
                let depth = if parent_of_target == DETACHED {
                    DETACHED
                } else {
                    parent_of_target.saturating_add(plus)
                };
                if block.is_type && depth != DETACHED {
                    let type_depth = depth.saturating_add(1);
                    if type_depth > max_depth {
                        return Err(DepthError::TooDeep(max_depth));
                    }
                    checked.deepest = checked.deepest.max(type_depth);
                }
                state[i] = State::Done(depth);
                stack.pop();
            }
        }
        // Every client's blocks must continue where the document ends:
        // a gap is content yrs would hold back as pending.
        for list in order.chunk_by(|&a, &b| blocks[a].client == blocks[b].client) {
            let client = blocks[list[0]].client;
            let mut end = self.end(client);
            for &i in list {
                let block = &blocks[i];
                // A gap is content yrs would hold back as pending. A block
                // starting inside what the room holds, re-sent content
                // included, yrs does not always cut or skip: a GC range, or
                // an item it turns into one (its parent was collected), is
                // pushed uncut and its block store overflows a clock
                // subtraction (found by fuzzing, four times). Asked for
                // everything, the client answers from our state vector:
                // blocks that start at `end`. Stock clients overlap only
                // when a SyncStep2 crosses their own updates.
                if block.clock != end {
                    return Err(DepthError::MissingDependency);
                }
                let State::Done(depth) = state[i] else {
                    unreachable!("every block was resolved above");
                };
                let block_end = block.clock.saturating_add(block.len);
                checked
                    .runs
                    .push((client, block.clock, block_end, depth, Class::of(block)));
                end = block_end;
            }
        }
        Ok(checked)
    }

    /// Records an applied update's blocks.
    pub fn record(&mut self, checked: Checked) {
        for (client, start, end, depth, class) in checked.runs {
            self.clients
                .entry(client)
                .or_default()
                .push(start, end, depth, class);
        }
    }

    /// Each client of `blocks` with the clock the document holds up to.
    pub fn ends(&self, blocks: &[BlockRef]) -> Vec<(u64, u32)> {
        let mut ends: Vec<(u64, u32)> = Vec::new();
        for block in blocks {
            if !ends.iter().any(|(c, _)| *c == block.client) {
                let end = self.clients.get(&block.client).map_or(0, |runs| runs.end);
                ends.push((block.client, end));
            }
        }
        ends
    }

    /// Where `client`'s clocks in the document end (0: none).
    pub fn end(&self, client: u64) -> u32 {
        self.clients.get(&client).map_or(0, |runs| runs.end)
    }

    /// Runs the index holds (its memory is about 8 bytes each).
    pub fn runs(&self) -> usize {
        self.clients.values().map(|c| c.starts.len()).sum()
    }

    /// Where the item `id` is: in the document (its parent depth known) or
    /// in the update. The document wins: yrs ignores what it already has.
    fn find(
        &self,
        (client, clock): Id,
        blocks: &[BlockRef],
        order: &[usize],
    ) -> Result<Target, DepthError> {
        if let Some(runs) = self.clients.get(&client) {
            if clock < runs.end {
                let (depth, class) = runs.at(clock).unwrap_or((DETACHED, Class::Gone));
                return Ok(Target::Known(depth, class));
            }
        }
        // The last block of `client` starting at or before `clock`.
        let after =
            order.partition_point(|&i| (blocks[i].client, blocks[i].clock) <= (client, clock));
        let i = *order[..after].last().ok_or(DepthError::MissingDependency)?;
        let block = &blocks[i];
        if block.client != client || clock >= block.clock.saturating_add(block.len) {
            return Err(DepthError::MissingDependency);
        }
        Ok(Target::Block(i))
    }
}

/// What an id resolved to.
enum Target {
    /// A parent depth (and the item's class) already known.
    Known(u16, Class),
    /// A block of the update, resolved on demand.
    Block(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update_check::scan_update;
    use yrs::{Doc, Map, MapPrelim, MapRef, ReadTxn, StateVector, Text, Transact, WriteTxn};

    fn blocks(update: &[u8]) -> Vec<BlockRef> {
        let mut out = Vec::new();
        scan_update(update, |b| out.push(b)).unwrap();
        out
    }

    /// `depth` maps nested under the root map "m", one update per level,
    /// each from the same doc (so each names its parent by id).
    fn nested_updates(doc: &Doc, depth: usize) -> (Vec<Vec<u8>>, MapRef) {
        let mut parent = doc.get_or_insert_map("m");
        let mut updates = Vec::new();
        for _ in 1..depth {
            let (update, child) = nest_under(doc, &parent);
            updates.push(update);
            parent = child;
        }
        (updates, parent)
    }

    /// One map more under `parent`, and the update that adds it.
    fn nest_under(doc: &Doc, parent: &MapRef) -> (Vec<u8>, MapRef) {
        let mut txn = doc.transact_mut();
        let child = parent.insert(&mut txn, "k", MapPrelim::default());
        (txn.encode_update_v1(), child)
    }

    #[test]
    fn depth_counts_across_updates_and_the_limit_holds() {
        let doc = Doc::with_client_id(1);
        let (updates, deepest) = nested_updates(&doc, 10);
        let mut index = DepthIndex::new();
        for (level, update) in updates.iter().enumerate() {
            let checked = index.check(&blocks(update), 10).unwrap();
            // The n-th update creates the map at depth n + 2 (root is 1).
            assert_eq!(checked.deepest as usize, level + 2);
            index.record(checked);
        }
        // One more level under the deepest map is over a limit of 10,
        // though the update alone holds a single type.
        let (more, _) = nest_under(&doc, &deepest);
        assert_eq!(
            index.check(&blocks(&more), 10).unwrap_err(),
            DepthError::TooDeep(10)
        );
        assert!(index.check(&blocks(&more), 11).is_ok());
    }

    #[test]
    fn a_whole_state_is_measured_in_one_update_and_chains_resolve() {
        let doc = Doc::with_client_id(7);
        nested_updates(&doc, 300);
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let (_, deepest) = DepthIndex::of_state(&blocks(&state)).unwrap();
        assert_eq!(deepest, 300);
        assert_eq!(
            DepthIndex::new()
                .check(&blocks(&state), DEFAULT_MAX_TYPE_DEPTH)
                .unwrap_err(),
            DepthError::TooDeep(DEFAULT_MAX_TYPE_DEPTH)
        );
    }

    #[test]
    fn text_typed_in_one_place_is_one_run_and_origins_find_their_parent() {
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text("t");
        let mut index = DepthIndex::new();
        for i in 0..100 {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, i, "x");
            let update = txn.encode_update_v1();
            drop(txn);
            let checked = index.check(&blocks(&update), 4).unwrap();
            index.record(checked);
        }
        assert_eq!(index.runs(), 1);
    }

    #[test]
    fn an_update_out_of_order_is_not_taken_rather_than_left_pending() {
        let doc = Doc::with_client_id(5);
        let (updates, _) = nested_updates(&doc, 4);
        let index = DepthIndex::new();
        assert_eq!(
            index.check(&blocks(&updates[1]), 256).unwrap_err(),
            DepthError::MissingDependency
        );
        // Re-sending what the document has is not taken either: yrs does
        // not always skip known blocks (see `check`); the client is asked
        // for what the room lacks, which is nothing.
        let mut index = DepthIndex::new();
        let checked = index.check(&blocks(&updates[0]), 256).unwrap();
        index.record(checked);
        assert_eq!(
            index.check(&blocks(&updates[0]), 256).unwrap_err(),
            DepthError::MissingDependency
        );
    }

    #[test]
    fn a_parent_that_is_content_is_refused_before_anything_applies() {
        // Found by fuzzing: a map whose parent id is a character of a text
        // made yrs integrate the blocks before it, then fail.
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "hello");
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let (index, _) = DepthIndex::of_state(&blocks(&state)).unwrap();
        let bad = BlockRef {
            client: 2,
            clock: 0,
            len: 1,
            parent: ParentRef::Type((1, 1)),
            is_type: true,
            is_gone: false,
            is_skip: false,
            is_subdoc: false,
            is_json: false,
        };
        assert_eq!(index.check(&[bad], 256).unwrap_err(), DepthError::NotAType);
        // A parent that was deleted or collected is fine: yrs drops the
        // child (an offline edit inside a map someone removed).
        let gone = BlockRef {
            client: 3,
            clock: 0,
            len: 2,
            parent: ParentRef::Root,
            is_type: false,
            is_gone: true,
            is_skip: false,
            is_subdoc: false,
            is_json: false,
        };
        let child = BlockRef {
            client: 4,
            parent: ParentRef::Type((3, 1)),
            ..bad
        };
        assert!(index.check(&[gone, child], 256).is_ok());
    }

    #[test]
    fn an_update_with_a_skip_is_not_taken() {
        let item = BlockRef {
            client: 5,
            clock: 0,
            len: 1,
            parent: ParentRef::Root,
            is_type: false,
            is_gone: false,
            is_skip: false,
            is_subdoc: false,
            is_json: false,
        };
        let skip = BlockRef {
            clock: 1,
            len: 5,
            parent: ParentRef::Detached,
            is_skip: true,
            is_subdoc: false,
            is_json: false,
            ..item
        };
        assert!(DepthIndex::new().check(&[item], 256).is_ok());
        assert_eq!(
            DepthIndex::new().check(&[item, skip], 256).unwrap_err(),
            DepthError::MissingDependency
        );
    }

    #[test]
    fn a_gc_range_overlapping_known_clocks_is_not_taken() {
        let item = BlockRef {
            client: 6,
            clock: 0,
            len: 4,
            parent: ParentRef::Root,
            is_type: false,
            is_gone: false,
            is_skip: false,
            is_subdoc: false,
            is_json: false,
        };
        let mut index = DepthIndex::new();
        let checked = index.check(&[item], 256).unwrap();
        index.record(checked);
        let gc = |clock, len| BlockRef {
            clock,
            len,
            parent: ParentRef::Detached,
            is_gone: true,
            ..item
        };
        // Starting where the document ends: fine.
        assert!(index.check(&[gc(4, 3)], 256).is_ok());
        // Across the end, or wholly known: yrs would overflow on it.
        for (clock, len) in [(2, 5), (1, 2)] {
            assert_eq!(
                index.check(&[gc(clock, len)], 256).unwrap_err(),
                DepthError::MissingDependency
            );
        }
    }

    #[test]
    fn circular_references_are_malformed() {
        let a = BlockRef {
            client: 1,
            clock: 0,
            len: 1,
            parent: ParentRef::SameAs((2, 0)),
            is_type: false,
            is_gone: false,
            is_skip: false,
            is_subdoc: false,
            is_json: false,
        };
        let b = BlockRef {
            client: 2,
            parent: ParentRef::SameAs((1, 0)),
            ..a
        };
        assert_eq!(
            DepthIndex::new().check(&[a, b], 256).unwrap_err(),
            DepthError::Circular
        );
    }

    #[test]
    fn every_kind_of_content_keeps_clocks_in_step_with_yrs() {
        // Items after multi-clock content (UTF-16 text, Any arrays, JSON,
        // deletions) must still be found by id.
        let doc = Doc::with_client_id(9);
        {
            let mut txn = doc.transact_mut();
            let text = txn.get_or_insert_text("t");
            text.insert(&mut txn, 0, "héllo 😀 wörld");
            text.remove_range(&mut txn, 0, 1);
            let array = txn.get_or_insert_array("a");
            yrs::Array::insert_range(&array, &mut txn, 0, [1, 2, 3]);
            let map = txn.get_or_insert_map("m");
            map.insert(&mut txn, "x", MapPrelim::default());
        }
        let first = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let (mut index, _) = DepthIndex::of_state(&blocks(&first)).unwrap();
        let sv = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            let text = txn.get_or_insert_text("t");
            text.insert(&mut txn, 0, "!");
            let map = txn.get_or_insert_map("m");
            let Some(yrs::Out::YMap(inner)) = map.get(&txn, "x") else {
                panic!("nested map");
            };
            inner.insert(&mut txn, "y", MapPrelim::default());
        }
        let next = doc.transact().encode_state_as_update_v1(&sv);
        let checked = index.check(&blocks(&next), 256).unwrap();
        assert_eq!(checked.deepest, 3);
        index.record(checked);
        assert_eq!(
            index.clients[&9].end,
            doc.transact().state_vector().get(&yrs::ClientID::new(9))
        );
    }
}
