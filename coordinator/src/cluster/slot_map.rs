//! The slot map's JSON as stored under `slotmap` in the `{cluster}-map`
//! bucket: `{"epoch", "nodes": [{"id", "grpc_url"}], "owners": [index]}`.
//!
//! Owns the encoding and its validation only; it must not change the
//! format (every gateway and room node of a running cluster reads it).

use bytes::Bytes;
use partyline_proto::{NodeId, NodeInfo, Slot, SlotMap, SlotMapError, SLOTS};
use serde::{Deserialize, Serialize};

/// Why stored slot map bytes were rejected.
#[derive(Debug, thiserror::Error)]
pub enum SlotMapDecodeError {
    /// Not the expected JSON.
    #[error("not slot map JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON of the right shape describing an impossible map.
    #[error(transparent)]
    Invalid(#[from] SlotMapError),
}

/// The slot map as stored in KV (`SlotMap` itself has no serde).
#[derive(Serialize, Deserialize)]
struct SlotMapWire {
    epoch: u64,
    nodes: Vec<NodeWire>,
    owners: Vec<u16>,
}

#[derive(Serialize, Deserialize)]
struct NodeWire {
    id: String,
    grpc_url: String,
}

/// Encodes a slot map as the JSON stored under [`SLOT_MAP_KEY`](super::SLOT_MAP_KEY).
pub fn encode_slot_map(map: &SlotMap) -> Bytes {
    let nodes = map.nodes();
    let owners = Slot::all()
        .map(|slot| {
            let owner = map.owner(slot);
            // By address, not id: the map does not promise unique ids and
            // the owner reference points into `nodes()` itself.
            nodes
                .iter()
                .position(|node| std::ptr::eq(node, owner))
                .expect("a slot owner is one of the map's nodes") as u16
        })
        .collect::<Vec<u16>>();
    debug_assert_eq!(owners.len(), usize::from(SLOTS));
    let wire = SlotMapWire {
        epoch: map.epoch(),
        nodes: nodes
            .iter()
            .map(|node| NodeWire {
                id: node.id.as_str().to_owned(),
                grpc_url: node.grpc_url.clone(),
            })
            .collect(),
        owners,
    };
    Bytes::from(serde_json::to_vec(&wire).expect("slot map serializes"))
}

/// Decodes and validates a stored slot map.
pub fn decode_slot_map(bytes: &[u8]) -> Result<SlotMap, SlotMapDecodeError> {
    let wire: SlotMapWire = serde_json::from_slice(bytes)?;
    let nodes = wire
        .nodes
        .into_iter()
        .map(|node| NodeInfo {
            id: NodeId::new(node.id),
            grpc_url: node.grpc_url,
        })
        .collect();
    Ok(SlotMap::new(wire.epoch, nodes, wire.owners)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::assign;
    use crate::placement::tests::nodes;

    #[test]
    fn slot_map_round_trips_through_json() {
        let map = assign(42, &nodes(&["a", "b", "c"])).unwrap();
        let bytes = encode_slot_map(&map);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["epoch"], 42);
        assert_eq!(json["nodes"][0]["id"], "a");
        assert_eq!(json["nodes"][0]["grpc_url"], "http://a:7001");
        assert_eq!(json["owners"].as_array().unwrap().len(), 4096);
        assert_eq!(decode_slot_map(&bytes).unwrap(), map);
    }

    #[test]
    fn invalid_stored_maps_are_rejected() {
        assert!(matches!(
            decode_slot_map(b"{\"epoch\":1}"),
            Err(SlotMapDecodeError::Json(_))
        ));
        let short = br#"{"epoch":1,"nodes":[{"id":"a","grpc_url":"u"}],"owners":[0,0]}"#;
        assert!(matches!(
            decode_slot_map(short),
            Err(SlotMapDecodeError::Invalid(SlotMapError::WrongLength(2)))
        ));
    }
}
