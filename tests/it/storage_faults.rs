//! Storage faults, black-box: the data dir on a small tmpfs this test mounts (as root; skipped
//! with a message elsewhere, except under CI, which must run it). The disk is filled with
//! webhooks, the answers, `/health` and `/metrics` are checked, space is freed, and the same
//! server must take webhooks again with every acknowledged event in its store.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

#[path = "../../src/store/sqlite/tmpfs.rs"]
mod tmpfs;
use tmpfs::Tmpfs;

/// A 6 KB GitHub-like body that does not compress (so it takes its full size on disk).
fn body(n: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let pad: String = (0..6000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"action": "opened", "n": n, "pad": pad})).unwrap()
}

fn gauge(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(g) | prometheus_parse::Value::Untyped(g) => g,
            _ => f64::NAN,
        })
}

async fn health(app: &TestApp) -> (u16, Value) {
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// An 8 MiB tmpfs for a SQLite data dir, with 2 MiB of it taken by a filler file (room to give
/// back later, taken before the server fills the rest). `None`: the test is skipped (not on
/// SQLite, or no tmpfs here).
fn small_disk() -> Option<(Tmpfs, std::path::PathBuf)> {
    if backend() != "sqlite" {
        eprintln!("skipped: the full-disk test is for the SQLite store");
        return None;
    }
    let fs = Tmpfs::mount("8m")?;
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    Some((fs, filler))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_storage_unavailable_and_recovers_without_a_restart() {
    let Some((fs, filler)) = small_disk() else {
        return;
    };
    // No free-space floor: this test fills the disk itself.
    let app = TestApp::spawn_in(tempfile::tempdir_in(fs.path()).unwrap(), |c| {
        c.min_free_disk_mb = 0;
    })
    .await;
    // An agent that takes every event: its deliveries go on while the disk is full, and their
    // outcomes, which cannot be written then, must be written once it has room again.
    let rx = crate::receiver::TestReceiver::start().await;
    rx.set_default(
        "/a",
        crate::receiver::Reply::Hang(Duration::from_millis(20)),
    );
    crate::delivery::Admin::of(&app)
        .agent_with_route(
            "a",
            &rx.url("/a"),
            "r",
            crate::delivery::policy(100, "fixed", 100, 100),
        )
        .await;

    // Fill the disk, 8 webhooks at a time, until it refuses them.
    let mut acked: Vec<String> = Vec::new();
    let mut refusals = 0;
    let mut n = 0u64;
    while refusals < 20 {
        assert!(
            n < 4_000,
            "the disk never filled ({} acknowledged)",
            acked.len()
        );
        let bodies: Vec<Vec<u8>> = (0..8).map(|i| body(n + i)).collect();
        n += 8;
        let answers = futures_util::future::join_all(
            bodies.iter().map(|b| app.post_github("pull_request", b)),
        )
        .await;
        for r in answers {
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").cloned();
            let v: Value = r.json().await.unwrap();
            match status {
                200 => acked.push(v["eventId"].as_str().unwrap().to_string()),
                503 => {
                    assert_eq!(v["code"], "storage_unavailable", "{v}");
                    assert_eq!(v["success"], false);
                    assert!(retry_after.is_some(), "503 without Retry-After");
                    refusals += 1;
                }
                other => panic!("{other}: {v}"),
            }
        }
    }
    assert!(!acked.is_empty());

    let (status, h) = health(&app).await;
    assert_eq!(status, 503, "{h}");
    assert_eq!(h["status"], "unavailable");
    assert_eq!(h["storage"]["ok"], false);
    assert!(
        h["storage"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{h}"
    );
    assert_eq!(gauge(&app.metrics().await, "storage_writable"), Some(0.0));
    // Reads are still served.
    let (status, _) = app.admin_get(&format!("/admin/events/{}", acked[0])).await;
    assert_eq!(status, 200);

    // Space freed: /health sees it by itself (no other write needed), and the same server
    // takes webhooks again.
    std::fs::remove_file(&filler).unwrap();
    wait_for(Duration::from_secs(15), || async {
        (health(&app).await.0 == 200).then_some(())
    })
    .await;
    let again = wait_for(Duration::from_secs(15), || async {
        let r = app.post_github("pull_request", &body(n)).await;
        match r.status().as_u16() {
            200 => Some(r.json::<Value>().await.unwrap()),
            503 => None,
            other => panic!("{other}: {}", r.text().await.unwrap()),
        }
    })
    .await;
    acked.push(again["eventId"].as_str().unwrap().to_string());
    let (status, h) = health(&app).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["storage"]["ok"], true);
    assert_eq!(gauge(&app.metrics().await, "storage_writable"), Some(1.0));

    // Nothing acknowledged was lost.
    for id in &acked {
        let (status, v) = app.admin_get(&format!("/admin/events/{id}")).await;
        assert_eq!(status, 200, "acknowledged event {id} is missing: {v}");
    }
    // Every acknowledged event reached the agent, and every delivery's outcome is in the store
    // (those that finished while the disk was full included), with no restart.
    let seen: std::collections::HashSet<String> = wait_for(Duration::from_secs(60), || async {
        let seen: std::collections::HashSet<String> = rx
            .received("/a")
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_string))
            .collect();
        acked.iter().all(|id| seen.contains(id)).then_some(seen)
    })
    .await;
    assert!(seen.len() >= acked.len());
    wait_for(Duration::from_secs(60), || async {
        let (_, q) = app.admin_get("/queue/stats").await;
        (q["delivered"].as_u64() == Some(acked.len() as u64)).then_some(())
    })
    .await;
    app.stop().await;
    drop(fs);
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let vfs = rustix::fs::statvfs(dir).unwrap();
    vfs.f_bavail * vfs.f_frsize
}

