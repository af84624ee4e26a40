//! A real S3 HTTP API on a free loopback port: `s3s` + `s3s-fs` over a temp
//! dir, SigV4 with fixed test credentials, served by hyper on its own
//! runtime (like a separate process: the test's runtime may block).
//!
//! A bucket is a directory under the root and an object `key` of bucket `b`
//! is the file `root/b/key`, so tests can inspect and damage objects on disk.
//! `stop` is a real outage: the listener is closed and every live
//! connection is dropped, so pooled client connections die too.
//! Stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::task::{JoinHandle, JoinSet};

/// Access key the server accepts.
pub(crate) const ACCESS_KEY: &str = "partyline-test";
/// Its secret.
pub(crate) const SECRET_KEY: &str = "partyline-test-secret";
/// Any region works with SigV4 here; the client must send one.
pub(crate) const REGION: &str = "us-east-1";

/// A running (or stopped, for outage tests) S3 server.
pub(crate) struct S3Server {
    runtime: Option<tokio::runtime::Runtime>,
    service: S3Service,
    addr: SocketAddr,
    root: tempfile::TempDir,
    accept: Option<JoinHandle<()>>,
    /// Live connection tasks; `stop` aborts and awaits them all.
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl S3Server {
    /// Starts a server over an empty root on `127.0.0.1:0`.
    pub(crate) fn start() -> Self {
        let root = tempfile::tempdir().expect("s3 root");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3-server")
            .enable_all()
            .build()
            .expect("s3 server runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind s3 server");
        let addr = listener.local_addr().expect("s3 server address");
        let mut server = Self {
            runtime: Some(runtime),
            service,
            addr,
            root,
            accept: None,
            connections: Arc::default(),
        };
        server.serve(listener);
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory holding the buckets.
    pub(crate) fn root(&self) -> &Path {
        self.root.path()
    }

    /// Creates bucket `name` (a directory under the root).
    pub(crate) fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join(name)).expect("create bucket");
    }

    /// The file holding object `key` of `bucket`.
    pub(crate) fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// The keys of `bucket`'s objects, as found on disk, sorted.
    pub(crate) fn objects(&self, bucket: &str) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten() {
                let entry = entry.expect("read bucket dir");
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // s3s-fs temp files
                }
                let key = format!("{prefix}{name}");
                if entry.file_type().expect("file type").is_dir() {
                    walk(&entry.path(), &format!("{key}/"), out);
                } else {
                    out.push(key);
                }
            }
        }
        let mut keys = Vec::new();
        walk(&self.root.path().join(bucket), "", &mut keys);
        keys.sort();
        keys
    }

    /// The `AWS_*` variables an `object_store` S3 client (`s3://bucket/...`)
    /// needs to reach this server: endpoint, credentials, region, plain
    /// HTTP. Requests stay path-style (the default) as the endpoint is an IP.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// An outage: closes the listener (new connections are refused) and
    /// drops every live connection, then returns. Objects stay on disk.
    pub(crate) fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        let connections = self.connections.clone();
        self.block_on(async move {
            accept.abort();
            let _ = accept.await; // the listener is dropped with the task
            let mut live = std::mem::take(&mut *connections.lock().unwrap());
            live.abort_all();
            while live.join_next().await.is_some() {}
        });
    }

    /// Serves again on the same port and root after `stop`.
    pub(crate) fn start_again(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot bind {} again: {error}",
                        self.addr
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let service = self.service.clone();
        let connections = self.connections.clone();
        let runtime = self.runtime.as_ref().expect("runtime");
        self.accept = Some(runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Without it every response waits on Nagle + delayed ACK.
                let _ = socket.set_nodelay(true);
                let service = service.clone();
                let mut live = connections.lock().unwrap();
                while live.try_join_next().is_some() {}
                live.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        }));
    }

    /// Runs `task` on the server's runtime and waits for it (callable from
    /// inside another runtime).
    fn block_on(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let (done, wait) = std::sync::mpsc::channel();
        self.runtime.as_ref().expect("runtime").spawn(async move {
            task.await;
            let _ = done.send(());
        });
        wait.recv_timeout(Duration::from_secs(10))
            .expect("s3 server task finished");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.connections.lock().unwrap().abort_all();
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime inside another one panics; this does not.
            runtime.shutdown_background();
        }
    }
}
