//! A full disk under `partyline dev`: writes are refused visibly (the
//! permission-denied message "storage unavailable", as for a Redis outage),
//! nothing unlogged is broadcast, the room neither fails nor re-opens, and
//! once space returns every held and refused edit is logged — nothing a
//! client wrote is lost.
//!
//! The data dir is a 2 MiB tmpfs this test mounts (CI runs as root) and
//! fills with a file of its own; deleting that file is "space returns".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use partyline_bench::client::{text_of, YClient};

use crate::common::DevServer;

const WAIT: Duration = Duration::from_secs(20);

/// A small tmpfs, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs at {} (needs root)",
            path.display()
        );
        Self {
            path: path.to_owned(),
        }
    }

    /// Fills the disk but for about `leave` bytes.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.path.join("filler");
        let free = fs_free(&self.path);
        let size = free.saturating_sub(leave);
        std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn fs_free(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

fn chunks(text: &str) -> Vec<String> {
    text.split(';')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_visibly_and_loses_nothing_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), "2m");
    let data = disk.path.join("data");
    let server = DevServer::start(&data, &["--log-buffer-bytes", "2000"]);
    let url = server.url("doc-disk");
    let writer = YClient::connect(&url).await.unwrap();
    let reader = YClient::connect(&url).await.unwrap();
    writer.wait_synced(WAIT).await.unwrap();
    reader.wait_synced(WAIT).await.unwrap();
    writer.push_text("t", "before;").await.unwrap();
    reader.wait_for_text("t", "before;", WAIT).await.unwrap();

    // The log's last page may still take a little; 1 KiB edits soon need
    // a page the disk does not have.
    let filler = disk.fill(0);
    let mut written = vec!["before".to_owned()];
    let write = |n: usize| format!("while-full-{n}-{}", "x".repeat(1000));
    for n in 0..40 {
        let chunk = write(n);
        writer.push_text("t", &format!("{chunk};")).await.unwrap();
        written.push(chunk);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let denied = writer
        .wait_denied(Duration::from_secs(10))
        .await
        .expect("the writer was told its writes are refused");
    assert!(denied.contains("storage unavailable"), "{denied}");
    // While the disk stays full nothing more reaches the reader, however
    // much the writer sends: only logged edits are broadcast.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = reader.text("t").await.unwrap();
    for n in 40..45 {
        let chunk = write(n);
        writer.push_text("t", &format!("{chunk};")).await.unwrap();
        written.push(chunk);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        reader.text("t").await.unwrap(),
        seen,
        "nothing unlogged was broadcast"
    );
    assert!(chunks(&seen).len() < written.len());

    // Space returns: held and refused edits are logged and reach everyone.
    std::fs::remove_file(filler).unwrap();
    let expected = written.clone();
    reader
        .wait_until(WAIT, move |doc| {
            let have = chunks(&text_of(doc, "t"));
            expected.iter().all(|c| have.contains(c))
        })
        .await
        .expect("held and refused writes arrive once space is back");
    assert!(writer.close_info().is_none() && reader.close_info().is_none());
    let log = server.log();
    assert!(log.contains("holding updates"), "{log}");
    assert!(!log.contains("re-opening the room"), "{log}");

    // And they are in the log: a restart loads them all.
    drop((writer, reader));
    let mut server = server;
    server.terminate();
    let server = DevServer::start(&data, &[]);
    let newcomer = YClient::connect(&server.url("doc-disk")).await.unwrap();
    let expected = written;
    newcomer
        .wait_until(WAIT, move |doc| {
            let have = chunks(&text_of(doc, "t"));
            expected.iter().all(|c| have.contains(c))
        })
        .await
        .unwrap();
}
