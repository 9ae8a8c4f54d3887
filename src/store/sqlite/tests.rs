//! The SQLite store's own tests; the behaviour every backend shares is tested once for all in
//! `store::conformance`.

use super::schema::{migrate, open};
use super::tmpfs::Tmpfs;
use super::writer::{CommitEventJob, PackedBodies, WriteJob, run_batch};
use super::*;
use crate::store::conformance::{delivered, delivery as new_delivery, ev};
use crate::store::{
    CommitOutcome, DeliveryStatus, DeliveryStore, EventQuery, EventStore, NewDelivery, NewEvent,
    PendingDelivery, id_floor,
};

/// A pending delivery to agent `a` with this id.
fn delivery(id: Uuid) -> NewDelivery {
    NewDelivery {
        id,
        ..new_delivery("a", DeliveryStatus::Pending)
    }
}

/// A store in a fresh temp dir (kept alive by the returned guard).
fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db"), SqliteOptions::default()).unwrap();
    (dir, store)
}

/// SQLite evaluates an `IN` list of three or more constants with a temporary b-tree, built
/// afresh each time: a partial index with such a predicate made every write of a
/// delivery's status open (and fault in) one or two of them.
#[test]
fn writing_a_delivery_status_builds_no_temporary_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("t.db")).unwrap();
    migrate(&mut conn).unwrap();
    for sql in [
        "UPDATE deliveries SET status = ?2 WHERE id = ?1",
        "INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status,
             created_at, updated_at) VALUES (?1, ?1, 'a', 'r', 0, ?2, 0, 0)",
    ] {
        let ops: Vec<String> = conn
            .prepare(&format!("EXPLAIN {sql}"))
            .unwrap()
            .query_map(params![b"id".as_slice(), "pending"], |r| r.get(1))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            !ops.iter().any(|op| op == "OpenEphemeral"),
            "{sql}: {ops:?}"
        );
    }
}

/// Under steady writes a PASSIVE checkpoint never catches up, so without the RESTART the
/// WAL grew by every frame written (here about 100 MB for 12,000 events of 4 KB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_steady_writes() {
    use futures_util::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    let wal = dir.path().join("t.db-wal");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (wal, done) = (wal.clone(), done.clone());
        tokio::spawn(async move {
            let mut largest = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            largest
        })
    };
    // Incompressible, so every body is written at its full size.
    let pad = crate::store::packed::incompressible(4000);
    futures_util::stream::iter(0..12_000)
        .map(|_| {
            let store = store.clone();
            let mut e = ev("github", None);
            e.body = format!("{{\"id\":\"{}\",\"pad\":\"{pad}\"}}", e.id).into();
            async move { store.commit_event(e).await.unwrap() }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let largest = sampler.await.unwrap();
    assert!(
        largest < 40 * 1024 * 1024,
        "the WAL reached {} MB while 48 MB of bodies were written",
        largest / 1_000_000
    );
}

#[tokio::test]
async fn unfinished_deliveries_are_read_through_their_partial_index() {
    let (_dir, store) = temp_store();
    let mut e = ev("github", Some("d1"));
    let (pending, done) = (Uuid::now_v7(), Uuid::now_v7());
    e.deliveries = vec![delivery(pending), delivery(done)];
    store.commit_event(e).await.unwrap();
    store.record_attempts(vec![delivered(done)]).await.unwrap();
    // `INDEXED BY` makes the query fail outright if the index cannot serve it.
    let left: Vec<Uuid> = store
        .unfinished_deliveries(usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(left, [pending]);
}

#[test]
fn a_failing_event_commit_does_not_sink_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("t.db")).unwrap();
    migrate(&mut conn).unwrap();
    let good = ev("github", Some("d1"));
    // Two deliveries with one id: the second INSERT fails.
    let mut bad = ev("github", Some("d2"));
    let same = Uuid::now_v7();
    bad.deliveries = vec![delivery(same), delivery(same)];
    let also_good = ev("linear", None);
    let ids = [good.id, bad.id, also_good.id];
    let mut replies = Vec::new();
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::new();
    for event in [good, bad, also_good] {
        let (reply, rx) = oneshot::channel();
        replies.push(rx);
        batch.push(Box::new(CommitEventJob {
            bodies: PackedBodies::new(&event),
            event,
            outcome: None,
            reply,
        }));
    }
    let results = run_batch(&mut conn, &mut batch);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(results[1].is_err());
    let stored = |id: Uuid| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM events WHERE id = ?1",
            [id.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        (stored(ids[0]), stored(ids[1]), stored(ids[2])),
        (1, 0, 1),
        "the failing event left nothing behind; the others are committed"
    );
    let deliveries: i64 = conn
        .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(deliveries, 0);
}

