//! A room node and a gateway in one test process over real gRPC on
//! loopback, for storage tests that need the whole room path but not a
//! cluster.

use std::sync::Arc;

use partyline_proto::{NodeId, NodeInfo, SlotMap};
use partyline_room_node::storage::remote::RemoteStorage;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A room node and a gateway in-process over real gRPC, the node on remote
/// storage.
pub(crate) async fn serve(
    storage: RemoteStorage,
    tune: impl FnOnce(&mut partyline_room_node::RoomNodeConfig),
) -> (String, CancellationToken) {
    let mut gateway = partyline_gateway::GatewayConfig::new("g");
    // Storage tests push updates as fast as the room takes them.
    gateway.limits.max_messages_per_second = 0;
    let (url, _, shutdown) = serve_gateway(storage, gateway, tune).await;
    (url, shutdown)
}

/// [`serve`] with the gateway's HTTP API on `api_key`; also returns the
/// gateway's address.
pub(crate) async fn serve_with_api(
    storage: RemoteStorage,
    api_key: &str,
    tune: impl FnOnce(&mut partyline_room_node::RoomNodeConfig),
) -> (String, std::net::SocketAddr, CancellationToken) {
    let mut gateway = partyline_gateway::GatewayConfig::new("g");
    gateway.api_key = Some(api_key.to_owned());
    serve_gateway(storage, gateway, tune).await
}

async fn serve_gateway(
    storage: RemoteStorage,
    gateway: partyline_gateway::GatewayConfig,
    tune: impl FnOnce(&mut partyline_room_node::RoomNodeConfig),
) -> (String, std::net::SocketAddr, CancellationToken) {
    let shutdown = CancellationToken::new();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let map = Some(Arc::new(SlotMap::single(
        1,
        NodeInfo {
            id: NodeId::new("n"),
            grpc_url: format!("http://{}", grpc.local_addr().unwrap()),
        },
    )));
    let (_map_tx, map_rx) = watch::channel(map);
    let mut config = partyline_room_node::RoomNodeConfig::new(NodeId::new("n"), Default::default());
    tune(&mut config);
    tokio::spawn(partyline_room_node::run(
        grpc,
        config,
        partyline_room_node::Resources::new(partyline_room_node::storage::NodeStorage::remote(
            storage,
        )),
        map_rx.clone(),
        super::test_link(),
        shutdown.clone(),
    ));
    let addr = spawn_gateway(gateway, _map_tx, map_rx, &shutdown).await;
    (format!("ws://{addr}"), addr, shutdown)
}

/// A gateway on a free loopback port routing by `map_rx`, until `shutdown`
/// (which also drops `map_tx`, so the map's watchers end).
pub(crate) async fn spawn_gateway(
    config: partyline_gateway::GatewayConfig,
    map_tx: watch::Sender<Option<Arc<SlotMap>>>,
    map_rx: watch::Receiver<Option<Arc<SlotMap>>>,
    shutdown: &CancellationToken,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(partyline_gateway::run(
        listener,
        config,
        map_rx,
        super::test_link(),
        shutdown.clone(),
    ));
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            drop(map_tx);
        }
    });
    addr
}
