//! Remote storage against a real `redis-server` (AOF on) and object stores:
//! fencing of stale owners, falling back from a corrupt snapshot, and
//! compaction bounds through a real gateway and room node.

use std::time::{Duration, Instant};

use partyline_bench::client::YClient;
use partyline_proto::NodeId;
use partyline_room_node::storage::remote::{RemoteError, RemoteStorage, SnapshotStore};
use redis::Commands;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::common;
use crate::common::redis_server::RedisServer;
use crate::common::yjs::{edit, text_of};

async fn storage(redis: &RedisServer, snapshots: &std::path::Path) -> RemoteStorage {
    let store = SnapshotStore::from_url(&format!("file://{}", snapshots.display())).unwrap();
    RemoteStorage::connect(&redis.url(), store, "test")
        .await
        .unwrap()
}

fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    for room in std::fs::read_dir(dir.join("rooms")).into_iter().flatten() {
        for file in std::fs::read_dir(room.unwrap().path()).unwrap() {
            names.push(file.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    names
}

#[tokio::test]
async fn a_stale_epoch_cannot_trim_register_or_delete() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&redis, dir.path()).await;
    let mut conn = redis.connection();
    let log = storage.log_key("doc-fenced");
    let doc = Doc::new();

    let (mut old, _) = storage
        .open("doc-fenced", NodeId::new("a"), 1, 2)
        .await
        .unwrap();
    old.append(&[edit(&doc, "one;")]).await.unwrap();
    old.snapshot(
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default()),
    )
    .await
    .unwrap();
    old.append(&[edit(&doc, "two;")]).await.unwrap();

    // A newer owner claims the slot (the old one is paused, say).
    let (mut new, loaded) = storage
        .open("doc-fenced", NodeId::new("b"), 2, 2)
        .await
        .unwrap();
    assert_eq!(text_of(&loaded.updates), "one;two;");
    let snaps_before: Vec<String> = conn
        .lrange("test:r:".to_owned() + new.id() + ":snaps", 0, -1)
        .unwrap();
    let files_before = snapshot_files(dir.path());
    let log_before: usize = conn.xlen(&log).unwrap();

    // The stale node's appends are refused (fenced: the new owner's
    // snapshot could otherwise "cover" them without containing them); its
    // snapshot is refused and leaves no trace, and it trims nothing.
    let stale = old.append(&[edit(&doc, "three;")]).await;
    assert!(
        matches!(
            stale,
            Err(RemoteError::Fenced {
                current: 2,
                ours: 1,
                ..
            })
        ),
        "{stale:?}"
    );
    let refused = old
        .snapshot(
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default()),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(RemoteError::Fenced {
                current: 2,
                ours: 1,
                ..
            })
        ),
        "{refused:?}"
    );
    let snaps_after: Vec<String> = conn
        .lrange("test:r:".to_owned() + new.id() + ":snaps", 0, -1)
        .unwrap();
    assert_eq!(snaps_after, snaps_before, "snapshot list untouched");
    assert_eq!(
        snapshot_files(dir.path()),
        files_before,
        "no stale blob left"
    );
    let log_after: usize = conn.xlen(&log).unwrap();
    assert_eq!(log_after, log_before, "nothing trimmed, nothing appended");
    assert!(matches!(
        storage.open("doc-fenced", NodeId::new("a"), 1, 2).await,
        Err(RemoteError::Fenced { .. })
    ));

    // The current owner compacts: two snapshots kept, the log trimmed to
    // what the previous one covered.
    let doc_b = Doc::new();
    doc_b
        .transact_mut()
        .apply_update(
            Update::decode_v1(
                &doc.transact()
                    .encode_state_as_update_v1(&StateVector::default()),
            )
            .unwrap(),
        )
        .unwrap();
    for round in 0..3 {
        new.append(&[edit(&doc_b, &format!("b{round};"))])
            .await
            .unwrap();
        new.snapshot(
            doc_b
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
        )
        .await
        .unwrap();
    }
    let snaps: Vec<String> = conn
        .lrange("test:r:".to_owned() + new.id() + ":snaps", 0, -1)
        .unwrap();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert_eq!(snapshot_files(dir.path()).len(), 2);
    let trimmed: usize = conn.xlen(&log).unwrap();
    assert!(trimmed <= 2, "log holds {trimmed} entries after compaction");
    let (_, reloaded) = storage
        .open("doc-fenced", NodeId::new("c"), 3, 2)
        .await
        .unwrap();
    assert_eq!(text_of(&reloaded.updates), "one;two;three;b0;b1;b2;");
}