/// `min_free_disk_mb`: with less free space than the floor, webhooks are refused with 503
/// `storage_unavailable` and the floor in `/health`'s reason, while deliveries already queued
/// go on and their outcomes are written (they end `delivered`); with space freed, the same
/// server takes webhooks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_webhooks_are_refused_while_deliveries_finish() {
    use crate::delivery::{Admin, policy};
    use crate::receiver::{Reply, TestReceiver};

    if backend() != "sqlite" {
        eprintln!("skipped: the free-space floor is for the SQLite store");
        return;
    }
    let Some(fs) = Tmpfs::mount("48m") else {
        return;
    };
    let rx = TestReceiver::start().await;
    // The agent fails until the floor is crossed, so its deliveries are still queued then.
    rx.set_default("/a", Reply::Status(500));
    let app = TestApp::spawn_in(tempfile::tempdir_in(fs.path()).unwrap(), |c| {
        c.min_free_disk_mb = 16;
    })
    .await;
    let admin = Admin::of(&app);
    admin
        .agent_with_route("a", &rx.url("/a"), "r", policy(100, "fixed", 100, 100))
        .await;
    let mut acked = Vec::new();
    for n in 0..5 {
        let r = app.post_github("pull_request", &body(n)).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        acked.push(
            v["eventId"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        );
    }
    rx.wait_for("/a", 5, Duration::from_secs(15)).await;

    // Take the free space down to 8 MiB: under the floor, with room to write.
    let filler = fs.path().join("filler");
    let take = free_bytes(fs.path()) - (8 << 20);
    std::fs::write(&filler, vec![1u8; take as usize]).unwrap();
    let refused = wait_for(Duration::from_secs(10), || async {
        let r = app.post_github("pull_request", &body(99)).await;
        (r.status() == 503).then_some(r)
    })
    .await;
    assert!(refused.headers().get("retry-after").is_some());
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["code"], "storage_unavailable", "{v}");
    let (status, h) = health(&app).await;
    assert_eq!(status, 503, "{h}");
    let reason = h["storage"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("min_free_disk_mb"), "{h}");
    assert_eq!(gauge(&app.metrics().await, "storage_writable"), Some(0.0));

    // Deliveries in flight finish, and their outcomes are stored, below the floor.
    rx.set_default("/a", Reply::Status(200));
    for id in &acked {
        admin.wait_status(*id, "delivered").await;
    }
    let (status, _) = health(&app).await;
    assert_eq!(status, 503, "still below the floor");

    std::fs::remove_file(&filler).unwrap();
    wait_for(Duration::from_secs(10), || async {
        let r = app.post_github("pull_request", &body(100)).await;
        (r.status() == 200).then_some(())
    })
    .await;
    let (status, h) = health(&app).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(gauge(&app.metrics().await, "storage_writable"), Some(1.0));
    app.stop().await;
    drop(fs);
}

