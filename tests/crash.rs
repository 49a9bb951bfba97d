//! Crash safety: the real binary under continuous, highly concurrent `Send`
//! load is killed with SIGKILL at random moments and restarted on the same
//! data directory, again and again; then the backlog drains into a counting
//! SMTP sink (tests/servers/smtp_server.py, one spool file per accepted
//! message, each carrying the notification id in its Message-ID).
//!
//! The promise under test (SPEC "Delivery semantics", README "Delivery
//! guarantee"): every acknowledged Send is delivered at least once; a
//! message is delivered twice only if an attempt was in flight when the
//! process died, so duplicates per kill are bounded by the attempts that can
//! be in flight at once; nothing stays SENDING; the store opens every time.
//!
//! Each test prints a `RELIABILITY ...` line with what it measured (run with
//! `--nocapture` to see it); README "Delivery guarantee — measured" quotes
//! them. `CRASH_CYCLES` and `CRASH_SEED` override the cycle count and the
//! random seed.

mod common;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use common::{
    TestApp,
    reliability::{Load, SpoolCounter, all_notifications, relay, report, wait_settled},
    servers::PyServer,
};
use notigate::pb::NotificationState as S;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Attempts in flight at once per connection (`--connection-concurrency`).
const CONCURRENCY: usize = 8;
/// Concurrent `Send` callers.
const SENDERS: usize = 48;

fn serve_args() -> Vec<&'static str> {
    vec![
        "--retry-initial",
        "100ms",
        "--retry-max-delay",
        "500ms",
        "--connection-concurrency",
        "8",
    ]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Lines of a server log that must not appear after a start on a data