#[tokio::test]
async fn a_stale_owners_acknowledged_append_survives_the_new_owners_compaction() {
    // The split brain of issue 18 in miniature: the new owner has read the
    // log; the stale owner (cut off from NATS, still reached by a gateway
    // on the old map) appends; the new owner appends, snapshots and trims.
    // Whatever the stale append was told must hold after a reload: refused,
    // or in the room. (Unfenced, the append succeeded and the next load
    // skipped it: the new snapshot "covered" its id without containing it.)
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&redis, dir.path()).await;
    let (mut old, _) = storage
        .open("doc-split", NodeId::new("a"), 1, 2)
        .await
        .unwrap();
    let doc_old = Doc::new();
    old.append(&[edit(&doc_old, "base;")]).await.unwrap();
    let (mut new, loaded) = storage
        .open("doc-split", NodeId::new("b"), 2, 2)
        .await
        .unwrap();
    let doc_new = Doc::new();
    for update in &loaded.updates {
        doc_new
            .transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }
    let stale = old.append(&[edit(&doc_old, "stale;")]).await;
    for round in 0..3 {
        new.append(&[edit(&doc_new, &format!("new{round};"))])
            .await
            .unwrap();
        new.snapshot(
            doc_new
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
        )
        .await
        .unwrap();
    }
    let (_, reloaded) = storage
        .open("doc-split", NodeId::new("c"), 3, 2)
        .await
        .unwrap();
    let text = text_of(&reloaded.updates);
    assert!(
        stale.is_err() || text.contains("stale;"),
        "the stale owner's append was acknowledged but the room lost it: {text:?}"
    );
    assert!(
        matches!(
            stale,
            Err(RemoteError::Fenced {
                current: 2,
                ours: 1,
                ..
            })
        ),
        "{stale:?}"
    );
    assert!(text.contains("base;") && text.contains("new2;"), "{text:?}");
}

