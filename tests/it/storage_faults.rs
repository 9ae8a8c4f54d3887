//! Storage faults, black-box: the data dir on a small tmpfs this test mounts (as root; skipped
//! with a message elsewhere, except under CI, which must run it). The disk is filled with
//! webhooks, the answers, `/health` and `/metrics` are checked, space is freed, and the same
//! server must take webhooks again with every acknowledged event in its store.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A tmpfs of `size` mounted on a fresh directory, unmounted (lazily) on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs (this test needs root), and under CI it must run"
            );
            eprintln!("skipped: cannot mount a tmpfs here (this test needs root)");
            return None;
        }
        Some(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_storage_unavailable_and_recovers_without_a_restart() {
    if backend() != "sqlite" {
        eprintln!("skipped: the full-disk test is for the SQLite store");
        return;
    }
    let Some(fs) = Tmpfs::mount("8m") else { return };
    // Room to give back later, taken before the server fills the rest.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    let app = TestApp::spawn_in(tempfile::tempdir_in(fs.path()).unwrap(), |_| {}).await;

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
    app.stop().await;
    drop(fs);
}