/// A TCP proxy in front of PostgreSQL that the test cuts (every connection through it closed,
/// new ones closed as soon as they are accepted) and restores: the database going away and
/// coming back, as the router sees a restart, without restarting the shared server.
struct CutProxy {
    addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl CutProxy {
    async fn start(upstream: String) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = tokio::sync::watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut up = state.subscribe();
                if !*up.borrow_and_update() {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        CutProxy { addr, up }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// `postgres://user@host:port/db…` with `host:port` replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let at = url.find('@').expect("a URL with a user") + 1;
    let slash = at + url[at..].find('/').expect("a URL with a database");
    format!("{}{addr}{}", &url[..at], &url[slash..])
}

/// PostgreSQL going away under load and coming back: webhooks meanwhile are answered
/// `503 storage_unavailable` with `Retry-After` (never 500), `/health` and `storage_writable`
/// say so, ingest resumes by itself once the database is back, and every acknowledged event is
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_under_load_answers_storage_unavailable_and_recovers() {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::delivery::{Admin, policy};
    use crate::receiver::TestReceiver;

    let Some((db, _guard)) = pg_testing::fresh_database_or_skip().await else {
        return;
    };
    let server = pg_testing::server_url();
    let at = server.find('@').unwrap() + 1;
    let upstream = server[at..].split('/').next().unwrap().to_string();
    let proxy = CutProxy::start(upstream).await;
    let rx = TestReceiver::start().await;
    let url = via(&db, proxy.addr);
    let app = Arc::new(
        TestApp::spawn_with(|c| {
            c.database_url = Some(url);
            c.db_pool_size = 4;
        })
        .await,
    );
    Admin::of(&app)
        .agent_with_route("a", &rx.url("/a"), "r", policy(100, "fixed", 200, 200))
        .await;

    // Four clients send webhooks until told to stop; every answer is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(Vec::<(u16, Value, bool)>::new()));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (app, stop, answers) = (app.clone(), stop.clone(), answers.clone());
        clients.push(tokio::spawn(async move {
            let mut n = c * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body =
                    serde_json::to_vec(&serde_json::json!({"action": "opened", "n": n})).unwrap();
                let r = app.post_github("pull_request", &body).await;
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let v: Value = r.json().await.unwrap_or(Value::Null);
                answers.lock().unwrap().push((status, v, retry_after));
                if status != 200 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let count = |status: u16| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.0 == status)
            .count()
    };
    wait_for(Duration::from_secs(20), || async {
        (count(200) >= 100).then_some(())
    })
    .await;

    proxy.cut();
    wait_for(Duration::from_secs(20), || async {
        (count(503) >= 20).then_some(())
    })
    .await;
    let (status, h) = health(&app).await;
    assert_eq!(status, 503, "{h}");
    assert_eq!(h["storage"]["ok"], false, "{h}");
    assert_eq!(gauge(&app.metrics().await, "storage_writable"), Some(0.0));

    proxy.restore();
    let ok_before = count(200);
    wait_for(Duration::from_secs(30), || async {
        (count(200) >= ok_before + 100).then_some(())
    })
    .await;
    wait_for(Duration::from_secs(15), || async {
        (health(&app).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(gauge(&app.metrics().await, "storage_writable"), Some(1.0));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let mut acked = HashSet::new();
    for (status, v, retry_after) in &answers {
        match status {
            200 => {
                acked.insert(v["eventId"].as_str().unwrap().to_string());
            }
            503 => {
                assert_eq!(v["code"], "storage_unavailable", "{v}");
                assert!(retry_after, "503 without Retry-After: {v}");
            }
            other => panic!("answered {other} while the database went away: {v}"),
        }
    }
    eprintln!(
        "{} acknowledged, {} refused with 503 storage_unavailable",
        acked.len(),
        answers.len() - acked.len()
    );
    // Every acknowledged event reaches the agent (at least once).
    let want = acked.len();
    let got = wait_for(Duration::from_secs(60), || async {
        let seen: HashSet<String> = rx
            .received("/a")
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_string))
            .collect();
        acked.is_subset(&seen).then_some(seen)
    })
    .await;
    assert!(got.len() >= want);
    match Arc::try_unwrap(app) {
        Ok(app) => {
            app.stop().await;
        }
        Err(_) => panic!("a client still holds the server"),
    }
}

/// A storage fault is logged once when it begins and once when it ends, not once per refused
/// request: at webhook rates a line per refusal would flood the log for as long as the disk is
/// full. The real binary, its log read as JSON lines from its standard error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_fault_is_logged_once_when_it_begins_and_once_when_it_ends() {
    use tokio::io::AsyncReadExt as _;
    let Some((fs, filler)) = small_disk() else {
        return;
    };
    let data = fs.path().join("data");
    let mut server = ChildServer::start(
        &data,
        &[
            ("LOG_LEVEL", "info"),
            ("LOG_FORMAT", "json"),
            ("MIN_FREE_DISK_MB", "0"),
        ],
    )
    .await;
    // Read the log as it comes, so a full pipe never stalls the server.
    let mut stderr = server.child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let post = |n: u64| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            crate::signed::Webhook::github("pull_request", body(n))
                .send_to(&client, &base)
                .await
                .status
        }
    };
    // Fill the disk until it has refused 50 webhooks.
    let (mut refusals, mut n) = (0, 0u64);
    while refusals < 50 {
        assert!(n < 4_000, "the disk never filled");
        let answers = futures_util::future::join_all((n..n + 8).map(&post)).await;
        n += 8;
        for status in answers {
            match status {
                200 => {}
                503 => refusals += 1,
                other => panic!("{other}"),
            }
        }
    }
    // Room again: the same server takes webhooks.
    std::fs::remove_file(&filler).unwrap();
    wait_for(Duration::from_secs(15), || async {
        (post(n).await == 200).then_some(())
    })
    .await;
    // SIGTERM, so the server stops as it would in production and its log ends.
    let pid = server.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(15), server.child.wait()).await;
    let log = log.await.unwrap();
    let messages: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(str::to_string))
        .collect();
    // The fault may come and go while the disk is nearly full (a small commit can still fit),
    // so: every beginning is followed by its end, and there are a few, not one per refusal.
    let marks: Vec<&str> = messages
        .iter()
        .map(String::as_str)
        .filter(|m| *m == "the store cannot write" || *m == "the store can write again")
        .collect();
    let began = marks
        .iter()
        .filter(|m| **m == "the store cannot write")
        .count();
    assert!(began >= 1, "no fault logged: {log}");
    assert!(
        began <= 5,
        "{began} fault lines for {refusals} refused webhooks: {marks:?}"
    );
    for (i, m) in marks.iter().enumerate() {
        let want = if i % 2 == 0 {
            "the store cannot write"
        } else {
            "the store can write again"
        };
        assert_eq!(*m, want, "out of order: {marks:?}");
    }
    assert_eq!(marks.len(), 2 * began, "a fault never ended: {marks:?}");
    drop(fs);
}
