//! Large documents through `partyline dev`: a document well over the old
//! 64 MiB gRPC cap, built from edits within the frame limit, syncs to a
//! fresh client (its SyncStep2 crosses the gateway ↔ room node link in
//! chunks and reaches the client as one message); growing it past
//! `--max-doc-bytes` is refused and the writer told, with nothing stored
//! lost.

use std::time::{Duration, Instant};

use partyline_bench::client::YClient;

use crate::common::DevServer;

const WAIT: Duration = Duration::from_secs(120);
const EDIT: usize = 12 * 1024 * 1024;

async fn text_len(client: &YClient) -> usize {
    client.text("t").await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_64_mib_syncs_whole_and_growth_past_the_maximum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Room for six 12 MiB edits (72 MiB), not seven.
    let server = DevServer::start(dir.path(), &["--max-doc-bytes", "80000000"]);
    let url = server.url("doc-large");
    let writer = YClient::connect(&url).await.unwrap();
    writer.wait_synced(WAIT).await.unwrap();
    // Each edit waits for its echo (it is logged then), as an editor
    // that reads while it writes would see it.
    for i in 0..6u8 {
        let applied = writer.stats().updates_applied;
        let chunk = char::from(b'a' + i).to_string().repeat(EDIT);
        writer.push_text("t", &chunk).await.unwrap();
        let deadline = Instant::now() + WAIT;
        while writer.stats().updates_applied == applied {
            assert!(Instant::now() < deadline, "edit {i} not echoed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let before = server.rss_bytes();
    let started = Instant::now();
    let fresh = YClient::connect(&url).await.unwrap();
    fresh.wait_synced(WAIT).await.unwrap();
    let synced_in = started.elapsed();
    let during = server.rss_bytes();
    assert_eq!(text_len(&fresh).await, 6 * EDIT);
    eprintln!(
        "72 MiB document: fresh client synced in {synced_in:?}; partyline dev RSS {} MiB before, {} MiB after",
        before >> 20,
        during >> 20
    );

    // The seventh edit would pass 80 MB: refused, the writer told, and
    // what is stored stays.
    writer.push_text("t", &"g".repeat(EDIT)).await.unwrap();
    let denied = writer.wait_denied(WAIT).await.expect("the writer was told");
    assert!(denied.contains("document too large"), "{denied}");
    assert!(writer.close_info().is_none(), "the writer stays connected");
    let later = YClient::connect(&url).await.unwrap();
    later.wait_synced(WAIT).await.unwrap();
    assert_eq!(text_len(&later).await, 6 * EDIT);
    assert!(server.log().matches("re-opening the room").count() == 0);
}
