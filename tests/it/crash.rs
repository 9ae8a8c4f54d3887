//! The real binary under kill -9 and SIGTERM: nothing acknowledged is lost (API.md sections 1, 3).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use uuid::Uuid;

use crate::signed::*;
use crate::support::*;

const GITHUB_PR: &[u8] = include_bytes!("../../examples/github-pull_request.json");

/// Webhooks sent by many tasks at once against a child server, recording every acknowledged id.
struct Burst {
    answered: Arc<Mutex<Vec<Uuid>>>,
    count: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Burst {
    fn start(base: &str, total: usize, workers: usize) -> Burst {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (client, base, next) = (client.clone(), base.to_string(), next.clone());
                let (answered, count, failed) = (answered.clone(), count.clone(), failed.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::SeqCst) < total {
                        let w = Webhook::github("pull_request", GITHUB_PR);
                        match w.try_send_to(&client, &base).await {
                            Ok(a) if a.status == 200 => {
                                let id = a.accepted().id;
                                answered.lock().unwrap().push(id);
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            // Anything but a 200 (a refusal while stopping, a reset connection)
                            // is not an acknowledgement.
                            _ => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        Burst {
            answered,
            count,
            failed,
            workers,
        }
    }

    async fn wait_answered(&self, n: usize) {
        let count = self.count.clone();
        wait_for(Duration::from_secs(30), || {
            let count = count.clone();
            async move { (count.load(Ordering::SeqCst) >= n).then_some(()) }
        })
        .await;
    }

    async fn finish(self) -> (Vec<Uuid>, usize) {
        for w in self.workers {
            w.await.unwrap();
        }
        let ids = self.answered.lock().unwrap().clone();
        (ids, self.failed.load(Ordering::SeqCst))
    }
}

/// Asserts each id is in the archive of the server at `base`.
async fn assert_all_archived(base: &str, ids: &[Uuid]) {
    let client = reqwest::Client::new();
    let missing: Vec<Uuid> = futures_util::stream::iter(ids.iter().copied())
        .map(|id| {
            let client = client.clone();
            async move {
                let r = client
                    .get(format!("{base}/admin/events/{id}"))
                    .bearer_auth(ADMIN_KEY)
                    .send()
                    .await
                    .unwrap();
                (id, r.status().as_u16())
            }
        })
        .buffer_unordered(16)
        .filter_map(|(id, status)| async move { (status != 200).then_some(id) })
        .collect()
        .await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events are missing, e.g. {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_mid_burst() {
    const TOTAL: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &[]).await;
    let burst = Burst::start(&server.base, TOTAL, 64);
    burst.wait_answered(TOTAL / 2).await;
    server.child.start_kill().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("the child dies")
        .unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
    let (ids, failed) = burst.finish().await;
    eprintln!("kill -9: {} acknowledged, {failed} not", ids.len());
    assert!(ids.len() >= TOTAL / 2, "{} answered", ids.len());
    assert!(
        failed > 0 && ids.len() < TOTAL,
        "the kill came after the burst ended ({} answered)",
        ids.len()
    );

    let server = ChildServer::start(dir.path(), &[]).await;
    assert_all_archived(&server.base, &ids).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_keeping_what_was_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let mut before = Vec::new();
    for _ in 0..10 {
        let a = Webhook::github("push", GITHUB_PR)
            .send_to(&client, &server.base)
            .await;
        before.push(a.accepted().id);
    }
    // In-flight work when the signal arrives.
    let burst = Burst::start(&server.base, 400, 32);
    burst.wait_answered(50).await;
    let pid = server.child.id().expect("the child runs");
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Waited for longer than the bound asserted, so that a late exit fails the assertion
    // below rather than the wait.
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    // The shutdown sequence is bounded at about 9 s (docs/delivery.md, graceful shutdown).
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    let (during, not_answered) = burst.finish().await;
    eprintln!(
        "SIGTERM: {} acknowledged during the burst, {not_answered} not",
        during.len()
    );

    let server = ChildServer::start(dir.path(), &[]).await;
    assert_all_archived(&server.base, &before).await;
    assert_all_archived(&server.base, &during).await;
    drop(server);
}
