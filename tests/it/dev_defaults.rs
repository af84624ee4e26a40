//! What a PartyKit team assumes of a dev server, through the real binary:
//! `PORT` / `--port` choose the port on loopback, and `localhost` works
//! whichever loopback a client resolves it to (Node ≥ 17 tries `::1`
//! first); `HOST` / `--host` pick one address instead; the first run writes
//! `.gitignore` (`*`) into the data dir; the start-up banner names the
//! y-websocket URL, the y-partykit host, the data dir and the auth mode.

use std::time::Duration;

use partyline_bench::client::YClient;

use crate::common;
use crate::common::nats::free_port;
use crate::common::process::Partyline;

const WAIT: Duration = Duration::from_secs(10);

fn start(data: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Partyline {
    let mut all = vec!["dev".to_owned(), "--data-dir".to_owned()];
    all.push(data.display().to_string());
    all.extend(args.iter().map(|a| a.to_string()));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Partyline::start_with_env(
        &all,
        &env,
        "info",
        &data.with_extension("log"),
        "partyline dev listening on ws://",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_serves_both_loopbacks_and_the_first_run_ignores_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(".partyline");
    let port = free_port();
    let server = start(&data, &[], &[("PORT", port.to_string())]);
    assert_eq!(server.ready, format!("127.0.0.1:{port}"));
    let v4 = YClient::connect(&format!("ws://127.0.0.1:{port}/doc-local"))
        .await
        .unwrap();
    let v6 = YClient::connect(&format!("ws://[::1]:{port}/doc-local"))
        .await
        .expect("::1 serves too");
    v4.wait_synced(WAIT).await.unwrap();
    v6.wait_synced(WAIT).await.unwrap();
    v6.push_text("t", "from ::1;").await.unwrap();
    v4.wait_for_text("t", "from ::1;", WAIT).await.unwrap();

    assert_eq!(
        std::fs::read_to_string(data.join(".gitignore")).unwrap(),
        "*\n"
    );
    let banner = server.log();
    for part in [
        format!("ws://localhost:{port}"),
        format!("'localhost:{port}'"),
        data.canonicalize().unwrap().display().to_string(),
        "auth         none".to_owned(),
    ] {
        assert!(
            banner.contains(&part),
            "{part:?} not in the banner:\n{banner}"
        );
    }
    drop(server);

    // A later run leaves the user's own .gitignore alone.
    std::fs::write(data.join(".gitignore"), "mine\n").unwrap();
    let again = start(&data, &["--port", &free_port().to_string()], &[]);
    drop(again);
    assert_eq!(
        std::fs::read_to_string(data.join(".gitignore")).unwrap(),
        "mine\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_picks_one_address_and_a_bad_port_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start(
        &dir.path().join("data"),
        &["--port", &port.to_string()],
        &[("HOST", "127.0.0.1".to_owned())],
    );
    YClient::connect(&format!("ws://127.0.0.1:{port}/doc-host"))
        .await
        .unwrap();
    assert!(
        YClient::connect(&format!("ws://[::1]:{port}/doc-host"))
            .await
            .is_err(),
        "HOST=127.0.0.1 listens there only"
    );
    drop(server);
    let data = dir.path().join("never");
    let data = data.display().to_string();
    let exited =
        common::process::run_to_exit(&["dev", "--data-dir", &data, "--port", "nineteen"], WAIT);
    assert!(!exited.status.success());
    assert!(exited.stderr.contains("PORT"), "{}", exited.stderr);
}
