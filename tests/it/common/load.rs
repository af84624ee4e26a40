//! A bounded write load for cluster tests: rooms × clients appending
//! chunks through the gateways, then a check that no socket closed and
//! that every client ends with every chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use partyline_bench::client::YClient;

use super::cluster::TestCluster;

/// Rooms × clients writing through both gateways until stopped.
pub(crate) struct Load {
    pub rooms: Vec<String>,
    /// (room index, client, label).
    pub clients: Vec<(usize, Arc<YClient>, String)>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<usize>>,
}

impl Load {
    /// Connects `clients` per room to each of `rooms` rooms, alternating
    /// gateways, and starts every client appending a chunk every `every`.
    pub(crate) async fn start(
        cluster: &TestCluster,
        prefix: &str,
        rooms: usize,
        clients: usize,
        every: Duration,
    ) -> Self {
        let gateways: Vec<String> = cluster.gateways.iter().map(|g| g.ready.clone()).collect();
        Self::start_at(&gateways, prefix, rooms, clients, every).await
    }

    /// [`Load::start`] through the gateways at `gateways` (`host:port`).
    pub(crate) async fn start_at(
        gateways: &[String],
        prefix: &str,
        rooms: usize,
        clients: usize,
        every: Duration,
    ) -> Self {
        let rooms: Vec<String> = (0..rooms).map(|i| format!("{prefix}-{i}")).collect();
        let mut all = Vec::new();
        for (r, room) in rooms.iter().enumerate() {
            for c in 0..clients {
                let gateway = &gateways[c % gateways.len()];
                let client = YClient::connect(&format!("ws://{gateway}/{room}"))
                    .await
                    .expect("connect");
                client
                    .wait_synced(Duration::from_secs(15))
                    .await
                    .expect("synced");
                all.push((r, Arc::new(client), format!("r{r}c{c}")));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writers = all
            .iter()
            .map(|(_, client, label)| {
                let (client, label, stop) = (client.clone(), label.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut sent = 0;
                    // Bounded: at most 2,000 chunks or until stopped.
                    while !stop.load(Ordering::Relaxed) && sent < 2_000 {
                        client
                            .push_text("t", &format!("{label}-{sent};"))
                            .await
                            .expect("edit");
                        sent += 1;
                        tokio::time::sleep(every).await;
                    }
                    sent
                })
            })
            .collect();
        Self {
            rooms,
            clients: all,
            stop,
            writers,
        }
    }

    /// Stops writing, then checks that no socket closed and that every
    /// client of every room ends with every chunk any client wrote.
    pub(crate) async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = Vec::new();
        for writer in self.writers {
            sent.push(writer.await.expect("writer"));
        }
        for (_, client, label) in &self.clients {
            assert!(
                client.close_info().is_none(),
                "client {label} was disconnected: {:?}",
                client.close_info()
            );
        }
        for (r, room) in self.rooms.iter().enumerate() {
            let chunks: Vec<String> = self
                .clients
                .iter()
                .zip(&sent)
                .filter(|((room_index, _, _), _)| *room_index == r)
                .flat_map(|((_, _, label), &n)| (0..n).map(move |i| format!("{label}-{i};")))
                .collect();
            let mut texts = Vec::new();
            for (room_index, client, label) in &self.clients {
                if *room_index != r {
                    continue;
                }
                let expected = chunks.clone();
                let waited = client
                    .wait_until(Duration::from_secs(20), move |doc| {
                        let text = partyline_bench::client::text_of(doc, "t");
                        expected.iter().all(|chunk| text.contains(chunk.as_str()))
                    })
                    .await;
                if waited.is_err() {
                    let text = client.text("t").await.unwrap_or_default();
                    let missing: Vec<&String> = chunks
                        .iter()
                        .filter(|c| !text.contains(c.as_str()))
                        .collect();
                    panic!(
                        "room {room}: client {label} misses {} of {} chunks, e.g. {:?}",
                        missing.len(),
                        chunks.len(),
                        &missing[..missing.len().min(5)]
                    );
                }
                texts.push(client.text("t").await.expect("read text"));
            }
            assert!(
                texts.windows(2).all(|pair| pair[0] == pair[1]),
                "room {room}: clients hold different documents"
            );
        }
    }
}
