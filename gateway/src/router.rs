//! Room → owning node → gRPC channel, from the current slot map.
//!
//! The slot map arrives on a `watch` channel (static in `partyline dev`,
//! from NATS KV in a cluster). Channels are cached per node URL and connect
//! lazily, so routing never blocks on a dial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use partyline_proto::link::{self, LinkAuth, NodeChannel};
use partyline_proto::{RoomName, SlotMap};
use tokio::sync::watch;

/// The slot map as the gateway sees it; `None` until the first one.
pub type SlotMapWatch = watch::Receiver<Option<Arc<SlotMap>>>;

/// Where a room lives right now.
#[derive(Debug, Clone)]
pub struct Route {
    /// Epoch of the map the route came from.
    pub epoch: u64,
    /// The owner's gRPC URL.
    pub url: String,
    /// A (lazily connected) channel to the owner, sending the link secret.
    pub channel: NodeChannel,
}

/// Why a room cannot be routed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No slot map has arrived yet.
    #[error("no slot map yet")]
    NoMap,
    /// The owner's URL in the map is not a valid endpoint.
    #[error("invalid room node url {url}: {source}")]
    BadUrl {
        /// The URL from the map.
        url: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
}

/// Routes rooms with the latest slot map.
#[derive(Clone)]
pub struct Router {
    slot_map: SlotMapWatch,
    link: LinkAuth,
    channels: Arc<Mutex<HashMap<String, NodeChannel>>>,
}

impl Router {
    /// A router following `slot_map`, authenticating to room nodes with
    /// `link`.
    pub fn new(slot_map: SlotMapWatch, link: LinkAuth) -> Self {
        Self {
            slot_map,
            link,
            channels: Arc::default(),
        }
    }

    /// Whether a slot map has arrived.
    pub fn has_map(&self) -> bool {
        self.slot_map.borrow().is_some()
    }

    /// The current map's epoch (0 before the first map).
    pub fn epoch(&self) -> u64 {
        self.slot_map.borrow().as_ref().map_or(0, |map| map.epoch())
    }

    /// The current owner's URL of `room`, if there is a map.
    pub fn owner_url(&self, room: &RoomName) -> Option<String> {
        let map = self.slot_map.borrow();
        map.as_ref()
            .map(|map| map.owner_of_room(room.as_str()).grpc_url.clone())
    }

    /// A receiver of map changes, for callers that react to new epochs.
    pub fn subscribe(&self) -> SlotMapWatch {
        self.slot_map.clone()
    }

    /// The current owner of `room`.
    pub fn route(&self, room: &RoomName) -> Result<Route, RouteError> {
        let (epoch, url) = {
            let map = self.slot_map.borrow();
            let map = map.as_ref().ok_or(RouteError::NoMap)?;
            (
                map.epoch(),
                map.owner_of_room(room.as_str()).grpc_url.clone(),
            )
        };
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let channel = match channels.get(&url) {
            Some(channel) => channel.clone(),
            None => {
                let channel = partyline_proto::rt::endpoint(url.clone())
                    .map_err(|source| RouteError::BadUrl {
                        url: url.clone(),
                        source,
                    })?
                    .connect_lazy();
                let channel = link::node_channel(channel, self.link.clone());
                channels.insert(url.clone(), channel.clone());
                channel
            }
        };
        Ok(Route {
            epoch,
            url,
            channel,
        })
    }
}
