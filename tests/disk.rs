//! Disk trouble: a data directory on a small tmpfs that fills up, and data
//! directories that are corrupted or belong to something else.
//!
//! The tmpfs tests need root (to mount); without it they print why and pass
//! without checking anything.

mod common;

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{
    TestApp,
    reliability::{SpoolCounter, free_port, message, relay, report, send_request, wait_settled},
    servers::PyServer,
};
use tonic::Code;

/// A tmpfs mounted on a temporary directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m"), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a ballast file until writing fails.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("ballast");
        let mut f = std::fs::File::create(&path).expect("ballast file");
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        // Single bytes into what is left of the last page.
        while f.write_all(&[0]).is_ok() && f.flush().is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn fast_retries() -> Vec<&'static str> {
    vec!["--retry-initial", "100ms", "--retry-max-delay", "300ms"]
}

fn remount(fs: &Tmpfs, size: &str) {
    let ok = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(fs.path())
        .status()
        .expect("mount")
        .success();
    assert!(ok, "remounting the tmpfs with size={size}");
}

async fn send_big(app: &TestApp, subject: &str, bytes: usize) -> Result<String, tonic::Status> {
    let mut m = message("a@example.com", subject);
    m.text_body = "x".repeat(bytes);
    app.notifier
        .clone()
        .send(send_request("later", m))
        .await
        .map(|r| r.into_inner().id)
}

fn assert_disk_refusal(status: &tonic::Status) {
    assert!(
        [Code::ResourceExhausted, Code::Unavailable].contains(&status.code()),
        "a full disk must be RESOURCE_EXHAUSTED or UNAVAILABLE, got {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outbox_filling_its_disk_refuses_send_delivers_what_it_accepted_and_recovers() {
    let fs = match Tmpfs::mount("8m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED (needs a tmpfs): {why}");
            return;
        }
    };
    let data = fs.path().join("data");
    let port = free_port();
    // Retries 3 s apart: the disk fills between two rounds.
    let app = TestApp::spawn_with(
        &data,
        &["--retry-initial", "3s", "--retry-jitter", "0"],
        &[],
    )
    .await;
    app.create_ok(relay("later", port, Duration::from_secs(5)))
        .await;

    // The mail server is down: every accepted message stays in the outbox
    // until the disk is full.
    let mut accepted = HashSet::new();
    let mut refusals = Vec::new();
    for i in 0..2000 {
        match send_big(&app, &format!("big {i}"), 16 * 1024).await {
            Ok(id) => {
                accepted.insert(id);
            }
            Err(s) => {
                assert_disk_refusal(&s);
                refusals.push(s);
                if refusals.len() == 5 {
                    break;
                }
            }
        }
    }
    println!(
        "accepted {} messages of 16 KiB on an 8 MiB tmpfs, then: {:?}",
        accepted.len(),
        refusals.first()
    );
    assert_eq!(refusals.len(), 5, "Send never refused on a full disk");
    assert_eq!(
        refusals[0].code(),
        Code::ResourceExhausted,
        "{:?}",
        refusals[0]
    );
    assert!(refusals[0].message().contains("disk"), "{:?}", refusals[0]);
    assert!(
        accepted.len() >= 10,
        "too little accepted: {}",
        accepted.len()
    );

    // The mail server comes back while the disk is still full: what was
    // accepted goes out.
    let sink = PyServer::smtp(&["--port", &port.to_string()]);
    let mut spool = SpoolCounter::new(sink.spool_dir());
    let missing = spool.wait_all(&accepted, Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "not delivered on a full disk: {missing:?}\n{}",
        app.stderr()
    );
    let states = wait_settled(&app, Duration::from_secs(30)).await;
    assert_eq!(
        states.keys().cloned().collect::<Vec<_>>(),
        ["DELIVERED"],
        "{states:?}"
    );

    // Space returns: Send works again, and that mail goes out too.
    remount(&fs, "32m");
    let id = send_big(&app, "after", 128 * 1024)
        .await
        .expect("Send after space returned");
    let missing = spool.wait_all(&HashSet::from([id]), Duration::from_secs(30));
    assert!(missing.is_empty());
    spool.refresh();
    let duplicates: usize = spool.counts().values().map(|c| c - 1).sum();
    assert_eq!(duplicates, 0);
    let log = app.stderr();
    assert!(!log.contains("panicked"), "{log}");
    report(&format!(
        "RELIABILITY disk-full: accepted={} refused={} delivered={} lost=0 duplicates={duplicates}",
        accepted.len() + 1,
        refusals.len(),
        spool.total
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_filled_by_someone_else_refuses_send_and_a_restart_recovers_everything() {
    let fs = match Tmpfs::mount("8m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED (needs a tmpfs): {why}");
            return;
        }
    };
    let data = fs.path().join("data");
    let port = free_port();
    let mut app = TestApp::spawn_with(&data, &fast_retries(), &[]).await;
    app.create_ok(relay("later", port, Duration::from_secs(5)))
        .await;
    let mut accepted = HashSet::new();
    for i in 0..20 {
        accepted.insert(
            send_big(&app, &format!("before {i}"), 1024)
                .await
                .expect("Send"),
        );
    }
    // Another process takes every last byte; retries keep writing state.
    let ballast = fs.fill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..10 {
        match send_big(&app, &format!("full {i}"), 1024).await {
            Ok(id) => panic!("Send {id} accepted on a disk with no space at all"),
            Err(s) => assert_disk_refusal(&s),
        }
    }
    // Reads keep working.
    let some = accepted.iter().next().unwrap().clone();
    app.notifier
        .clone()
        .get_notification(notigate::pb::GetNotificationRequest { id: some })
        .await
        .expect("GetNotification on a full disk");

    std::fs::remove_file(&ballast).expect("removing the ballast");
    let _ = app.stop().await;
    let log = app.stderr();
    assert!(!log.contains("panicked"), "{log}");
    // The store opens again on the same data dir, and nothing is lost.
    let sink = PyServer::smtp(&["--port", &port.to_string()]);
    let app = TestApp::spawn_with(&data, &fast_retries(), &[]).await;
    let mut spool = SpoolCounter::new(sink.spool_dir());
    let missing = spool.wait_all(&accepted, Duration::from_secs(60));
    assert!(missing.is_empty(), "lost: {missing:?}");
    let states = wait_settled(&app, Duration::from_secs(30)).await;
    assert_eq!(
        states.keys().cloned().collect::<Vec<_>>(),
        ["DELIVERED"],
        "{states:?}"
    );
    app.notifier
        .clone()
        .send(send_request("later", message("a@example.com", "after")))
        .await
        .expect("Send after the restart");
}