/// directory left behind by a crash.
fn assert_clean_log(log: &str, when: &str) {
    for line in log.lines() {
        assert!(
            !line.contains("panicked") && !line.contains(" ERROR "),
            "{when}: the server logged a problem: {line}\n--- stderr ---\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_loses_no_acknowledged_mail() {
    let cycles: usize = env_or("CRASH_CYCLES", 10);
    let seed: u64 = env_or("CRASH_SEED", rand::rng().random());
    let mut rng = StdRng::seed_from_u64(seed);
    println!("crash suite: seed {seed} (CRASH_SEED={seed} repeats this run)");

    let sink = PyServer::smtp(&[]);
    let dir = tempfile::tempdir().expect("data dir");
    let started = Instant::now();
    let mut app = TestApp::spawn_with(dir.path(), &serve_args(), &[]).await;
    app.create_ok(relay("sink", sink.port, Duration::from_secs(10)))
        .await;

    let mut spool = SpoolCounter::new(sink.spool_dir());
    let mut received_by_kill: Vec<HashSet<String>> = Vec::new();
    let mut acked_total = HashSet::new();
    let mut refused_total = 0u64;
    for cycle in 1..=cycles {
        if cycle > 1 {
            // Panics unless the store opens and the server listens.
            app = TestApp::spawn_with(dir.path(), &serve_args(), &[]).await;
        }
        let load = Load::start(app.channel.clone(), "sink", SENDERS);
        // Anywhere from during recovery of the previous backlog to well
        // into steady load.
        let run_for = Duration::from_millis(rng.random_range(100..900));
        tokio::time::sleep(run_for).await;
        // Every third kill lands while only deliveries run: no Send forces
        // the store to flush then.
        let during_drain = cycle % 3 == 0;
        let (refused, acked, when) = if during_drain {
            let refused = load.refused.load(std::sync::atomic::Ordering::Relaxed);
            let acked = load.stop().await;
            let drain_for = Duration::from_millis(rng.random_range(200..800));
            tokio::time::sleep(drain_for).await;
            app.kill();
            (
                refused,
                acked,
                format!("{run_for:?} of load + {drain_for:?} of draining"),
            )
        } else {
            app.kill();
            let refused = load.refused.load(std::sync::atomic::Ordering::Relaxed);
            (refused, load.stop().await, format!("{run_for:?} of load"))
        };
        let log = app.stderr();
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert_clean_log(&log, &format!("cycle {cycle}"));
        // What the sink holds at the kill (after a moment for a message
        // whose content arrived before the kill to be spooled); a message
        // received again later was delivered before this kill and re-sent
        // after it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        spool.refresh();
        received_by_kill.push(spool.counts().keys().cloned().collect::<HashSet<_>>());
        println!(
            "cycle {cycle:2}: killed after {when}: {} acknowledged, {refused} calls failed, {} received so far",
            acked.len(),
            spool.total,
        );
        assert!(
            !acked.is_empty(),
            "cycle {cycle}: no Send was acknowledged in {run_for:?}"
        );
        refused_total += refused;
        acked_total.extend(acked);
    }

    // The last start: no more load, the backlog drains.
    let app = TestApp::spawn_with(dir.path(), &serve_args(), &[]).await;
    let missing = spool.wait_all(&acked_total, Duration::from_secs(150));
    let states = wait_settled(&app, Duration::from_secs(30)).await;
    assert_clean_log(&app.stderr(), "the final start");
    // Let anything still in the sink's hands land before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    spool.refresh();

    let counts = spool.counts();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let max_copies = counts.values().copied().max().unwrap_or(0);
    let unacked_delivered = counts
        .keys()
        .filter(|id| !acked_total.contains(*id))
        .count();
    let sending = all_notifications(&app, Some(S::Sending)).await;
    // Duplicates per kill: messages first received between the previous
    // kill and this one that were received again afterwards.
    let mut per_kill = Vec::new();
    let mut before = HashSet::new();
    for at_kill in &received_by_kill {
        per_kill.push(
            at_kill
                .difference(&before)
                .filter(|id| counts.get(*id).copied().unwrap_or(0) > 1)
                .count(),
        );
        before = at_kill.clone();
    }
    println!("duplicates per kill: {per_kill:?}");
    report(&format!(
        "RELIABILITY crash: cycles={cycles} acknowledged={} delivered_messages={} lost={} duplicates={duplicates} \
         max_copies={max_copies} duplicates_per_kill={per_kill:?} unacknowledged_but_delivered={unacked_delivered} failed_calls={refused_total} \
         states={states:?} seed={seed} elapsed={:.1?}",
        acked_total.len(),
        spool.total,
        missing.len(),
        started.elapsed()
    ));
    assert!(
        missing.is_empty(),
        "{} acknowledged notifications were never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(sending.is_empty(), "stuck in SENDING: {sending:?}");
    assert_eq!(
        states.keys().cloned().collect::<Vec<_>>(),
        ["DELIVERED"],
        "every notification ends DELIVERED: {states:?}"
    );
    assert_eq!(
        spool.foreign, 0,
        "the sink received mail notigate did not send"
    );
    // Each kill interrupts at most the attempts in flight at that moment.
    assert!(
        per_kill.iter().all(|d| *d <= CONCURRENCY),
        "duplicates per kill {per_kill:?}: more than the {CONCURRENCY} attempts that can be in flight at once"
    );
    assert!(duplicates <= cycles * CONCURRENCY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_cleanly_without_duplicates_or_loss() {
    let sink = PyServer::smtp(&[]);
    let dir = tempfile::tempdir().expect("data dir");
    let mut app = TestApp::spawn_with(dir.path(), &serve_args(), &[]).await;
    app.create_ok(relay("sink", sink.port, Duration::from_secs(10)))
        .await;

    let load = Load::start(app.channel.clone(), "sink", SENDERS);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // SIGTERM while Sends and deliveries are in flight.
    let status = app.stop().await;
    let acked = load.stop().await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let log = app.stderr();
    assert!(status.success(), "exit status {status}\n{log}");
    assert_clean_log(&log, "the drain");
    assert!(!acked.is_empty());

    // What the drain did not deliver waits in the outbox for the next start.
    let app = TestApp::spawn_with(dir.path(), &serve_args(), &[]).await;
    let mut spool = SpoolCounter::new(sink.spool_dir());
    let missing = spool.wait_all(&acked, Duration::from_secs(120));
    let states = wait_settled(&app, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    spool.refresh();
    let duplicates: usize = spool.counts().values().map(|c| c - 1).sum();
    report(&format!(
        "RELIABILITY sigterm: acknowledged={} delivered_messages={} lost={} duplicates={duplicates} states={states:?}",
        acked.len(),
        spool.total,
        missing.len()
    ));
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(duplicates, 0, "a clean drain delivers nothing twice");
    assert_eq!(
        states.keys().cloned().collect::<Vec<_>>(),
        ["DELIVERED"],
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_reported_delivered_is_not_sent_again_after_a_kill_9() {
    // A notification that GetNotification reports DELIVERED is no longer in
    // flight: a crash right after must not send it again.
    let sink = PyServer::smtp(&[]);
    let dir = tempfile::tempdir().expect("data dir");
    let mut app = TestApp::spawn_with(dir.path(), &serve_args(), &[]).await;
    app.create_ok(relay("sink", sink.port, Duration::from_secs(10)))
        .await;
    let load = Load::start(app.channel.clone(), "sink", 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = load.stop().await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    // No Send from here on: nothing else makes the store flush.
    let mut delivered_seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered_seen.len() < acked.len() / 2 && Instant::now() < deadline {
        for n in all_notifications(&app, Some(S::Delivered)).await {
            delivered_seen.insert(n.id);
        }
    }
    app.kill();
    let app = TestApp::spawn_with(dir.path(), &serve_args(), &[]).await;
    let mut spool = SpoolCounter::new(sink.spool_dir());
    let missing = spool.wait_all(&acked, Duration::from_secs(60));
    wait_settled(&app, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    spool.refresh();
    let resent: Vec<&String> = delivered_seen
        .iter()
        .filter(|id| spool.counts().get(*id).copied().unwrap_or(0) > 1)
        .collect();
    report(&format!(
        "RELIABILITY delivered-then-kill: acknowledged={} reported_delivered_before_kill={} resent_after_restart={}",
        acked.len(),
        delivered_seen.len(),
        resent.len()
    ));
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(
        resent.is_empty(),
        "{} notifications reported DELIVERED before the kill were sent again after it: {:?}",
        resent.len(),
        &resent[..resent.len().min(5)]
    );
}
