//! Snapshots on a real S3 API (s3s + s3s-fs in-process, SigV4, HTTP) with
//! the update log on a real `redis-server`: the round trip through
//! `s3://bucket/prefix`, falling back from a corrupt newest snapshot object,
//! and an S3 outage that fails a snapshot in bounded time without touching
//! the log or the snapshot list, then recovers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ObjectStoreExt, PutPayload, RetryConfig};
use partyline_proto::NodeId;
use partyline_room_node::storage::remote::{RemoteError, RemoteStorage, SnapshotStore};
use redis::Commands;
use yrs::Doc;

use crate::common;
use crate::common::redis_server::RedisServer;
use crate::common::s3_server::S3Server;
use crate::common::yjs::{edit, state, text_of};

const BUCKET: &str = "snaps";

/// `SnapshotStore::from_url(url)` pointed at `s3`. `from_url` takes the
/// endpoint and credentials only from `AWS_*` environment variables, so
/// they are set here. That is safe: nextest runs every test in its own
/// process, and the lock keeps it safe under `cargo test` too (the store
/// reads the variables once, when it is built).
fn store_from_env(s3: &S3Server, url: &str) -> SnapshotStore {
    static ENV: Mutex<()> = Mutex::new(());
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    for (key, value) in s3.env() {
        std::env::set_var(key, value);
    }
    SnapshotStore::from_url(url).unwrap()
}

/// What `from_url` builds for `s3://BUCKET/prefix` (same options, parsed the
/// same way as `object_store::parse_url_opts` does), plus what it cannot
/// set: a bounded `RetryConfig`, so that an unreachable S3 fails a request
/// in about a second instead of retrying for up to ~1 min (10 retries,
/// jittered backoff up to 15 s each).
fn bounded_store(s3: &S3Server, prefix: &str) -> SnapshotStore {
    let mut builder = AmazonS3Builder::new().with_url(format!("s3://{BUCKET}"));
    let options = s3.env().into_iter().chain([
        ("AWS_CONNECT_TIMEOUT", "1s".to_owned()),
        ("AWS_TIMEOUT", "3s".to_owned()),
    ]);
    for (key, value) in options {
        builder = builder.with_config(key.to_ascii_lowercase().parse().unwrap(), value);
    }
    let store = builder
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(3),
        })
        .build()
        .unwrap();
    SnapshotStore::Object(Arc::new(object_store::prefix::PrefixStore::new(
        store, prefix,
    )))
}

async fn connect(redis: &RedisServer, store: SnapshotStore) -> RemoteStorage {
    RemoteStorage::connect(&redis.url(), store, "test")
        .await
        .unwrap()
}

/// The room's snapshot list in Redis, newest first: "<covered id> <name>".
fn snapshot_list(redis: &RedisServer, room_id: &str) -> Vec<String> {
    redis
        .connection()
        .lrange(format!("test:r:{room_id}:snaps"), 0, -1)
        .unwrap()
}

fn names(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|entry| entry.split_once(' ').unwrap().1.to_owned())
        .collect()
}

/// The ids of the room's log entries, oldest first.
fn log_ids(redis: &RedisServer, storage: &RemoteStorage, room: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis
        .connection()
        .xrange(storage.log_key(room), "-", "+")
        .unwrap();
    reply.ids.into_iter().map(|entry| entry.id).collect()
}

/// The bucket keys of the snapshots `names` of room `room_id` under `prefix`.
fn keys(prefix: &str, room_id: &str, names: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = names
        .iter()
        .map(|name| format!("{prefix}/rooms/{room_id}/{name}"))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn snapshots_round_trip_through_s3_and_only_the_kept_ones_remain() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let store = store_from_env(&s3, &format!("s3://{BUCKET}/cluster-a"));
    let storage = connect(&redis, store.clone()).await;
    let room = "doc-s3";
    let doc = Doc::new();
    let (mut node_a, loaded) = storage.open(room, NodeId::new("a"), 1, 2).await.unwrap();
    assert!(loaded.updates.is_empty());
    let id = node_a.id().to_owned();

    let mut took = Vec::new();
    for text in ["one;", "two;", "three;"] {
        node_a.append(&[edit(&doc, text)]).await.unwrap();
        let started = Instant::now();
        node_a.snapshot(state(&doc)).await.unwrap();
        took.push(started.elapsed());
    }
    node_a.append(&[edit(&doc, "four;")]).await.unwrap();
    eprintln!("snapshot (S3 put + Redis register + S3 delete): {took:?}");

    // Only the kept two remain, in Redis and in the bucket, under the prefix.
    let list = snapshot_list(&redis, &id);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(s3.objects(BUCKET), keys("cluster-a", &id, &names(&list)));
    // The log is trimmed up to (not including) what the previous snapshot
    // covered: "two;" onwards.
    let previous_covered = list[1].split_once(' ').unwrap().0;
    let log = log_ids(&redis, &storage, room);
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], previous_covered);

    // Another node (new client, new epoch) reads the newest snapshot from S3
    // and only the entry after it from the log.
    let storage_b = connect(
        &redis,
        store_from_env(&s3, &format!("s3://{BUCKET}/cluster-a")),
    )
    .await;
    let started = Instant::now();
    let (_, loaded) = storage_b.open(room, NodeId::new("b"), 2, 2).await.unwrap();
    eprintln!(
        "open (Redis list + S3 get + Redis log): {:?}",
        started.elapsed()
    );
    assert_eq!(text_of(&loaded.updates), "one;two;three;four;");
    assert!(loaded.corrupt_snapshots.is_empty());
    assert_eq!(loaded.log_entries, 1, "snapshot then \"four;\"");
    assert_eq!(loaded.updates.len(), 2);

    // Raw latency of a 1 MB object on this server (for the record).
    let SnapshotStore::Object(object_store) = store else {
        panic!("an object store");
    };
    let path = object_store::path::Path::from("latency/1mb");
    let payload = vec![7u8; 1 << 20];
    let started = Instant::now();
    object_store
        .put(&path, PutPayload::from(payload.clone()))
        .await
        .unwrap();
    let put = started.elapsed();
    let started = Instant::now();
    let got = object_store
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    eprintln!("1 MB put {put:?}, get {:?}", started.elapsed());
    assert_eq!(got.as_ref(), payload.as_slice());
    object_store.delete(&path).await.unwrap();
}

