//! Room → owning node → gRPC channel, from the current slot map.
//!
//! The slot map arrives on a `watch` channel (static in `partyline dev`,
//! from NATS KV in a cluster). Channels are cached per node URL and connect
//! lazily, so routing never blocks on a dial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use partyline_proto::{RoomName, SlotMap};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// Where a room lives right now.
#[derive(Debug, Clone)]
pub struct Route {
    /// Epoch of the map the route came from.
    pub epoch: u64,
    /// The owner's gRPC URL.
    pub url: String,
    /// A (lazily connected) channel to the owner.
    pub channel: Channel,
}

/// A node URL in the slot map that is not a valid endpoint.
#[derive(Debug, thiserror::Error)]
#[error("invalid room node url {url}: {source}")]
pub struct RouteError {
    url: String,
    source: tonic::transport::Error,
}

/// Routes rooms with the latest slot map.
#[derive(Clone)]
pub struct Router {
    slot_map: watch::Receiver<Arc<SlotMap>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Router {
    /// A router following `slot_map`.
    pub fn new(slot_map: watch::Receiver<Arc<SlotMap>>) -> Self {
        Self {
            slot_map,
            channels: Arc::default(),
        }
    }

    /// The current owner of `room`.
    pub fn route(&self, room: &RoomName) -> Result<Route, RouteError> {
        let (epoch, url) = {
            let map = self.slot_map.borrow();
            (
                map.epoch(),
                map.owner_of_room(room.as_str()).grpc_url.clone(),
            )
        };
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let channel = match channels.get(&url) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(url.clone())
                    .map_err(|source| RouteError {
                        url: url.clone(),
                        source,
                    })?
                    .tcp_nodelay(true)
                    .connect_lazy();
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