#[tokio::test]
async fn a_corrupt_newest_snapshot_falls_back_to_the_previous_one_and_the_log() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&redis, dir.path()).await;
    let doc = Doc::new();
    let (mut room, _) = storage
        .open("doc-corrupt", NodeId::new("a"), 1, 2)
        .await
        .unwrap();
    let state = |doc: &Doc| {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    room.append(&[edit(&doc, "first;")]).await.unwrap();
    room.snapshot(state(&doc)).await.unwrap();
    room.append(&[edit(&doc, "second;")]).await.unwrap();
    room.snapshot(state(&doc)).await.unwrap();
    room.append(&[edit(&doc, "tail;")]).await.unwrap();

    // Damage the newest snapshot on disk.
    let newest = {
        let mut conn = redis.connection();
        let entries: Vec<String> = conn
            .lrange("test:r:".to_owned() + room.id() + ":snaps", 0, 0)
            .unwrap();
        entries[0].split_once(' ').unwrap().1.to_owned()
    };
    let path = dir.path().join("rooms").join(room.id()).join(&newest);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let (_, loaded) = storage
        .open("doc-corrupt", NodeId::new("b"), 2, 2)
        .await
        .unwrap();
    assert_eq!(loaded.corrupt_snapshots, vec![newest]);
    assert_eq!(text_of(&loaded.updates), "first;second;tail;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_bounds_the_log_and_the_snapshots() {
    const UPDATES: usize = 100_000;
    const MAX_UPDATES: u64 = 1_000;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&redis, dir.path()).await;
    let log = storage.log_key("doc-compact");
    // While updates pour in, snapshots trail them (the next starts when the
    // last one is done) and the log can hold more than 2 × MAX_UPDATES; the
    // bound is for a room at rest, which the interval snapshot of a dirty
    // room reaches.
    let (url, shutdown) = common::inproc::serve(storage, |config| {
        config.snapshot_log_updates = MAX_UPDATES;
        config.snapshot_interval = Duration::from_secs(1);
    })
    .await;
    let writer = YClient::connect(&format!("{url}/doc-compact"))
        .await
        .unwrap();
    writer.wait_synced(Duration::from_secs(10)).await.unwrap();
    let started = Instant::now();
    for i in 0..UPDATES {
        writer
            .push_text("t", if i % 2 == 0 { "a" } else { "b" })
            .await
            .unwrap();
    }
    // A new client sees every update: the room node has them all.
    let reader = YClient::connect(&format!("{url}/doc-compact"))
        .await
        .unwrap();
    reader
        .wait_until(Duration::from_secs(120), |doc| {
            partyline_bench::client::text_of(doc, "t").len() == UPDATES
        })
        .await
        .unwrap();
    eprintln!(
        "{UPDATES} updates sent and stored in {:?}",
        started.elapsed()
    );
    // Let the snapshots triggered by the final updates, and the interval
    // one after them, finish.
    let mut conn = redis.connection();
    let settle = Instant::now();
    let (entries, snaps) = loop {
        let entries: usize = conn.xlen(&log).unwrap();
        let snaps: Vec<String> = conn.lrange(log.replace(":log", ":snaps"), 0, -1).unwrap();
        if entries as u64 <= 2 * MAX_UPDATES || settle.elapsed() > Duration::from_secs(15) {
            break (entries, snaps);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("log entries {entries}, snapshots {}", snaps.len());
    assert!(
        entries as u64 <= 2 * MAX_UPDATES,
        "log holds {entries} entries"
    );
    assert!(snaps.len() <= 2, "{snaps:?}");
    assert!(snapshot_files(dir.path()).len() <= 2);

    // Cold load, as a node taking the room over would do it.
    let cold = self::storage(&redis, dir.path()).await;
    let started = Instant::now();
    let (_, loaded) = cold
        .open("doc-compact", NodeId::new("cold"), 2, 2)
        .await
        .unwrap();
    let fetched = started.elapsed();
    let text = text_of(&loaded.updates);
    eprintln!(
        "cold load of {UPDATES} updates: fetch {fetched:?} (snapshot + {} log entries), decode {:?}, total {:?}",
        loaded.log_entries,
        started.elapsed() - fetched,
        started.elapsed()
    );
    assert_eq!(text.len(), UPDATES);
    shutdown.cancel();
}

#[tokio::test]
async fn snapshots_can_live_in_redis_too() {
    let redis = RedisServer::start();
    let storage = RemoteStorage::connect(&redis.url(), SnapshotStore::Redis, "test")
        .await
        .unwrap();
    let doc = Doc::new();
    let state = |doc: &Doc| {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let (mut room, _) = storage
        .open("doc-in-redis", NodeId::new("a"), 1, 2)
        .await
        .unwrap();
    for round in 0..3 {
        room.append(&[edit(&doc, &format!("r{round};"))])
            .await
            .unwrap();
        room.snapshot(state(&doc)).await.unwrap();
    }
    room.append(&[edit(&doc, "tail;")]).await.unwrap();
    let mut conn = redis.connection();
    let blobs: Vec<String> = redis::cmd("KEYS")
        .arg(format!("test:r:{}:snap:*", room.id()))
        .query(&mut conn)
        .unwrap();
    assert_eq!(blobs.len(), 2, "only the kept snapshots stay: {blobs:?}");
    let (_, loaded) = storage
        .open("doc-in-redis", NodeId::new("b"), 2, 2)
        .await
        .unwrap();
    assert!(loaded.corrupt_snapshots.is_empty());
    assert_eq!(loaded.log_entries, 1, "snapshot then the one later update");
    assert_eq!(text_of(&loaded.updates), "r0;r1;r2;tail;");
}