#[tokio::test]
async fn a_body_is_stored_as_given_and_checked_when_read() {
    // The writer binds bodies without checking their UTF-8 (they are serialized JSON); a
    // body that was not would come back as an error, never as text.
    let (_dir, store) = temp_store();
    let good = ev("s", Some("good"));
    let text = good.body.clone();
    let mut bad = ev("s", Some("bad"));
    bad.body = bytes::Bytes::from_static(b"{\"x\":\"\xff\xfe\"}");
    let (good_id, bad_id) = (good.id, bad.id);
    for e in [good, bad] {
        assert!(matches!(
            store.commit_event(e).await.unwrap(),
            CommitOutcome::Stored
        ));
    }
    let read = store.get_event(good_id).await.unwrap().unwrap();
    assert_eq!(read.body.as_bytes(), &text[..]);
    assert!(store.get_event(bad_id).await.is_err());
    store.close().await;
}

/// An event with a GitHub-like body of about 6 KB.
fn big_event(delivery: &str) -> NewEvent {
    let mut e = ev("github", Some(delivery));
    e.body = webhook_body(e.id);
    e
}

/// A GitHub-like body of about 6 KB: JSON with repeated keys and URLs, as webhooks are.
fn webhook_body(id: Uuid) -> bytes::Bytes {
    let repo = serde_json::json!({
        "id": 1296269, "name": "widgets", "full_name": "acme/widgets",
        "url": "https://api.github.com/repos/acme/widgets",
        "html_url": "https://github.com/acme/widgets",
        "issues_url": "https://api.github.com/repos/acme/widgets/issues{/number}",
        "pulls_url": "https://api.github.com/repos/acme/widgets/pulls{/number}",
    });
    let commits: Vec<_> = (0..24)
        .map(|i| serde_json::json!({"sha": format!("{i:040x}"), "repository": repo}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"id": id, "commits": commits}))
        .unwrap()
        .into()
}

#[tokio::test]
async fn bodies_are_kept_compressed_and_read_back_whole() {
    let (_dir, store) = temp_store();
    let mut e = big_event("big");
    let transformed = webhook_body(Uuid::now_v7());
    let (plain, changed) = (Uuid::now_v7(), Uuid::now_v7());
    e.deliveries = vec![
        delivery(plain),
        NewDelivery {
            body: Some(transformed.clone()),
            ..delivery(changed)
        },
    ];
    e.streamed = vec![("s".into(), Some(transformed.clone()))];
    let (id, body) = (e.id, e.body.clone());
    store.commit_event(e).await.unwrap();
    let (kinds, stored) = store
        .read(move |c| {
            let kinds = c
                .prepare(
                    "SELECT typeof(body) FROM events UNION ALL
                     SELECT typeof(body) FROM deliveries WHERE body IS NOT NULL UNION ALL
                     SELECT typeof(body) FROM streamed",
                )?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let stored: i64 = c.query_row("SELECT length(body) FROM events", [], |r| r.get(0))?;
            Ok((kinds, stored))
        })
        .await
        .unwrap();
    assert_eq!(kinds, ["blob", "blob", "blob"]);
    assert!(
        (stored as usize) < body.len() / 2,
        "{stored} bytes stored for {}",
        body.len()
    );
    let read = store.get_event(id).await.unwrap().unwrap();
    assert_eq!(read.body.as_bytes(), &body[..]);
    let listed = store.list_events(EventQuery {
        limit: 5,
        ..Default::default()
    });
    assert_eq!(listed.await.unwrap()[0].body.as_bytes(), &body[..]);
    let bodies = store.delivery_bodies(vec![plain, changed]).await.unwrap();
    assert_eq!(bodies[0].1.as_bytes(), &body[..]);
    assert_eq!(bodies[1].1.as_bytes(), &transformed[..]);
    let backlog = store.stream_backlog(Some("s".into()), Uuid::nil(), 10);
    assert_eq!(backlog.await.unwrap()[0].body.as_bytes(), &transformed[..]);
    let pending = store.unfinished_deliveries(usize::MAX).await.unwrap();
    let pending: Vec<_> = pending.iter().map(|p| p.body.as_deref().unwrap()).collect();
    assert_eq!(
        pending,
        [&body[..], &transformed[..]].map(|b| std::str::from_utf8(b).unwrap())
    );
    store.close().await;
}

