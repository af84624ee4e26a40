//! A gateway routing with a stale slot map: the node it reaches answers
//! NOT_OWNER with its newer epoch, the gateway waits for its own map to
//! catch up and opens the room on the real owner. The client only sees a
//! short pause, never a close. Gateway and room nodes run in-process over
//! real gRPC on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use partyline_bench::client::YClient;
use partyline_proto::{NodeId, NodeInfo, SlotMap};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

type MapTx = watch::Sender<Option<Arc<SlotMap>>>;

/// Starts a room node with `map` and returns its gRPC URL.
async fn room_node(
    id: &str,
    store: &std::path::Path,
    map: watch::Receiver<Option<Arc<SlotMap>>>,
    shutdown: &CancellationToken,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = partyline_room_node::RoomNodeConfig::new(NodeId::new(id), store.to_owned());
    config.room_locks = true;
    let storage = partyline_room_node::storage::NodeStorage::files(&config);
    tokio::spawn(partyline_room_node::run(
        listener,
        config,
        partyline_room_node::Resources::new(storage),
        map,
        link(),
        shutdown.clone(),
    ));
    url
}

/// Node and gateway share a link secret, as in a cluster.
fn link() -> partyline_proto::link::LinkAuth {
    partyline_proto::link::LinkAuth::Secret(
        partyline_proto::link::LinkSecret::fixed("reroute-test-link-secret-0123").unwrap(),
    )
}

fn single(epoch: u64, id: &str, url: &str) -> Option<Arc<SlotMap>> {
    Some(Arc::new(SlotMap::single(
        epoch,
        NodeInfo {
            id: NodeId::new(id),
            grpc_url: url.to_owned(),
        },
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_gateway_reroutes_on_not_owner_without_the_client_noticing() {
    let store = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    // Both nodes already know epoch 2, where b owns every slot.
    let (nodes_map_tx, nodes_map): (MapTx, _) = watch::channel(None);
    let url_a = room_node("a", store.path(), nodes_map.clone(), &shutdown).await;
    let url_b = room_node("b", store.path(), nodes_map, &shutdown).await;
    nodes_map_tx.send_replace(single(2, "b", &url_b));

    // The gateway still routes with epoch 1, where a owned everything.
    let (gateway_map_tx, gateway_map): (MapTx, _) = watch::channel(single(1, "a", &url_a));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(partyline_gateway::run(
        listener,
        partyline_gateway::GatewayConfig::new("test"),
        gateway_map,
        link(),
        shutdown.clone(),
    ));

    let started = Instant::now();
    let catch_up = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gateway_map_tx.send_replace(single(2, "b", &url_b));
        gateway_map_tx
    });
    let client = YClient::connect(&format!("ws://{addr}/doc-stale"))
        .await
        .expect("upgrade");
    client
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("synced once the gateway caught up");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "synced after {waited:?}: before the gateway knew the owner?"
    );
    client.push_text("t", "hello").await.unwrap();
    let other = YClient::connect(&format!("ws://{addr}/doc-stale"))
        .await
        .unwrap();
    other
        .wait_for_text("t", "hello", Duration::from_secs(5))
        .await
        .expect("the room works on its real owner");
    assert!(client.close_info().is_none(), "{:?}", client.close_info());
    let _gateway_map_tx = catch_up.await.unwrap();
    shutdown.cancel();
}