#[tokio::test]
async fn a_corrupt_newest_snapshot_object_falls_back_to_the_previous_one_and_the_log() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let url = format!("s3://{BUCKET}/cluster-b");
    let storage = connect(&redis, store_from_env(&s3, &url)).await;
    let room = "doc-s3-corrupt";
    let doc = Doc::new();
    let (mut node_a, _) = storage.open(room, NodeId::new("a"), 1, 2).await.unwrap();
    let id = node_a.id().to_owned();
    node_a.append(&[edit(&doc, "first;")]).await.unwrap();
    node_a.snapshot(state(&doc)).await.unwrap();
    node_a.append(&[edit(&doc, "second;")]).await.unwrap();
    node_a.snapshot(state(&doc)).await.unwrap();
    node_a.append(&[edit(&doc, "tail;")]).await.unwrap();

    // Flip a byte of the newest snapshot object where s3s-fs keeps it.
    let list = snapshot_list(&redis, &id);
    let newest = names(&list)[0].clone();
    let path = s3.object_path(BUCKET, &format!("cluster-b/rooms/{id}/{newest}"));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let storage_b = connect(&redis, store_from_env(&s3, &url)).await;
    let (_, loaded) = storage_b.open(room, NodeId::new("b"), 2, 2).await.unwrap();
    assert_eq!(loaded.corrupt_snapshots, vec![newest]);
    assert_eq!(text_of(&loaded.updates), "first;second;tail;");
    assert_eq!(
        loaded.log_entries, 2,
        "the previous snapshot, then \"second;\" and \"tail;\" from the log"
    );
}

#[tokio::test]
async fn an_s3_outage_fails_snapshots_in_bounded_time_and_trims_nothing_until_it_ends() {
    let redis = RedisServer::start();
    let mut s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let storage = connect(&redis, bounded_store(&s3, "cluster-c")).await;
    let room = "doc-s3-outage";
    let doc = Doc::new();
    let (mut node_a, _) = storage.open(room, NodeId::new("a"), 1, 2).await.unwrap();
    let id = node_a.id().to_owned();
    node_a.append(&[edit(&doc, "a;")]).await.unwrap();
    node_a.snapshot(state(&doc)).await.unwrap();
    node_a.append(&[edit(&doc, "b;")]).await.unwrap();
    node_a.snapshot(state(&doc)).await.unwrap();
    node_a.append(&[edit(&doc, "c;")]).await.unwrap();

    let list_before = snapshot_list(&redis, &id);
    let log_before = log_ids(&redis, &storage, room);
    let objects_before = s3.objects(BUCKET);
    assert_eq!(list_before.len(), 2);
    assert_eq!(objects_before.len(), 2);

    // The outage: the listener closes and the client's pooled connection
    // dies with the server's side of it.
    s3.stop();
    let started = Instant::now();
    let failed = node_a.snapshot(state(&doc)).await;
    let failed_after = started.elapsed();
    eprintln!("snapshot during the outage returned after {failed_after:?}: {failed:?}");
    assert!(matches!(failed, Err(RemoteError::Object(_))), "{failed:?}");
    assert!(failed_after < Duration::from_secs(5), "{failed_after:?}");
    assert_eq!(
        snapshot_list(&redis, &id),
        list_before,
        "nothing registered"
    );
    assert_eq!(
        log_ids(&redis, &storage, room),
        log_before,
        "nothing trimmed"
    );
    assert_eq!(s3.objects(BUCKET), objects_before);

    // The log keeps taking writes; loading the room fails rather than
    // skipping snapshots it cannot read.
    node_a.append(&[edit(&doc, "d;")]).await.unwrap();
    let started = Instant::now();
    // (Same node and epoch: a newer epoch would claim the slot and fence
    // node_a.)
    let refused = storage.open(room, NodeId::new("a"), 1, 2).await;
    eprintln!(
        "open during the outage failed after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(refused, Err(RemoteError::Object(_))),
        "{refused:?}"
    );
    let log_during = log_ids(&redis, &storage, room);
    assert_eq!(log_during.len(), log_before.len() + 1, "{log_during:?}");
    assert_eq!(log_during[..log_before.len()], log_before[..]);

    // Back up on the same port: the next snapshot goes through, the oldest
    // is deleted, and the log is trimmed to what the previous one covered.
    s3.start_again();
    let started = Instant::now();
    node_a.snapshot(state(&doc)).await.unwrap();
    eprintln!("snapshot after the outage: {:?}", started.elapsed());
    let list = snapshot_list(&redis, &id);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        list[1], list_before[0],
        "the newest before the outage is kept"
    );
    assert_eq!(s3.objects(BUCKET), keys("cluster-c", &id, &names(&list)));
    let previous_covered = list[1].split_once(' ').unwrap().0;
    let log = log_ids(&redis, &storage, room);
    assert_eq!(log[0], previous_covered, "{log:?}");
    assert_eq!(log, log_during[1..], "\"a;\" trimmed, \"b;\" onwards kept");

    let storage_c = connect(&redis, bounded_store(&s3, "cluster-c")).await;
    let (_, loaded) = storage_c.open(room, NodeId::new("c"), 3, 2).await.unwrap();
    assert!(loaded.corrupt_snapshots.is_empty());
    assert_eq!(loaded.log_entries, 0);
    assert_eq!(text_of(&loaded.updates), "a;b;c;d;");
}