#[tokio::test]
async fn text_bodies_from_before_compression_still_read() {
    let (_dir, store) = temp_store();
    let mut e = big_event("old");
    let d = Uuid::now_v7();
    e.deliveries = vec![delivery(d)];
    let (id, body) = (e.id, e.body.clone());
    store.commit_event(e).await.unwrap();
    // As a store written by an earlier version holds it: the JSON as TEXT.
    let text = String::from_utf8(body.to_vec()).unwrap();
    store
        .write(move |c| c.execute("UPDATE events SET body = ?1", [text]))
        .await
        .unwrap();
    assert_eq!(
        store.get_event(id).await.unwrap().unwrap().body.as_bytes(),
        &body[..]
    );
    let bodies = store.delivery_bodies(vec![d]).await.unwrap();
    assert_eq!(bodies[0].1.as_bytes(), &body[..]);
    store.close().await;
}

#[tokio::test]
async fn the_body_budget_counts_bodies_at_their_full_length() {
    // Packed, the three bodies take a fraction of what they take in memory; the budget is
    // about memory, so it must count them whole.
    let (_dir, store) = temp_store();
    let mut len = 0;
    for i in 0..3 {
        let mut e = big_event(&format!("d{i}"));
        len = e.body.len();
        e.deliveries = vec![delivery(Uuid::now_v7())];
        store.commit_event(e).await.unwrap();
    }
    let with_body =
        |p: Vec<PendingDelivery>| -> Vec<bool> { p.iter().map(|p| p.body.is_some()).collect() };
    let all = store.unfinished_deliveries(3 * len).await.unwrap();
    assert_eq!(with_body(all), [true, true, true]);
    let two = store.unfinished_deliveries(3 * len - 1).await.unwrap();
    assert_eq!(with_body(two), [true, true, false]);
    let none = store.unfinished_deliveries(len - 1).await.unwrap();
    assert_eq!(with_body(none), [false, false, false]);
    store.close().await;
}