/// Starts on `dir`, which must be refused with exactly one error line that
/// names the directory, leaving every file byte for byte as it was.
async fn assert_refused_untouched(dir: &Path, what: &str) -> String {
    let before = common::read_tree(dir);
    let failure = common::start_must_fail(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let errors = failure.error_lines();
    assert_eq!(errors.len(), 1, "{what}: {}", failure.stderr);
    assert!(!failure.stderr.contains("panicked"), "{}", failure.stderr);
    assert!(
        errors[0].contains(dir.to_str().unwrap()),
        "{what}: the error names the directory: {}",
        errors[0]
    );
    let after = common::read_tree(dir);
    let changed: Vec<_> = before
        .iter()
        .filter(|(path, bytes)| after.get(*path) != Some(*bytes))
        .map(|(path, _)| path.display().to_string())
        .collect();
    let added: Vec<_> = after
        .keys()
        .filter(|path| !before.contains_key(*path))
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        changed.is_empty() && added.is_empty(),
        "{what}: changed {changed:?}, added {added:?}"
    );
    errors[0].to_owned()
}

#[tokio::test]
async fn a_sled_database_of_another_program_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let db = sled::open(dir.path().join("db")).expect("a foreign sled db");
        db.open_tree("users")
            .and_then(|t| t.insert("alice", "admin"))
            .expect("foreign data");
        db.flush().expect("flush");
    }
    let error = assert_refused_untouched(dir.path(), "foreign sled database").await;
    assert!(error.contains("not a notigate data directory"), "{error}");
}

#[tokio::test]
async fn a_database_of_garbage_bytes_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("db")).unwrap();
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("db/db"), &garbage).unwrap();
    std::fs::write(dir.path().join("db/conf"), &garbage[..512]).unwrap();
    assert_refused_untouched(dir.path(), "garbage database").await;
}

#[tokio::test]
async fn a_truncated_database_is_one_clear_error_or_opens_without_a_panic() {
    // A notigate data dir whose database file lost its tail (a copy cut
    // short): either one clear error, or a start that serves.
    let dir = tempfile::tempdir().expect("dir");
    let mut app = TestApp::spawn_with(dir.path(), &[], &[]).await;
    app.create_ok(relay("later", free_port(), Duration::from_secs(5)))
        .await;
    let id = app
        .notifier
        .clone()
        .send(send_request("later", message("a@example.com", "kept")))
        .await
        .expect("Send")
        .into_inner()
        .id;
    let _ = app.stop().await;
    let db = dir.path().join("db/db");
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    match TestApp::try_spawn_with(dir.path(), &[], &[]).await {
        Err(failure) => {
            println!(
                "a truncated database is refused: {:?}",
                failure.error_lines()
            );
            assert_eq!(failure.error_lines().len(), 1, "{}", failure.stderr);
            assert!(!failure.stderr.contains("panicked"), "{}", failure.stderr);
        }
        Ok(app) => {
            let got = app
                .notifier
                .clone()
                .get_notification(notigate::pb::GetNotificationRequest { id })
                .await;
            println!("a truncated database opened; the notification: {got:?}");
            assert!(!app.stderr().contains("panicked"), "{}", app.stderr());
        }
    }
}