/// The whole room path during a 30 s S3 outage: sessions keep syncing, the
/// log keeps everything (no trim while snapshots fail), and snapshots catch
/// up by themselves after it, trimming the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_s3_outage_holds_up_no_session_and_snapshots_catch_up() {
    const MAX_UPDATES: usize = 20;
    let redis = RedisServer::start();
    let mut s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let storage = connect(
        &redis,
        store_from_env(&s3, &format!("s3://{BUCKET}/outage")),
    )
    .await;
    let room = "doc-s3-outage";
    let log_key = storage.log_key(room);
    let room_id = partyline_room_node::storage::remote::room_id(room);
    let (url, shutdown) = common::inproc::serve(storage, |config| {
        config.snapshot_log_updates = MAX_UPDATES as u64;
    })
    .await;
    let writer = partyline_bench::client::YClient::connect(&format!("{url}/{room}"))
        .await
        .unwrap();
    let reader = partyline_bench::client::YClient::connect(&format!("{url}/{room}"))
        .await
        .unwrap();
    writer.wait_synced(Duration::from_secs(10)).await.unwrap();
    reader.wait_synced(Duration::from_secs(10)).await.unwrap();
    let log_len = || -> usize { redis.connection().xlen(&log_key).unwrap() };
    let mut n = 0;
    let write_and_see = async |n: &mut usize| {
        let chunk = format!("w{n};");
        *n += 1;
        writer.push_text("t", &chunk).await.unwrap();
        reader
            .wait_until(Duration::from_secs(2), move |doc| {
                partyline_bench::client::text_of(doc, "t").contains(&chunk)
            })
            .await
            .expect("a session stalled");
    };
    for _ in 0..50 {
        write_and_see(&mut n).await;
    }
    // The snapshot the last writes triggered may still be on its way.
    let settle = Instant::now() + Duration::from_secs(10);
    while log_len() > 2 * MAX_UPDATES + 1 {
        assert!(
            Instant::now() < settle,
            "not compacted before the outage: {} entries",
            log_len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s3.stop();
    let outage = Instant::now();
    // A snapshot whose upload finished just before the stop registers a
    // moment later; the list is taken once that had time to happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list_before = snapshot_list(&redis, &room_id);
    while outage.elapsed() < Duration::from_secs(30) {
        write_and_see(&mut n).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = log_len();
    assert!(
        during > 4 * MAX_UPDATES,
        "the log was trimmed while snapshots failed: {during} entries"
    );
    assert_eq!(snapshot_list(&redis, &room_id), list_before);

    s3.start_again();
    let back = Instant::now();
    let mut caught_up = None;
    while back.elapsed() < Duration::from_secs(45) {
        write_and_see(&mut n).await;
        if snapshot_list(&redis, &room_id) != list_before && log_len() <= 2 * MAX_UPDATES + 1 {
            caught_up = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = caught_up.expect("snapshots did not catch up after S3 came back");
    eprintln!(
        "{n} updates; log peaked at {during} entries during the outage; snapshots caught up {caught_up:?} after S3 returned"
    );
    shutdown.cancel();
}