#[tokio::test]
async fn first_attempt_success_is_kept_in_the_delivery_row() {
    // The attempt logs are checked on both stores by the conformance suite; here, where
    // they come from.
    let (_dir, store) = temp_store();
    let ((ok, _), retried, failed) = crate::store::conformance::first_success_rows(&store).await;
    let (rows, first) = store
        .read(move |c| {
            let rows = c
                .prepare("SELECT delivery_id, attempt FROM attempts")?
                .query_map([], |r| Ok((uuid_col(r, 0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let first = c.query_row(
                "SELECT first_started_at, first_duration_ms, first_status_code
                 FROM deliveries WHERE id = ?1",
                [ok.as_bytes().as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok((rows, first))
        })
        .await
        .unwrap();
    let mut rows = rows;
    rows.sort();
    let mut want = vec![(retried, 1), (retried, 2), (failed, 1)];
    want.sort();
    assert_eq!(rows, want, "no row for {ok}");
    let first: (Option<i64>, Option<i64>, Option<i64>) = first;
    assert_eq!(first, (Some(1000), Some(7), Some(200)));
    store.close().await;
}

#[test]
fn id_floor_orders_with_v7_ids() {
    let (id, ts) = crate::event::new_event_id();
    assert!(id_floor(ts).as_slice() <= id.as_bytes().as_slice());
    assert!(id_floor(ts + 1).as_slice() > id.as_bytes().as_slice());
}

/// A full disk used to stop the writer thread for good (every later write answered "shutting
/// down"). Now each write is refused as `Unavailable` while the disk is full, reads are still
/// served, the fault is reported, and once space is freed writes (events and delivery
/// outcomes) succeed again on the same store, with every acknowledged event there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_as_unavailable_and_survived() {
    let Some(fs) = Tmpfs::mount("3m") else { return };
    let dir = fs.path();
    // Room to give back later.
    std::fs::write(dir.join("filler"), vec![1u8; 1 << 20]).unwrap();
    let store = SqliteStore::open(&dir.join("t.db"), SqliteOptions::default()).unwrap();
    let pad = crate::store::packed::incompressible(6000);
    let event = || {
        let mut e = ev("github", None);
        e.body = format!("{{\"id\":\"{}\",\"pad\":\"{pad}\"}}", e.id).into();
        e.deliveries = vec![delivery(Uuid::now_v7())];
        e
    };
    let mut stored = Vec::new();
    let mut refused = None;
    for _ in 0..5_000 {
        let e = event();
        let (id, delivery) = (e.id, e.deliveries[0].id);
        match store.commit_event(e).await {
            Ok(CommitOutcome::Stored) => stored.push((id, delivery)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(refused, Some(StoreError::Unavailable(_))),
        "after {} events: {refused:?}",
        stored.len()
    );
    assert!(!stored.is_empty());
    assert!(store.write_fault().is_some());
    // Still refused, as unavailable (the writer is alive), while the disk is full; reads served.
    for _ in 0..3 {
        let again = store.commit_event(event()).await;
        assert!(
            matches!(again, Err(StoreError::Unavailable(_))),
            "{again:?}"
        );
    }
    store.ping().await.unwrap();
    assert!(store.get_event(stored[0].0).await.unwrap().is_some());
    // (A probe write, one page, may still fit where a 6 KB event does not: not checked here.)

    std::fs::remove_file(dir.join("filler")).unwrap();
    store.probe_write().await.unwrap();
    assert!(
        store.write_fault().is_none(),
        "a probe write clears the fault"
    );
    let e = event();
    let id = e.id;
    assert_eq!(
        store.commit_event(e).await.unwrap(),
        CommitOutcome::Stored,
        "once space is freed, without a restart"
    );
    assert!(store.write_fault().is_none());
    store
        .record_attempts(stored.iter().map(|(_, d)| delivered(*d)).collect())
        .await
        .unwrap();
    for (e, _) in &stored {
        assert!(store.get_event(*e).await.unwrap().is_some(), "lost {e}");
    }
    assert!(store.get_event(id).await.unwrap().is_some());
    store.close().await;
}

/// Below `min_free_disk_mb` new events are refused as unavailable, with the floor in the
/// reason (also the store's reported fault), while delivery outcomes are still written; with
/// room again, events are taken by the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_events_are_refused_and_outcomes_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let mut e = ev("github", None);
    let d = Uuid::now_v7();
    e.deliveries = vec![delivery(d)];
    assert_eq!(store.commit_event(e).await.unwrap(), CommitOutcome::Stored);
    store.close().await;

    let free = super::disk::free_bytes(dir.path()).unwrap();
    let store = SqliteStore::open(
        &path,
        SqliteOptions {
            // More than there is: the floor is crossed from the start.
            min_free_bytes: free + (1 << 40),
            ..Default::default()
        },
    )
    .unwrap();
    let refused = store.commit_event(ev("github", None)).await;
    match &refused {
        Err(StoreError::Unavailable(reason)) => {
            assert!(reason.contains("min_free_disk_mb"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        store
            .write_fault()
            .is_some_and(|f| f.contains("min_free_disk_mb")),
        "{:?}",
        store.write_fault()
    );
    // The outcome of a delivery in flight is written.
    store.record_attempts(vec![delivered(d)]).await.unwrap();
    let f = store.finished_counts().await.unwrap();
    assert_eq!((f.dead, f.delivered), (0, 1));
    assert!(
        store
            .unfinished_deliveries(usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;

    // A floor the disk clears: taken again.
    let store = SqliteStore::open(
        &path,
        SqliteOptions {
            min_free_bytes: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        store.commit_event(ev("github", None)).await.unwrap(),
        CommitOutcome::Stored
    );
    assert!(store.write_fault().is_none());
    store.close().await;
}
