//! One store test suite, run against every backend: each test body takes an `Arc<dyn Store>`
//! and is instantiated for SQLite (a temp dir) and PostgreSQL (a fresh database of its own).
//! The cluster tests at the end run on PostgreSQL only, with several nodes on one database.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use super::postgres::testing::{DatabaseGuard, fresh_database_or_skip};
use super::postgres::{PgOptions, PgStore};
use super::sqlite::{SqliteOptions, SqliteStore};
use super::*;
use crate::crypto::Cipher;

/// A store under test and what must outlive it.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _db: Option<DatabaseGuard>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default()).expect("open");
    Backend {
        store: Arc::new(store),
        _dir: Some(dir),
        _db: None,
    }
}

fn pg_options() -> PgOptions {
    PgOptions {
        pool_size: 4,
        ..PgOptions::default()
    }
}

async fn postgres() -> Option<Backend> {
    let (url, guard) = fresh_database_or_skip().await?;
    let store = PgStore::open(&url, pg_options()).await.expect("open");
    Some(Backend {
        store: Arc::new(store),
        _dir: None,
        _db: Some(guard),
    })
}

/// Instantiates each generic test for both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let b = super::sqlite();
                    super::$name(b.store.clone()).await;
                    b.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(b) = super::postgres().await else { return };
                    super::$name(b.store.clone()).await;
                    b.store.close().await;
                }
            )*
        }
    };
}

conformance!(
    commit_dedupe_and_read_back,
    concurrent_commits_all_land_and_duplicates_resolve,
    one_bad_event_does_not_fail_its_batch,
    list_events_filters_and_cursor,
    deliveries_attempts_and_dead_letters,
    retry_and_delete_dead_letters,
    rollups_and_unsettled_events,
    audit_newest_first_with_cursor,
    purge_removes_old_events_in_batches_with_their_rows,
    purge_by_source_and_dead_letter_age,
    erase_leaves_a_tombstone_and_cancels_what_is_unfinished,
    rules_create_replace_delete,
    stream_backlog_per_agent_and_firehose,
    rewrite_bodies_reaches_every_body,
    bodies_come_back_byte_exact_through_encryption,
    delivery_bodies_are_read_back_alone,
    a_first_attempt_success_is_logged_like_any_attempt,
    attempts_keep_the_exchange_and_why_they_were_made,
    keys_supersessions_and_held_keys_are_kept,
    trace_context_is_kept_with_the_delivery,
    leases_are_written_reloaded_and_ended_by_an_outcome,
    ping_and_close,
);

fn keyed(agent: &str, ordering: Option<&str>, hold: bool, coalesce: Option<&str>) -> NewDelivery {
    NewDelivery {
        sequencing: Sequencing {
            ordering_key: ordering.map(str::to_string),
            ordering_hold: hold,
            coalesce_key: coalesce.map(str::to_string),
            coalesce_window_ms: if coalesce.is_some() { 500 } else { 0 },
            coalesce_max_wait_ms: if coalesce.is_some() { 5000 } else { 0 },
        },
        ..delivery(agent, DeliveryStatus::Pending)
    }
}

async fn keys_supersessions_and_held_keys_are_kept(store: Arc<dyn Store>) {
    let mut a = ev("github", None);
    let old = keyed("x", Some("pr-1"), true, Some("pr-1"));
    a.deliveries = vec![old.clone()];
    store.commit_event(a.clone()).await.unwrap();
    let mut b = ev("github", None);
    let new = keyed("x", Some("pr-1"), true, Some("pr-1"));
    b.deliveries = vec![new.clone()];
    store.commit_event(b.clone()).await.unwrap();
    // Reloaded with their keys.
    let pending = unfinished(store.as_ref()).await;
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].sequencing, old.sequencing);
    assert_eq!(pending[0].superseded, None);
    // The newer one supersedes the older one, carrying it.
    let carried = SupersededInfo {
        count: 1,
        event_ids: a.id.to_string(),
        since: 123,
    };
    store
        .supersede(vec![Supersession {
            old: old.id,
            by: new.id,
            carried: carried.clone(),
            due: 4567,
        }])
        .await
        .unwrap();
    let pending = unfinished(store.as_ref()).await;
    assert_eq!(pending.len(), 1, "a superseded delivery is finished");
    assert_eq!(pending[0].id, new.id);
    assert_eq!(pending[0].superseded.as_ref(), Some(&carried));
    assert_eq!(pending[0].next_attempt_at, 4567);
    let d = store.event_deliveries(a.id).await.unwrap();
    assert_eq!(d[0].status, DeliveryStatus::Superseded);
    assert_eq!(d[0].superseded_by, Some(new.id));
    assert_eq!(d[0].ordering_key.as_deref(), Some("pr-1"));
    let d = store.event_deliveries(b.id).await.unwrap();
    assert_eq!(d[0].superseded_count, 1);
    let f = store.finished_counts().await.unwrap();
    assert_eq!((f.dead, f.delivered, f.superseded), (0, 0, 1));
    // Dead with `hold`: its key is held; once retried it is not.
    let mut dead = delivered(new.id);
    dead.status = DeliveryStatus::Dead;
    dead.status_code = Some(500);
    dead.error = Some("agent answered 500".into());
    store.record_attempts(vec![dead]).await.unwrap();
    let held = store.held_keys().await.unwrap();
    assert_eq!(
        held,
        vec![HeldKey {
            delivery_id: new.id,
            event_id: b.id,
            agent_id: "x".into(),
            key: "pr-1".into(),
        }]
    );
    let back = store.retry_dead(new.id).await.unwrap().expect("retried");
    assert_eq!(back.sequencing, new.sequencing);
    assert!(store.held_keys().await.unwrap().is_empty());
    // A superseded delivery is never superseded back to life, nor one already attempted.
    store
        .supersede(vec![Supersession {
            old: old.id,
            by: new.id,
            carried,
            due: 1,
        }])
        .await
        .unwrap();
    let d = store.event_deliveries(a.id).await.unwrap();
    assert_eq!(d[0].status, DeliveryStatus::Superseded);
}

pub(super) fn ev(source: &str, delivery: Option<&str>) -> NewEvent {
    let (id, ts) = crate::event::new_event_id();
    NewEvent {
        id,
        source: source.into(),
        event_type: "t".into(),
        action: None,
        delivery_id: delivery.map(str::to_string),
        timestamp: ts,
        filtered: false,
        body: format!("{{\"id\":\"{id}\"}}").into(),
        deliveries: vec![],
        streamed: vec![],
    }
}

/// A first attempt at delivery `id` that the agent answered 200.
pub(super) fn delivered(id: Uuid) -> AttemptUpdate {
    AttemptUpdate {
        delivery_id: id,
        attempt: 1,
        started_at: 1,
        duration_ms: 1,
        status_code: Some(200),
        error: None,
        response_prefix: None,
        detail: None,
        status: DeliveryStatus::Delivered,
        next_attempt_at: None,
    }
}

pub(super) fn delivery(agent: &str, status: DeliveryStatus) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        agent_id: agent.into(),
        route_id: format!("route-{agent}"),
        priority: 0,
        status,
        body: None,
        retry_policy: None,
        next_attempt_at: 0,
        last_error: None,
        trace_context: None,
        sequencing: Default::default(),
    }
}

/// Every unfinished delivery, with its body.
async fn unfinished(store: &dyn Store) -> Vec<PendingDelivery> {
    store.unfinished_deliveries(usize::MAX).await.unwrap()
}

fn all() -> EventQuery {
    EventQuery {
        limit: 10_000,
        ..Default::default()
    }
}

async fn commit_dedupe_and_read_back(store: Arc<dyn Store>) {
    let a = ev("github", Some("d1"));
    assert_eq!(
        store.commit_event(a.clone()).await.unwrap(),
        CommitOutcome::Stored
    );
    let mut b = ev("github", Some("d1"));
    b.deliveries.push(delivery("x", DeliveryStatus::Pending));
    assert_eq!(
        store.commit_event(b.clone()).await.unwrap(),
        CommitOutcome::Duplicate {
            event_id: a.id,
            filtered: false,
            routed: false
        }
    );
    // The duplicate stored nothing, deliveries included.
    assert!(unfinished(store.as_ref()).await.is_empty());
    // Same delivery id from another source is not a duplicate.
    assert_eq!(
        store.commit_event(ev("linear", Some("d1"))).await.unwrap(),
        CommitOutcome::Stored
    );
    // A routed, filtered original is reported as such.
    let mut c = ev("slack", Some("d2"));
    c.filtered = true;
    c.deliveries.push(delivery("x", DeliveryStatus::Dead));
    store.commit_event(c.clone()).await.unwrap();
    assert_eq!(
        store.commit_event(ev("slack", Some("d2"))).await.unwrap(),
        CommitOutcome::Duplicate {
            event_id: c.id,
            filtered: true,
            routed: true
        }
    );
    // No delivery id: never a duplicate.
    store.commit_event(ev("github", None)).await.unwrap();
    store.commit_event(ev("github", None)).await.unwrap();

    assert!(store.get_event(b.id).await.unwrap().is_none());
    let got = store.get_event(a.id).await.unwrap().unwrap();
    assert_eq!(got.source, "github");
    assert_eq!(got.event_type, "t");
    assert_eq!(got.timestamp, a.timestamp);
    assert!(!got.filtered);
    assert_eq!(got.body.as_bytes(), &a.body[..]);
    assert_eq!(got.event_json().unwrap()["id"], a.id.to_string());
    let list = store.list_events(all()).await.unwrap();
    assert_eq!(list.len(), 5);
    assert!(list.windows(2).all(|w| w[0].id > w[1].id), "newest first");
}

async fn concurrent_commits_all_land_and_duplicates_resolve(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..100 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut e = ev("github", Some(&format!("d{i}")));
            e.deliveries.push(delivery("a", DeliveryStatus::Pending));
            e.streamed.push(("s".into(), None));
            let id = e.id;
            (id, s.commit_event(e).await)
        }));
    }
    // Twenty copies of one webhook at once: one is stored, the others point at it.
    for _ in 0..20 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = ev("github", Some("same"));
            let id = e.id;
            (id, s.commit_event(e).await)
        }));
    }
    let mut stored = Vec::new();
    let mut duplicates = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (id, Ok(CommitOutcome::Stored)) => stored.push(id),
            (_, Ok(CommitOutcome::Duplicate { event_id, .. })) => duplicates.push(event_id),
            (_, Err(e)) => panic!("commit failed: {e}"),
        }
    }
    assert_eq!(stored.len(), 101);
    assert_eq!(duplicates.len(), 19);
    let original = duplicates[0];
    assert!(duplicates.iter().all(|d| *d == original));
    assert!(stored.contains(&original));
    let n = store.list_events(all()).await.unwrap().len();
    assert_eq!(n, 101);
    assert_eq!(unfinished(store.as_ref()).await.len(), 100);
    let backlog = store
        .stream_backlog(Some("s".into()), Uuid::nil(), 1000)
        .await
        .unwrap();
    assert_eq!(backlog.len(), 100);
}

/// (id, source, type, filtered) of an event committed by the test.
type Listed = (Uuid, String, String, bool);

async fn one_bad_event_does_not_fail_its_batch(store: Arc<dyn Store>) {
    let mut first = ev("github", None);
    first
        .deliveries
        .push(delivery("a", DeliveryStatus::Pending));
    store.commit_event(first.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = store.clone();
        let taken = first.deliveries[0].id;
        tasks.push(tokio::spawn(async move {
            let mut e = ev("github", Some(&format!("b{i}")));
            let mut d = delivery("a", DeliveryStatus::Pending);
            if i == 17 {
                // A delivery id that is already stored: this event cannot be committed.
                d.id = taken;
            }
            e.deliveries.push(d);
            let id = e.id;
            (i, id, s.commit_event(e).await)
        }));
    }
    for t in tasks {
        let (i, id, r) = t.await.unwrap();
        if i == 17 {
            assert!(r.is_err(), "the bad event fails");
            assert!(
                store.get_event(id).await.unwrap().is_none(),
                "nothing of it"
            );
        } else {
            assert_eq!(r.unwrap(), CommitOutcome::Stored);
        }
    }
    assert_eq!(store.list_events(all()).await.unwrap().len(), 40);
    assert_eq!(unfinished(store.as_ref()).await.len(), 40);
}

async fn list_events_filters_and_cursor(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..12 {
        let mut e = ev(if i % 2 == 0 { "github" } else { "linear" }, None);
        e.event_type = if i % 3 == 0 {
            "push".into()
        } else {
            "issue".into()
        };
        e.filtered = i % 4 == 0;
        ids.push((e.id, e.source.clone(), e.event_type.clone(), e.filtered));
        store.commit_event(e).await.unwrap();
    }
    let q = |f: &dyn Fn(&mut EventQuery)| {
        let mut q = all();
        f(&mut q);
        q
    };
    let got = |v: Vec<EventRecord>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let expect = |f: &dyn Fn(&Listed) -> bool| {
        let mut v: Vec<Uuid> = ids.iter().filter(|x| f(x)).map(|x| x.0).collect();
        v.reverse();
        v
    };
    let by_source = store
        .list_events(q(&|q| q.source = Some("github".into())))
        .await
        .unwrap();
    assert_eq!(got(by_source), expect(&|x| x.1 == "github"));
    let by_type = store
        .list_events(q(&|q| q.event_type = Some("push".into())))
        .await
        .unwrap();
    assert_eq!(got(by_type), expect(&|x| x.2 == "push"));
    let filtered = store
        .list_events(q(&|q| q.status = Some(EventStatus::Filtered)))
        .await
        .unwrap();
    assert_eq!(got(filtered), expect(&|x| x.3));
    let processed = store
        .list_events(q(&|q| {
            q.status = Some(EventStatus::Processed);
            q.source = Some("linear".into());
        }))
        .await
        .unwrap();
    assert_eq!(got(processed), expect(&|x| !x.3 && x.1 == "linear"));
    // Pages of 5 through the cursor, newest first, cover everything once.
    let mut before = None;
    let mut pages = Vec::new();
    loop {
        let page = store
            .list_events(EventQuery {
                limit: 5,
                before,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|e| e.id);
        pages.extend(page.into_iter().map(|e| e.id));
    }
    assert_eq!(pages, expect(&|_| true));
    // Time bounds: since is inclusive, until exclusive, both on the receipt time in the id.
    let now = crate::clock::now_ms();
    assert_eq!(
        store
            .list_events(q(&|q| q.since = Some(now + 60_000)))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        store
            .list_events(q(&|q| q.until = Some(now + 60_000)))
            .await
            .unwrap()
            .len(),
        12
    );
    assert_eq!(
        store
            .list_events(q(&|q| q.until = Some(now - 60_000)))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        store
            .list_events(q(&|q| q.since = Some(now - 60_000)))
            .await
            .unwrap()
            .len(),
        12
    );
}

/// Both stores keep a first-attempt success in the delivery's row rather than as an `attempts`
/// row (see `first_success_rows`); the attempt log reads the same either way.
async fn a_first_attempt_success_is_logged_like_any_attempt(store: Arc<dyn Store>) {
    let (ok, retried, failed) = first_success_rows(store.as_ref()).await;
    let list = store.event_deliveries(ok.1).await.unwrap();
    let find = |id| list.iter().find(|d| d.id == id).unwrap();
    type Logged = (u32, i64, u64, Option<u16>, Option<String>);
    let log = |id| -> Vec<Logged> {
        find(id)
            .attempt_log
            .iter()
            .map(|a| {
                let error = a.error.clone();
                (a.attempt, a.started_at, a.duration_ms, a.status_code, error)
            })
            .collect()
    };
    assert_eq!(find(ok.0).status, DeliveryStatus::Delivered);
    assert_eq!(find(ok.0).attempts, 1);
    assert_eq!(log(ok.0), vec![(1, 1000, 7, Some(200), None)]);
    assert_eq!(
        log(retried),
        vec![
            (1, 1000, 7, Some(500), Some("agent answered 500".into())),
            (2, 2000, 7, Some(204), None)
        ]
    );
    // A first attempt that failed without an answer is an ordinary row too.
    assert_eq!(
        log(failed),
        vec![(1, 1000, 7, None, Some("connection refused".into()))]
    );
    assert_eq!(find(failed).status, DeliveryStatus::Dead);
    let dead = store.dead_letters(None, None, 10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempt_log.len(), 1);
}

/// Commits one event with three deliveries and records: the first delivered at once, the
/// second on its retry, the third dead after one attempt with no answer. Returns
/// `((first, event id), second, third)`.
pub(super) async fn first_success_rows(store: &dyn Store) -> ((Uuid, Uuid), Uuid, Uuid) {
    let mut e = ev("github", None);
    let (ok, retried, failed) = (
        delivery("a", DeliveryStatus::Pending),
        delivery("b", DeliveryStatus::Pending),
        delivery("c", DeliveryStatus::Pending),
    );
    e.deliveries = vec![ok.clone(), retried.clone(), failed.clone()];
    store.commit_event(e.clone()).await.unwrap();
    let update = |id, attempt, status, code: Option<u16>, error: Option<&str>| AttemptUpdate {
        delivery_id: id,
        attempt,
        started_at: 1_000 * attempt as i64,
        duration_ms: 7,
        status_code: code,
        error: error.map(str::to_string),
        response_prefix: None,
        detail: None,
        status,
        next_attempt_at: None,
    };
    store
        .record_attempts(vec![
            update(ok.id, 1, DeliveryStatus::Delivered, Some(200), None),
            update(
                retried.id,
                1,
                DeliveryStatus::Scheduled,
                Some(500),
                Some("agent answered 500"),
            ),
            update(
                failed.id,
                1,
                DeliveryStatus::Dead,
                None,
                Some("connection refused"),
            ),
        ])
        .await
        .unwrap();
    store
        .record_attempts(vec![update(
            retried.id,
            2,
            DeliveryStatus::Delivered,
            Some(204),
            None,
        )])
        .await
        .unwrap();
    ((ok.id, e.id), retried.id, failed.id)
}

async fn deliveries_attempts_and_dead_letters(store: Arc<dyn Store>) {
    let mut e = ev("github", Some("x"));
    let mut low = delivery("b-agent", DeliveryStatus::Pending);
    low.priority = 1;
    low.body = Some(Bytes::from_static(b"{\"transformed\":true}"));
    low.retry_policy = Some("{\"maxAttempts\":3}".into());
    low.next_attempt_at = 42;
    let mut high = delivery("z-agent", DeliveryStatus::Pending);
    high.priority = 5;
    let mut same = delivery("a-agent", DeliveryStatus::Pending);
    same.priority = 1;
    e.deliveries = vec![low.clone(), high.clone(), same.clone()];
    store.commit_event(e.clone()).await.unwrap();

    let list = store.event_deliveries(e.id).await.unwrap();
    let order: Vec<&str> = list.iter().map(|d| d.agent_id.as_str()).collect();
    assert_eq!(
        order,
        ["z-agent", "a-agent", "b-agent"],
        "priority, then agent"
    );
    assert!(list.iter().all(|d| d.status == DeliveryStatus::Pending));

    let pending = unfinished(store.as_ref()).await;
    assert_eq!(pending.len(), 3);
    assert!(pending.windows(2).all(|w| w[0].id < w[1].id));
    let p = pending.iter().find(|p| p.id == low.id).unwrap();
    assert_eq!(p.body.as_deref(), Some("{\"transformed\":true}"));
    assert_eq!(p.retry_policy.as_deref(), Some("{\"maxAttempts\":3}"));
    assert_eq!(p.next_attempt_at, 42);
    assert_eq!(p.event_id, e.id);
    assert_eq!(p.source, "github");
    assert_eq!(p.event_type, "t");
    assert_eq!(p.route_id, "route-b-agent");
    assert_eq!(p.priority, 1);
    assert_eq!(p.created_at, e.timestamp);
    let h = pending.iter().find(|p| p.id == high.id).unwrap();
    assert_eq!(
        h.body.as_deref().unwrap_or_default().as_bytes(),
        &e.body[..],
        "no transformation: the event"
    );

    let attempt = |id: Uuid, n: u32, status: DeliveryStatus, code: Option<u16>| AttemptUpdate {
        delivery_id: id,
        attempt: n,
        started_at: 1000 + i64::from(n),
        duration_ms: 7,
        status_code: code,
        error: code.filter(|c| *c >= 400).map(|c| format!("HTTP {c}")),
        response_prefix: Some("nope".into()),
        detail: None,
        status,
        next_attempt_at: (status == DeliveryStatus::Scheduled).then_some(5000),
    };
    store
        .record_attempts(vec![
            attempt(high.id, 1, DeliveryStatus::Scheduled, Some(500)),
            attempt(low.id, 1, DeliveryStatus::Delivered, Some(200)),
        ])
        .await
        .unwrap();
    store
        .record_attempts(vec![
            attempt(high.id, 2, DeliveryStatus::Scheduled, Some(502)),
            attempt(high.id, 3, DeliveryStatus::Dead, Some(503)),
            attempt(same.id, 1, DeliveryStatus::Dead, None),
        ])
        .await
        .unwrap();
    let list = store.event_deliveries(e.id).await.unwrap();
    let h = &list[0];
    assert_eq!(h.status, DeliveryStatus::Dead);
    assert_eq!(h.attempts, 3);
    assert_eq!(h.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(h.next_attempt_at, None);
    let log: Vec<(u32, Option<u16>)> = h
        .attempt_log
        .iter()
        .map(|a| (a.attempt, a.status_code))
        .collect();
    assert_eq!(log, [(1, Some(500)), (2, Some(502)), (3, Some(503))]);
    assert_eq!(h.attempt_log[0].started_at, 1001);
    assert_eq!(h.attempt_log[0].duration_ms, 7);
    assert_eq!(list[2].status, DeliveryStatus::Delivered);
    assert_eq!(list[1].attempt_log[0].status_code, None);
    assert!(unfinished(store.as_ref()).await.is_empty());
    let f = store.finished_counts().await.unwrap();
    assert_eq!((f.dead, f.delivered, f.superseded), (2, 1, 0));

    // Dead letters: newest first, by agent, through the cursor.
    let dead = store.dead_letters(None, None, 10, None).await.unwrap();
    let ids: Vec<Uuid> = dead.iter().map(|d| d.id).collect();
    let mut expect = vec![high.id, same.id];
    expect.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, expect);
    assert_eq!(
        dead[0].attempt_log.len(),
        if dead[0].id == high.id { 3 } else { 1 }
    );
    let first = store.dead_letters(None, None, 1, None).await.unwrap();
    let second = store
        .dead_letters(None, None, 1, Some(first[0].id))
        .await
        .unwrap();
    assert_eq!(vec![first[0].id, second[0].id], expect);
    let only = store
        .dead_letters(Some("a-agent".into()), None, 10, None)
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].id, same.id);
    // By the source of their event, with the agent and through the cursor too.
    let by_source = store
        .dead_letters(None, Some("github".into()), 10, None)
        .await
        .unwrap();
    assert_eq!(by_source.iter().map(|d| d.id).collect::<Vec<_>>(), expect);
    assert!(
        store
            .dead_letters(None, Some("stripe".into()), 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    let both = store
        .dead_letters(Some("a-agent".into()), Some("github".into()), 10, None)
        .await
        .unwrap();
    assert_eq!(both.len(), 1);
    let after = store
        .dead_letters(None, Some("github".into()), 1, Some(first[0].id))
        .await
        .unwrap();
    assert_eq!(after[0].id, second[0].id);

    // Replay: fresh deliveries for an archived event.
    let again = delivery("c-agent", DeliveryStatus::Pending);
    store
        .add_deliveries(e.id, vec![again.clone()])
        .await
        .unwrap();
    let pending = unfinished(store.as_ref()).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, again.id);
    assert_eq!(pending[0].attempts, 0);
}

/// Each attempt keeps the headers of both sides, the agent's answer and why it was made (issue
/// 30), a first-attempt success too (kept in its delivery's row); an erasure drops the answers.
async fn attempts_keep_the_exchange_and_why_they_were_made(store: Arc<dyn Store>) {
    let mut e = ev("github", None);
    let transformed = NewDelivery {
        body: Some(bytes::Bytes::from_static(b"{\"changed\":true}")),
        ..delivery("a", DeliveryStatus::Pending)
    };
    let plain = delivery("b", DeliveryStatus::Pending);
    e.deliveries = vec![transformed.clone(), plain.clone()];
    store.commit_event(e.clone()).await.unwrap();
    let detail = |n: u32| {
        format!(
            r#"{{"requestHeaders":{{"x-delivery-attempt":"{n}","authorization":"[redacted]"}},"responseHeaders":{{"x-agent":"n{n}"}}}}"#
        )
    };
    let update = |id: Uuid, n: u32, code: u16, status: DeliveryStatus| AttemptUpdate {
        delivery_id: id,
        attempt: n,
        started_at: 1000 * i64::from(n),
        duration_ms: 3,
        status_code: Some(code),
        error: (code >= 300).then(|| format!("agent answered {code}")),
        response_prefix: Some(format!("answer {n}")),
        detail: Some(detail(n)),
        status,
        next_attempt_at: None,
    };
    store
        .record_attempts(vec![
            update(transformed.id, 1, 500, DeliveryStatus::Scheduled),
            update(plain.id, 1, 200, DeliveryStatus::Delivered),
        ])
        .await
        .unwrap();
    store
        .record_attempts(vec![update(transformed.id, 2, 503, DeliveryStatus::Dead)])
        .await
        .unwrap();
    assert!(store.retry_dead(transformed.id).await.unwrap().is_some());
    store
        .record_attempts(vec![update(
            transformed.id,
            3,
            500,
            DeliveryStatus::Scheduled,
        )])
        .await
        .unwrap();
    store
        .record_attempts(vec![update(
            transformed.id,
            4,
            200,
            DeliveryStatus::Delivered,
        )])
        .await
        .unwrap();
    // A replay's deliveries: a first-attempt success and a failure.
    let (again_ok, again_failed) = (
        delivery("b", DeliveryStatus::Pending),
        delivery("c", DeliveryStatus::Pending),
    );
    store
        .add_deliveries(e.id, vec![again_ok.clone(), again_failed.clone()])
        .await
        .unwrap();
    store
        .record_attempts(vec![
            update(again_ok.id, 1, 204, DeliveryStatus::Delivered),
            update(again_failed.id, 1, 500, DeliveryStatus::Dead),
        ])
        .await
        .unwrap();

    let list = store.event_deliveries(e.id).await.unwrap();
    let find = |id: Uuid| list.iter().find(|d| d.id == id).unwrap();
    let t = find(transformed.id);
    let triggers: Vec<_> = t
        .attempt_log
        .iter()
        .map(|a| a.trigger.as_deref().unwrap())
        .collect();
    assert_eq!(
        triggers,
        ["initial", "scheduled", "manual_retry", "scheduled"]
    );
    let first = &t.attempt_log[0];
    assert_eq!(first.response_body.as_deref(), Some("answer 1"));
    assert_eq!(
        first.request_headers.as_ref().unwrap()["x-delivery-attempt"],
        "1"
    );
    assert_eq!(first.response_headers.as_ref().unwrap()["x-agent"], "n1");
    let p = find(plain.id);
    assert_eq!(p.attempt_log.len(), 1);
    let ok = &p.attempt_log[0];
    assert_eq!(ok.trigger.as_deref(), Some("initial"));
    assert_eq!(ok.status_code, Some(200));
    assert_eq!(ok.response_body.as_deref(), Some("answer 1"));
    assert_eq!(ok.response_headers.as_ref().unwrap()["x-agent"], "n1");
    assert_eq!(
        find(again_ok.id).attempt_log[0].trigger.as_deref(),
        Some("replay")
    );
    assert_eq!(
        find(again_failed.id).attempt_log[0].trigger.as_deref(),
        Some("replay")
    );
    let dead = store.dead_letters(None, None, 10, None).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].attempt_log[0].response_body.as_deref(),
        Some("answer 1")
    );

    // Erased: the agents' answers go with the payload.
    store.erase_events(vec![e.id], 5).await.unwrap();
    for d in store.event_deliveries(e.id).await.unwrap() {
        for a in &d.attempt_log {
            assert_eq!(a.response_body, None, "{a:?}");
        }
    }
}

async fn retry_and_delete_dead_letters(store: Arc<dyn Store>) {
    let failed = |agent: &str| NewDelivery {
        last_error: Some("HTTP 500".into()),
        ..delivery(agent, DeliveryStatus::Dead)
    };
    let mut a = ev("github", None);
    let dead_a = failed("x");
    let mut broken = delivery("x", DeliveryStatus::Dead);
    broken.last_error = Some("transformation failed: no".into());
    a.deliveries = vec![dead_a.clone(), broken.clone()];
    let mut b = ev("linear", None);
    let dead_b = failed("y");
    b.deliveries = vec![dead_b.clone()];
    let mut c = ev("linear", None);
    let dead_c = failed("x");
    c.deliveries = vec![dead_c.clone()];
    for e in [&a, &b, &c] {
        store.commit_event(e.clone()).await.unwrap();
    }
    // Two attempts spent before dying.
    for n in 1..=2 {
        store
            .record_attempts(vec![AttemptUpdate {
                delivery_id: dead_a.id,
                attempt: n,
                started_at: 1,
                duration_ms: 1,
                status_code: Some(500),
                error: Some("HTTP 500".into()),
                response_prefix: None,
                detail: None,
                status: DeliveryStatus::Dead,
                next_attempt_at: None,
            }])
            .await
            .unwrap();
    }
    let retried = store.retry_dead(dead_a.id).await.unwrap().unwrap();
    assert_eq!(retried.id, dead_a.id);
    assert_eq!(retried.attempts, 2);
    assert_eq!(retried.retry_base, 2);
    assert_eq!(
        retried.body.as_deref().unwrap_or_default().as_bytes(),
        &a.body[..]
    );
    assert!(retried.next_attempt_at > 0);
    assert!(
        store.retry_dead(dead_a.id).await.unwrap().is_none(),
        "not dead"
    );
    // A failed transformation has nothing to send: not retried.
    assert!(store.retry_dead(broken.id).await.unwrap().is_none());
    assert!(store.retry_dead(Uuid::now_v7()).await.unwrap().is_none());
    let unfinished = unfinished(store.as_ref()).await;
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].retry_base, 2);

    let none = store
        .retry_dead_matching(DeadFilter {
            since: Some(crate::clock::now_ms() + 60_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let by_source = store
        .retry_dead_matching(DeadFilter {
            agent_id: Some("x".into()),
            source: Some("linear".into()),
            since: None,
        })
        .await
        .unwrap();
    assert_eq!(by_source.len(), 1);
    assert_eq!(by_source[0].id, dead_c.id);
    let rest = store
        .retry_dead_matching(DeadFilter::default())
        .await
        .unwrap();
    let rest: Vec<Uuid> = rest.iter().map(|p| p.id).collect();
    assert_eq!(rest, vec![dead_b.id]);

    // Delete: only dead ones, with their attempts.
    assert!(!store.delete_dead(dead_b.id).await.unwrap(), "pending now");
    assert!(store.delete_dead(broken.id).await.unwrap());
    assert!(!store.delete_dead(broken.id).await.unwrap());
    let left = store.event_deliveries(a.id).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, dead_a.id);
    assert_eq!(left[0].attempt_log.len(), 2);
}

async fn rollups_and_unsettled_events(store: Arc<dyn Store>) {
    let d = |minute: i64, dim: &str, metric: &str, value: i64| RollupDelta {
        minute,
        dim: dim.into(),
        metric: metric.into(),
        value,
    };
    store
        .add_rollups(vec![
            d(60_000, "", "events", 2),
            d(60_000, "", "events", 3),
            d(120_000, "", "events", 1),
            d(120_000, "s:github", "events", 4),
            d(300_000, "", "events", 10),
            d(300_000, "", "delivered", 7),
        ])
        .await
        .unwrap();
    store
        .add_rollups(vec![d(60_000, "", "events", 1)])
        .await
        .unwrap();
    let mut totals = store.rollup_totals(0).await.unwrap();
    totals.sort();
    assert_eq!(
        totals,
        vec![
            ("".into(), "delivered".into(), 7),
            ("".into(), "events".into(), 17),
            ("s:github".into(), "events".into(), 4),
        ]
    );
    let mut since = store.rollup_totals(120_000).await.unwrap();
    since.sort();
    assert_eq!(since[1], ("".into(), "events".into(), 11));
    let mut timeline = store
        .rollup_timeline(60_000, 120_000, vec!["events".into(), "delivered".into()])
        .await
        .unwrap();
    assert!(
        timeline.windows(2).all(|w| w[0].0 <= w[1].0),
        "bucket order"
    );
    timeline.sort();
    assert_eq!(
        timeline,
        vec![
            (60_000, "events".into(), 7),
            (300_000, "delivered".into(), 7),
            (300_000, "events".into(), 10),
        ]
    );

    let mut pending = ev("github", None);
    pending.deliveries = vec![
        delivery("a", DeliveryStatus::Pending),
        delivery("b", DeliveryStatus::Delivered),
    ];
    let mut dead = ev("github", None);
    dead.deliveries = vec![
        delivery("a", DeliveryStatus::Dead),
        delivery("b", DeliveryStatus::Dead),
    ];
    let mut done = ev("github", None);
    done.deliveries = vec![delivery("a", DeliveryStatus::Delivered)];
    for e in [pending, dead, done] {
        store.commit_event(e).await.unwrap();
    }
    let now = crate::clock::now_ms();
    assert_eq!(store.unsettled_events(now - 60_000).await.unwrap(), (2, 1));
    assert_eq!(store.unsettled_events(now + 60_000).await.unwrap(), (0, 0));
}

async fn audit_newest_first_with_cursor(store: Arc<dyn Store>) {
    for i in 0..5u16 {
        store
            .add_audit(AuditRecord {
                id: 0,
                at: 1000 + i64::from(i),
                client_ip: "127.0.0.1".into(),
                method: "PUT".into(),
                path: format!("/admin/routes/r{i}"),
                status: 200 + i,
                action: "route.update".into(),
                target_id: (i % 2 == 0).then(|| format!("r{i}")),
            })
            .await
            .unwrap();
    }
    let all = store.list_audit(10, None).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(all[0].path, "/admin/routes/r4");
    assert_eq!(all[0].status, 204);
    assert_eq!(all[0].at, 1004);
    assert_eq!(all[0].target_id.as_deref(), Some("r4"));
    assert_eq!(all[1].target_id, None);
    assert_eq!(all[0].method, "PUT");
    assert_eq!(all[0].client_ip, "127.0.0.1");
    assert_eq!(all[0].action, "route.update");
    let page = store.list_audit(2, Some(all[1].id)).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].id, all[2].id);
    assert_eq!(page[1].id, all[3].id);
}

async fn purge_removes_old_events_in_batches_with_their_rows(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut e = ev("github", Some(&format!("p{i}")));
        e.deliveries.push(delivery("a", DeliveryStatus::Dead));
        e.streamed.push(("s".into(), None));
        ids.push(e.id);
        store.commit_event(e).await.unwrap();
    }
    // Still being delivered: stays whatever its age.
    let mut busy = ev("github", None);
    busy.deliveries
        .push(delivery("a", DeliveryStatus::Scheduled));
    store.commit_event(busy.clone()).await.unwrap();
    store
        .add_rollups(vec![RollupDelta {
            minute: 0,
            dim: String::new(),
            metric: "events".into(),
            value: 1,
        }])
        .await
        .unwrap();
    store
        .add_audit(AuditRecord {
            id: 0,
            at: 5,
            client_ip: "::1".into(),
            method: "DELETE".into(),
            path: "/admin/filters/f".into(),
            status: 204,
            action: "filter.delete".into(),
            target_id: None,
        })
        .await
        .unwrap();
    // Nothing is older than an hour ago.
    let hour_ago = crate::clock::now_ms() - 3_600_000;
    let every = |cutoff: i64| PurgeScope {
        cutoff,
        source: None,
        except: Vec::new(),
        dlq_cutoff: cutoff,
    };
    assert_eq!(store.purge_events(every(hour_ago), 2).await.unwrap(), 0);
    let future = crate::clock::now_ms() + 1000;
    assert_eq!(store.purge_events(every(future), 2).await.unwrap(), 2);
    assert_eq!(store.purge_events(every(future), 2).await.unwrap(), 2);
    assert_eq!(store.purge_events(every(future), 2).await.unwrap(), 1);
    assert_eq!(store.purge_events(every(future), 2).await.unwrap(), 0);
    for id in ids {
        assert!(store.get_event(id).await.unwrap().is_none());
        assert!(store.event_deliveries(id).await.unwrap().is_empty());
    }
    assert!(store.get_event(busy.id).await.unwrap().is_some());
    assert_eq!(unfinished(store.as_ref()).await.len(), 1);
    assert!(
        store
            .stream_backlog(Some("s".into()), Uuid::nil(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.rollup_totals(-1).await.unwrap().is_empty());
    assert!(store.list_audit(10, None).await.unwrap().is_empty());
    let f = store.finished_counts().await.unwrap();
    assert_eq!((f.dead, f.delivered), (0, 0));
}

async fn purge_by_source_and_dead_letter_age(store: Arc<dyn Store>) {
    let mut github = ev("github", None);
    github
        .deliveries
        .push(delivery("a", DeliveryStatus::Delivered));
    let mut linear = ev("linear", None);
    linear
        .deliveries
        .push(delivery("a", DeliveryStatus::Delivered));
    let mut dead = ev("slack", None);
    dead.deliveries.push(delivery("a", DeliveryStatus::Dead));
    for e in [&github, &linear, &dead] {
        store.commit_event(e.clone()).await.unwrap();
    }
    let past = crate::clock::now_ms() - 3_600_000;
    let future = crate::clock::now_ms() + 1000;
    // github alone, by its own cutoff.
    let only = |source: &str, cutoff: i64| PurgeScope {
        cutoff,
        source: Some(source.into()),
        except: Vec::new(),
        dlq_cutoff: past,
    };
    assert_eq!(
        store.purge_events(only("github", past), 10).await.unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_events(only("github", future), 10)
            .await
            .unwrap(),
        1
    );
    assert!(store.get_event(github.id).await.unwrap().is_none());
    // Every source but linear, past the events' cutoff: slack's event has a dead letter and
    // arrived after the DLQ cutoff, so the dead letter keeps it.
    let rest = |dlq_cutoff: i64| PurgeScope {
        cutoff: future,
        source: None,
        except: vec!["linear".into()],
        dlq_cutoff,
    };
    assert_eq!(store.purge_events(rest(past), 10).await.unwrap(), 0);
    assert!(store.get_event(dead.id).await.unwrap().is_some());
    assert!(store.get_event(linear.id).await.unwrap().is_some());
    // Dead letters of events before the cutoff go on their own; then the event can go.
    assert_eq!(store.purge_dead(past, 10).await.unwrap(), 0);
    assert_eq!(store.purge_dead(future, 10).await.unwrap(), 1);
    assert!(
        store
            .dead_letters(None, None, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_event(dead.id).await.unwrap().is_some());
    assert_eq!(store.purge_events(rest(past), 10).await.unwrap(), 1);
    assert!(store.get_event(linear.id).await.unwrap().is_some());
}

async fn erase_leaves_a_tombstone_and_cancels_what_is_unfinished(store: Arc<dyn Store>) {
    let mut e = ev("github", Some("to-erase"));
    e.body = format!("{{\"id\":\"{}\",\"payload\":\"secret-marker\"}}", e.id).into();
    let mut scheduled = delivery("a", DeliveryStatus::Scheduled);
    scheduled.body = Some("transformed secret-marker".into());
    let dead = delivery("b", DeliveryStatus::Dead);
    let done = delivery("c", DeliveryStatus::Pending);
    e.deliveries = vec![scheduled.clone(), dead.clone(), done.clone()];
    e.streamed
        .push(("s".into(), Some("streamed secret-marker".into())));
    store.commit_event(e.clone()).await.unwrap();
    let keep = ev("github", None);
    store.commit_event(keep.clone()).await.unwrap();
    // c is delivered (first attempt), a failed once with an answer.
    let mut failed = delivered(scheduled.id);
    failed.status = DeliveryStatus::Scheduled;
    failed.status_code = Some(500);
    failed.error = Some("agent answered 500".into());
    failed.response_prefix = Some("echo secret-marker".into());
    failed.next_attempt_at = Some(crate::clock::now_ms() + 60_000);
    store
        .record_attempts(vec![failed, delivered(done.id)])
        .await
        .unwrap();

    let erased = store
        .erase_events(vec![e.id, Uuid::now_v7(), keep.id], 42)
        .await
        .unwrap();
    let mut want = vec![e.id, keep.id];
    want.sort();
    let mut got = erased.clone();
    got.sort();
    assert_eq!(got, want);
    // Again: nothing new.
    assert!(store.erase_events(vec![e.id], 43).await.unwrap().is_empty());

    let rec = store.get_event(e.id).await.unwrap().unwrap();
    assert_eq!(rec.erased_at, Some(42));
    assert!(!rec.body.contains("secret-marker"));
    assert_eq!(
        rec.event_json().unwrap(),
        serde_json::json!({"id": e.id, "source": "github", "type": "t",
                           "timestamp": e.timestamp, "erasedAt": 42})
    );
    // Still a duplicate.
    assert!(matches!(
        store.commit_event(ev("github", Some("to-erase"))).await.unwrap(),
        CommitOutcome::Duplicate { event_id, .. } if event_id == e.id
    ));
    let mut ds = store.event_deliveries(e.id).await.unwrap();
    ds.sort_by_key(|d| d.agent_id.clone());
    let status: Vec<_> = ds.iter().map(|d| d.status).collect();
    assert_eq!(
        status,
        [
            DeliveryStatus::Cancelled,
            DeliveryStatus::Cancelled,
            DeliveryStatus::Delivered
        ]
    );
    assert_eq!(ds[0].attempt_log.len(), 1, "the attempt log stays");
    // Nothing to deliver, retry, replay to streams or read back.
    assert!(unfinished(store.as_ref()).await.is_empty());
    assert!(
        store
            .dead_letters(None, None, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.retry_dead(dead.id).await.unwrap().is_none());
    assert!(
        store
            .delivery_bodies(vec![scheduled.id, done.id])
            .await
            .unwrap()
            .is_empty()
    );
    for agent in [None, Some("a".to_string()), Some("s".to_string())] {
        assert!(
            store
                .stream_backlog(agent.clone(), Uuid::nil(), 10)
                .await
                .unwrap()
                .is_empty(),
            "{agent:?}"
        );
    }
    // An attempt that was under way comes back: logged, and the delivery stays cancelled.
    let mut late = delivered(scheduled.id);
    late.attempt = 2;
    late.response_prefix = Some("late secret-marker".into());
    store.record_attempts(vec![late]).await.unwrap();
    let ds = store.event_deliveries(e.id).await.unwrap();
    let a = ds.iter().find(|d| d.agent_id == "a").unwrap();
    assert_eq!(a.status, DeliveryStatus::Cancelled);
    assert_eq!(a.attempt_log.len(), 2);
    // Still listed, as the tombstone.
    let listed = store
        .list_events(EventQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        listed
            .iter()
            .any(|r| r.id == e.id && r.erased_at == Some(42))
    );
    assert!(listed.iter().all(|r| !r.body.contains("secret-marker")));
}

async fn rules_create_replace_delete(store: Arc<dyn Store>) {
    let r = |id: &str, body: &str| StoredRule {
        id: id.into(),
        body: body.into(),
    };
    let k = RuleKind::Filter;
    assert_eq!(
        store
            .put_rule(k, r("b", "1"), PutMode::Create)
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store
            .put_rule(k, r("b", "2"), PutMode::Create)
            .await
            .unwrap(),
        PutOutcome::Exists
    );
    assert_eq!(
        store
            .put_rule(k, r("a", "3"), PutMode::Upsert)
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store
            .put_rule(k, r("b", "4"), PutMode::Upsert)
            .await
            .unwrap(),
        PutOutcome::Replaced
    );
    // Byte order of ids, whatever the database's collation.
    store
        .put_rule(k, r("B", "5"), PutMode::Create)
        .await
        .unwrap();
    store
        .put_rule(k, r("_", "6"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        store.list_rules(k).await.unwrap(),
        vec![r("B", "5"), r("_", "6"), r("a", "3"), r("b", "4")]
    );
    // Same id, another kind: independent.
    assert_eq!(
        store
            .put_rule(RuleKind::Route, r("a", "7"), PutMode::Create)
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store.list_rules(RuleKind::Route).await.unwrap(),
        vec![r("a", "7")]
    );
    assert!(store.list_rules(RuleKind::Agent).await.unwrap().is_empty());
    assert!(store.delete_rule(k, "a".into()).await.unwrap());
    assert!(!store.delete_rule(k, "a".into()).await.unwrap());
    assert_eq!(store.list_rules(k).await.unwrap().len(), 3);
    assert_eq!(store.list_rules(RuleKind::Route).await.unwrap().len(), 1);
}

async fn stream_backlog_per_agent_and_firehose(store: Arc<dyn Store>) {
    let mut events = Vec::new();
    for i in 0..6 {
        let mut e = ev("github", None);
        e.filtered = i == 1;
        match i {
            0 => e.deliveries.push(delivery("push", DeliveryStatus::Pending)),
            2 => {
                // Two routes to one agent: one backlog item, the transformed body.
                let mut t = delivery("push", DeliveryStatus::Delivered);
                t.body = Some(Bytes::from_static(b"{\"t\":1}"));
                e.deliveries.push(delivery("push", DeliveryStatus::Pending));
                e.deliveries.push(t);
            }
            3 => e.streamed.push(("live".into(), None)),
            4 => e
                .streamed
                .push(("live".into(), Some(Bytes::from_static(b"{\"s\":2}")))),
            _ => {}
        }
        store.commit_event(e.clone()).await.unwrap();
        events.push(e);
    }
    let firehose = store.stream_backlog(None, Uuid::nil(), 100).await.unwrap();
    let ids: Vec<Uuid> = firehose.iter().map(|b| b.event_id).collect();
    let expect: Vec<Uuid> = events
        .iter()
        .filter(|e| !e.filtered)
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, expect, "processed events, oldest first");
    assert_eq!(firehose[0].body.as_bytes(), &events[0].body[..]);
    let after = store.stream_backlog(None, events[2].id, 2).await.unwrap();
    let ids: Vec<Uuid> = after.iter().map(|b| b.event_id).collect();
    assert_eq!(ids, vec![events[3].id, events[4].id]);

    let push = store
        .stream_backlog(Some("push".into()), Uuid::nil(), 100)
        .await
        .unwrap();
    let got: Vec<(Uuid, &str)> = push.iter().map(|b| (b.event_id, b.body.as_str())).collect();
    let e0 = std::str::from_utf8(&events[0].body).unwrap();
    assert_eq!(got, vec![(events[0].id, e0), (events[2].id, "{\"t\":1}")]);
    let live = store
        .stream_backlog(Some("live".into()), events[0].id, 100)
        .await
        .unwrap();
    let e3 = std::str::from_utf8(&events[3].body).unwrap();
    let got: Vec<(Uuid, &str)> = live.iter().map(|b| (b.event_id, b.body.as_str())).collect();
    assert_eq!(got, vec![(events[3].id, e3), (events[4].id, "{\"s\":2}")]);
    let limited = store
        .stream_backlog(Some("live".into()), Uuid::nil(), 1)
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    assert!(
        store
            .stream_backlog(Some("nobody".into()), Uuid::nil(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn rewrite_bodies_reaches_every_body(store: Arc<dyn Store>) {
    // More rows than one rewrite batch.
    for i in 0..520 {
        let mut e = ev("github", None);
        if i % 100 == 0 {
            let mut d = delivery("a", DeliveryStatus::Pending);
            d.body = Some(Bytes::from_static(b"{\"d\":1}"));
            e.deliveries.push(d);
            e.deliveries.push(delivery("b", DeliveryStatus::Pending));
            e.streamed
                .push(("s".into(), Some(Bytes::from_static(b"{\"s\":1}"))));
            e.streamed.push(("t".into(), None));
        }
        store.commit_event(e).await.unwrap();
    }
    let rewrite: BodyRewrite = Arc::new(|body: &str| {
        if body.starts_with("X") {
            Ok(None)
        } else {
            Ok(Some(format!("X{body}")))
        }
    });
    // 520 events + 6 transformed deliveries + 6 transformed stream rows.
    assert_eq!(store.rewrite_bodies(rewrite.clone()).await.unwrap(), 532);
    assert_eq!(
        store.rewrite_bodies(rewrite).await.unwrap(),
        0,
        "idempotent"
    );
    let events = store.list_events(all()).await.unwrap();
    assert!(events.iter().all(|e| e.body.starts_with("X{")));
    let pending = unfinished(store.as_ref()).await;
    assert_eq!(pending.len(), 12);
    assert!(
        pending
            .iter()
            .all(|p| p.body.as_ref().unwrap().starts_with("X{"))
    );
    let s = store
        .stream_backlog(Some("s".into()), Uuid::nil(), 100)
        .await
        .unwrap();
    assert_eq!(s.len(), 6);
    assert!(s.iter().all(|b| b.body == "X{\"s\":1}"));

    let failing: BodyRewrite = Arc::new(|_: &str| Err("cannot".to_string()));
    assert!(store.rewrite_bodies(failing).await.is_err());
}

async fn bodies_come_back_byte_exact_through_encryption(store: Arc<dyn Store>) {
    let body = "{\"b\":2,  \"a\":\"\\u00e9 é 😀 \\n\\\"\",\"n\":1.50}";
    let mut e = ev("github", Some("exact"));
    e.body = Bytes::from(body.to_string());
    let mut d = delivery("a", DeliveryStatus::Pending);
    d.body = Some(Bytes::from(format!("[{body}]")));
    e.deliveries.push(d);
    store.commit_event(e.clone()).await.unwrap();
    assert_eq!(store.get_event(e.id).await.unwrap().unwrap().body, body);

    // The encryption layer over the same backend: sealed at rest, the same bytes read back.
    let cipher = Arc::new(Cipher::new(&[7u8; 32]));
    let enc = encrypted::EncryptedStore::open(store.clone(), cipher, true)
        .await
        .unwrap();
    let mut e2 = ev("github", Some("sealed"));
    e2.body = Bytes::from(body.to_string());
    let mut d2 = delivery("b", DeliveryStatus::Pending);
    d2.body = Some(Bytes::from(format!("[{body}]")));
    e2.deliveries.push(d2);
    e2.streamed
        .push(("s".into(), Some(Bytes::from(format!("({body})")))));
    enc.commit_event(e2.clone()).await.unwrap();
    let raw = store.get_event(e2.id).await.unwrap().unwrap().body;
    assert!(raw.starts_with(crate::crypto::PREFIX), "sealed at rest");
    assert_eq!(enc.get_event(e2.id).await.unwrap().unwrap().body, body);
    let pending = unfinished(&enc).await;
    let p = pending.iter().find(|p| p.event_id == e2.id).unwrap();
    assert_eq!(p.body, Some(format!("[{body}]")));
    let s = enc
        .stream_backlog(Some("s".into()), Uuid::nil(), 10)
        .await
        .unwrap();
    assert_eq!(s[0].body, format!("({body})"));
    // Plain rows written before encryption still read back.
    assert_eq!(enc.get_event(e.id).await.unwrap().unwrap().body, body);

    // An agent's answer may repeat the payload: sealed at rest too, in an attempt row and in a
    // later attempt alike; an answer that happens to start like a sealed value comes back as it was.
    let answered = |n: u32, status, text: &str| AttemptUpdate {
        delivery_id: e2.deliveries[0].id,
        attempt: n,
        started_at: 1,
        duration_ms: 1,
        status_code: Some(if status == DeliveryStatus::Delivered {
            200
        } else {
            500
        }),
        error: (status != DeliveryStatus::Delivered).then(|| "agent answered 500".into()),
        response_prefix: Some(text.into()),
        detail: None,
        status,
        next_attempt_at: None,
    };
    enc.record_attempts(vec![answered(1, DeliveryStatus::Scheduled, body)])
        .await
        .unwrap();
    enc.record_attempts(vec![answered(
        2,
        DeliveryStatus::Delivered,
        "enc:v1:not really",
    )])
    .await
    .unwrap();
    let raw = store.event_deliveries(e2.id).await.unwrap();
    let raw_answer = raw[0].attempt_log[0].response_body.clone().unwrap();
    assert!(
        raw_answer.starts_with(crate::crypto::PREFIX),
        "sealed at rest"
    );
    let opened = enc.event_deliveries(e2.id).await.unwrap();
    assert_eq!(
        opened[0].attempt_log[0].response_body.as_deref(),
        Some(body)
    );
    assert_eq!(
        opened[0].attempt_log[1].response_body.as_deref(),
        Some("enc:v1:not really")
    );
}

async fn leases_are_written_reloaded_and_ended_by_an_outcome(store: Arc<dyn Store>) {
    let mut e = ev("github", None);
    let a = delivery("p", DeliveryStatus::Pending);
    let b = delivery("p", DeliveryStatus::Pending);
    let done = delivery("p", DeliveryStatus::Delivered);
    e.deliveries = vec![a.clone(), b.clone(), done.clone()];
    store.commit_event(e.clone()).await.unwrap();
    let lease = |id: Uuid, attempt: u32, until: i64| LeaseWrite {
        delivery_id: id,
        attempt,
        expires_at: until,
        consumer: "worker-1".into(),
    };
    // Only unfinished deliveries are leased.
    let mut leased = store
        .lease_deliveries(vec![lease(a.id, 1, 1_000), lease(done.id, 1, 1_000)])
        .await
        .unwrap();
    leased.sort();
    assert_eq!(leased, vec![a.id]);
    assert!(store.lease_deliveries(vec![]).await.unwrap().is_empty());
    // Reloaded with its consumer, its attempt and its expiry; the other is not leased.
    let pending = unfinished(store.as_ref()).await;
    let got = pending.iter().find(|p| p.id == a.id).unwrap();
    assert_eq!(got.lease_consumer.as_deref(), Some("worker-1"));
    assert_eq!(got.attempts, 1);
    assert_eq!(got.next_attempt_at, 1_000);
    let other = pending.iter().find(|p| p.id == b.id).unwrap();
    assert_eq!(other.lease_consumer, None);
    let rows = store.event_deliveries(e.id).await.unwrap();
    let row = rows.iter().find(|d| d.id == a.id).unwrap();
    assert_eq!(row.status, DeliveryStatus::InFlight);
    // Extended: the same lease, a later expiry.
    assert_eq!(
        store
            .lease_deliveries(vec![lease(a.id, 1, 9_000)])
            .await
            .unwrap(),
        vec![a.id]
    );
    let pending = unfinished(store.as_ref()).await;
    assert_eq!(
        pending
            .iter()
            .find(|p| p.id == a.id)
            .unwrap()
            .next_attempt_at,
        9_000
    );
    // An outcome ends the lease: the lease expired, retried later.
    store
        .record_attempts(vec![AttemptUpdate {
            delivery_id: a.id,
            attempt: 1,
            started_at: 500,
            duration_ms: 500,
            status_code: None,
            error: Some("lease expired".into()),
            response_prefix: None,
            detail: None,
            status: DeliveryStatus::Scheduled,
            next_attempt_at: Some(2_000),
        }])
        .await
        .unwrap();
    let pending = unfinished(store.as_ref()).await;
    let got = pending.iter().find(|p| p.id == a.id).unwrap();
    assert_eq!(got.lease_consumer, None);
    assert_eq!(got.next_attempt_at, 2_000);
    let rows = store.event_deliveries(e.id).await.unwrap();
    let row = rows.iter().find(|d| d.id == a.id).unwrap();
    assert_eq!(row.attempt_log[0].error.as_deref(), Some("lease expired"));
    // Acked: delivered, and no longer leasable.
    store
        .lease_deliveries(vec![lease(a.id, 2, 5_000)])
        .await
        .unwrap();
    store
        .record_attempts(vec![AttemptUpdate {
            delivery_id: a.id,
            attempt: 2,
            started_at: 3_000,
            duration_ms: 10,
            status_code: None,
            error: None,
            response_prefix: None,
            detail: None,
            status: DeliveryStatus::Delivered,
            next_attempt_at: None,
        }])
        .await
        .unwrap();
    assert!(
        store
            .lease_deliveries(vec![lease(a.id, 3, 9_000)])
            .await
            .unwrap()
            .is_empty()
    );
    let rows = store.event_deliveries(e.id).await.unwrap();
    let row = rows.iter().find(|d| d.id == a.id).unwrap();
    assert_eq!(row.status, DeliveryStatus::Delivered);
    assert_eq!(row.attempts, 2);
}

async fn trace_context_is_kept_with_the_delivery(store: Arc<dyn Store>) {
    // What a delivery's attempts continue, after a restart or on another node: read back with
    // it from every path that loads deliveries (unfinished, dead-letter retry, added later).
    let context = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nrojo=00f067aa0ba902b7";
    let mut e = ev("github", Some("traced"));
    let mut traced = delivery("a", DeliveryStatus::Pending);
    traced.trace_context = Some(context.into());
    let untraced = delivery("b", DeliveryStatus::Pending);
    let mut dead = delivery("c", DeliveryStatus::Dead);
    dead.last_error = Some("agent answered 500".into());
    dead.trace_context = Some(context.into());
    let (traced_id, untraced_id, dead_id) = (traced.id, untraced.id, dead.id);
    e.deliveries = vec![traced, untraced, dead];
    store.commit_event(e.clone()).await.unwrap();
    let mut added = delivery("d", DeliveryStatus::Pending);
    added.trace_context = Some(context.into());
    let added_id = added.id;
    store.add_deliveries(e.id, vec![added]).await.unwrap();

    let all = unfinished(store.as_ref()).await;
    let context_of = |id: Uuid| {
        all.iter()
            .find(|p| p.id == id)
            .map(|p| p.trace_context.clone())
            .expect("an unfinished delivery")
    };
    assert_eq!(context_of(traced_id).as_deref(), Some(context));
    assert_eq!(context_of(untraced_id), None);
    assert_eq!(context_of(added_id).as_deref(), Some(context));
    let retried = store.retry_dead(dead_id).await.unwrap().expect("was dead");
    assert_eq!(retried.trace_context.as_deref(), Some(context));
}

async fn delivery_bodies_are_read_back_alone(store: Arc<dyn Store>) {
    // The route's transformed body when it has one, the event's own otherwise; ids no longer
    // stored are left out.
    let mut e = ev("github", Some("bodies"));
    let own = delivery("a", DeliveryStatus::Pending);
    let mut shaped = delivery("b", DeliveryStatus::Pending);
    shaped.body = Some(Bytes::from_static(b"{\"shaped\":true}"));
    let (own_id, shaped_id) = (own.id, shaped.id);
    e.deliveries = vec![own, shaped];
    store.commit_event(e.clone()).await.unwrap();
    let mut got = store
        .delivery_bodies(vec![shaped_id, Uuid::now_v7(), own_id])
        .await
        .unwrap();
    got.sort();
    let own_body = String::from_utf8(e.body.to_vec()).unwrap();
    let mut want = vec![
        (own_id, own_body),
        (shaped_id, "{\"shaped\":true}".to_string()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(store.delivery_bodies(vec![]).await.unwrap().is_empty());

    // Unfinished deliveries come with their bodies while these add up to the budget, in id
    // order; the rest without.
    let all = unfinished(store.as_ref()).await;
    let ours: Vec<&PendingDelivery> = all.iter().filter(|p| p.event_id == e.id).collect();
    assert_eq!(ours.len(), 2);
    assert!(ours.iter().all(|p| p.body.is_some()));
    let first = all[0].body.as_ref().unwrap().len();
    let cut = store.unfinished_deliveries(first).await.unwrap();
    assert_eq!(
        cut.len(),
        all.len(),
        "every delivery, with or without its body"
    );
    assert_eq!(cut[0].body, all[0].body);
    assert!(cut[1..].iter().all(|p| p.body.is_none()));
    let none = store.unfinished_deliveries(0).await.unwrap();
    assert!(none.iter().all(|p| p.body.is_none()));

    // Through the encryption layer: sealed at rest, opened on the way out.
    let cipher = Arc::new(Cipher::new(&[9u8; 32]));
    let enc = encrypted::EncryptedStore::open(store.clone(), cipher, true)
        .await
        .unwrap();
    let mut e2 = ev("github", Some("sealed-bodies"));
    let mut d = delivery("c", DeliveryStatus::Pending);
    d.body = Some(Bytes::from_static(b"[1,2,3]"));
    let plain = delivery("c", DeliveryStatus::Pending);
    let (d_id, plain_id) = (d.id, plain.id);
    e2.deliveries = vec![d, plain];
    enc.commit_event(e2.clone()).await.unwrap();
    let raw = store.delivery_bodies(vec![d_id]).await.unwrap();
    assert!(
        raw[0].1.starts_with(crate::crypto::PREFIX),
        "sealed at rest"
    );
    let mut opened = enc.delivery_bodies(vec![d_id, plain_id]).await.unwrap();
    opened.sort();
    let mut want = vec![
        (d_id, "[1,2,3]".to_string()),
        (plain_id, String::from_utf8(e2.body.to_vec()).unwrap()),
    ];
    want.sort();
    assert_eq!(opened, want);
    // A body that does not open (damaged at rest) is left out; the others in the batch still
    // come.
    let mut e3 = ev("github", Some("damaged"));
    let mut bad = delivery("c", DeliveryStatus::Pending);
    bad.body = Some(Bytes::from(format!(
        "{}not-a-sealed-body",
        crate::crypto::PREFIX
    )));
    let bad_id = bad.id;
    e3.deliveries = vec![bad];
    store.commit_event(e3).await.unwrap();
    let got = enc.delivery_bodies(vec![bad_id, own_id]).await.unwrap();
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [own_id]);
}

async fn ping_and_close(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(matches!(store.backend(), "sqlite" | "postgres"));
    store.commit_event(ev("x", None)).await.unwrap();
    store.close().await;
    assert!(matches!(
        store.commit_event(ev("x", None)).await,
        Err(StoreError::Closed)
    ));
    assert!(store.ping().await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Cluster tests: PostgreSQL only, several nodes (stores) on one database.

/// Nodes on one fresh database (`None`: PostgreSQL unreachable outside CI).
struct Cluster {
    url: String,
    _db: DatabaseGuard,
}

impl Cluster {
    async fn new() -> Option<Cluster> {
        let (url, db) = fresh_database_or_skip().await?;
        Some(Cluster { url, _db: db })
    }

    async fn node(&self, lease_ms: i64) -> Arc<PgStore> {
        Arc::new(
            PgStore::open(
                &self.url,
                PgOptions {
                    lease_ms,
                    pool_size: 3,
                    ..PgOptions::default()
                },
            )
            .await
            .expect("open"),
        )
    }
}

/// Waits for the next notice, failing after a few seconds.
async fn next_notice(rx: &mut tokio::sync::mpsc::Receiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a notice in time")
        .expect("the listener is running")
}

fn with_pending(n: usize) -> NewEvent {
    let mut e = ev("github", None);
    for i in 0..n {
        e.deliveries
            .push(delivery(&format!("agent{i}"), DeliveryStatus::Pending));
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_migrations_race_safely_and_nodes_register() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    // Several nodes starting at once on an empty database.
    let (a, b, d) = tokio::join!(c.node(10_000), c.node(10_000), c.node(10_000));
    assert_ne!(a.node_id(), b.node_id());
    let mut live: Vec<Uuid> = a.live_nodes().await.unwrap().iter().map(|n| n.id).collect();
    live.sort_unstable();
    let mut expect = vec![
        a.node_id().unwrap(),
        b.node_id().unwrap(),
        d.node_id().unwrap(),
    ];
    expect.sort_unstable();
    assert_eq!(live, expect);
    a.heartbeat("{\"pending\":3}".into()).await.unwrap();
    let me = b
        .live_nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| Some(n.id) == a.node_id())
        .unwrap();
    assert_eq!(me.snapshot, "{\"pending\":3}");
    assert!(me.last_seen > 0);
    assert_eq!(a.backend(), "postgres");
    // A restart with a fixed node id keeps it.
    let id = Uuid::now_v7();
    let fixed = PgStore::open(
        &c.url,
        PgOptions {
            node_id: Some(id),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(fixed.node_id(), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_take_over_only_after_the_lease_expired() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(300).await;
    let b = c.node(60_000).await;
    let e = with_pending(3);
    a.commit_event(e.clone()).await.unwrap();
    a.heartbeat("{}".into()).await.unwrap();
    let beat = std::time::Instant::now();
    // A is alive: its deliveries are its own.
    assert!(b.take_over(100).await.unwrap().is_empty());
    assert!(unfinished(b.as_ref()).await.is_empty());
    assert_eq!(unfinished(a.as_ref()).await.len(), 3);
    // A stops heartbeating; once its lease is over B takes them.
    let taken = loop {
        let t = b.take_over(2).await.unwrap();
        if !t.is_empty() {
            break t;
        }
        assert!(beat.elapsed() < Duration::from_secs(5), "never taken over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        beat.elapsed() >= Duration::from_millis(250),
        "taken too early"
    );
    assert_eq!(taken.len(), 2, "the limit holds");
    assert!(
        taken
            .iter()
            .all(|p| p.event_id == e.id && p.source == "github")
    );
    assert!(taken[0].id < taken[1].id);
    let rest = b.take_over(100).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(unfinished(b.as_ref()).await.len(), 3);
    // A comes back: nothing of it is left to A.
    a.heartbeat("{}".into()).await.unwrap();
    assert!(unfinished(a.as_ref()).await.is_empty());
    assert!(a.take_over(100).await.unwrap().is_empty(), "B is alive");
    let live: Vec<Uuid> = b.live_nodes().await.unwrap().iter().map(|n| n.id).collect();
    assert_eq!(live.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_each_delivery_is_claimed_by_exactly_one_node() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let dead = c.node(10_000).await;
    for _ in 0..20 {
        dead.commit_event(with_pending(10)).await.unwrap();
    }
    // The node is gone without a word: its deliveries are free once it has no lease.
    dead.release().await.unwrap();
    let a = c.node(10_000).await;
    let b = c.node(10_000).await;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for _ in 0..10 {
        let (x, y) = tokio::join!(a.take_over(15), b.take_over(15));
        for p in x.unwrap().into_iter().chain(y.unwrap()) {
            assert!(seen.insert(p.id), "claimed twice: {}", p.id);
            total += 1;
        }
    }
    assert_eq!(total, 200);
    let (ua, ub) = (unfinished(a.as_ref()).await, unfinished(b.as_ref()).await);
    assert_eq!(ua.len() + ub.len(), 200);
    assert!(ua.iter().all(|p| !ub.iter().any(|q| q.id == p.id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_pull_deliveries_are_taken_by_one_node_and_leased_by_their_owner() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(10_000).await;
    let b = c.node(10_000).await;
    let mut notices = a.listen().await.unwrap().unwrap();
    let mut e = ev("github", None);
    for _ in 0..30 {
        e.deliveries.push(delivery("p", DeliveryStatus::Pending));
    }
    let mut keyed_one = keyed("p", Some("k"), false, None);
    keyed_one.status = DeliveryStatus::Pending;
    e.deliveries.push(keyed_one.clone());
    e.deliveries
        .push(delivery("other", DeliveryStatus::Pending));
    a.commit_event(e.clone()).await.unwrap();
    // Two nodes take at once: only the agent's, never the keyed one. (A node may also take from
    // the other what it has just taken: both are other nodes to a node that takes.)
    let y = c.node(10_000).await;
    let (x, z) = tokio::join!(b.take_pull("p", 20), y.take_pull("p", 20));
    let (x, z) = (x.unwrap(), z.unwrap());
    let mut seen = std::collections::HashSet::new();
    for p in x.iter().chain(&z) {
        assert_eq!(p.agent_id, "p");
        assert_ne!(p.id, keyed_one.id);
        assert!(p.body.is_some());
        seen.insert(p.id);
    }
    // (A row the other node has locked is skipped, not waited for.)
    assert!((20..=30).contains(&seen.len()), "{}", seen.len());
    // Each taken delivery is one node's: the node that had them can no longer lease them, and
    // of the two that took, exactly one can.
    let lease = |id: Uuid| LeaseWrite {
        delivery_id: id,
        attempt: 1,
        expires_at: 1_000,
        consumer: "c".into(),
    };
    let all: Vec<Uuid> = seen.iter().copied().collect();
    assert!(
        a.lease_deliveries(all.iter().map(|&id| lease(id)).collect())
            .await
            .unwrap()
            .is_empty()
    );
    let by_b = b
        .lease_deliveries(all.iter().map(|&id| lease(id)).collect())
        .await
        .unwrap();
    let by_y = y
        .lease_deliveries(all.iter().map(|&id| lease(id)).collect())
        .await
        .unwrap();
    assert_eq!(by_b.len() + by_y.len(), all.len(), "{by_b:?} {by_y:?}");
    assert!(by_b.iter().all(|id| !by_y.contains(id)), "leased twice");
    // A leased delivery is not taken again.
    let again = b.take_pull("p", 100).await.unwrap();
    assert!(again.iter().all(|p| !seen.contains(&p.id)));
    // The node that had them hears which went.
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Notice::Taken { ids }) = notices.recv().await {
                return ids;
            }
        }
    })
    .await
    .expect("a Taken notice");
    assert!(!heard.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_an_ordering_key_is_held_by_one_node_at_a_time() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(10_000).await;
    let b = c.node(10_000).await;
    let one = |n: &Arc<PgStore>| {
        let n = n.clone();
        async move {
            let mut e = ev("github", None);
            let d = keyed("x", Some("k"), false, None);
            e.deliveries = vec![d.clone()];
            n.commit_event(e.clone()).await.unwrap();
            KeyClaim {
                delivery_id: d.id,
                event_id: e.id,
                agent_id: "x".into(),
                key: "k".into(),
            }
        }
    };
    let first = one(&a).await;
    let second = one(&b).await;
    // The later event waits for the earlier one, wherever it is.
    assert!(
        b.claim_keys(vec![second.clone()])
            .await
            .unwrap()
            .granted
            .is_empty()
    );
    assert_eq!(
        a.claim_keys(vec![first.clone()]).await.unwrap().granted,
        vec![first.delivery_id]
    );
    // Claiming again (a restart of the same node) is granted; another node is refused.
    assert_eq!(
        a.claim_keys(vec![first.clone()]).await.unwrap().granted,
        vec![first.delivery_id]
    );
    // Another node does not own it: gone for that node.
    let other = b.claim_keys(vec![first.clone()]).await.unwrap();
    assert!(other.granted.is_empty());
    assert_eq!(other.gone, vec![first.delivery_id]);
    // Once the first is delivered, the second gets the key.
    a.record_attempts(vec![delivered(first.delivery_id)])
        .await
        .unwrap();
    assert_eq!(
        b.claim_keys(vec![second.clone()]).await.unwrap().granted,
        vec![second.delivery_id]
    );
    // A node that stops holding it (no longer live) frees the key for the others.
    let third = one(&a).await;
    assert!(
        a.claim_keys(vec![third.clone()])
            .await
            .unwrap()
            .granted
            .is_empty()
    );
    b.release().await.unwrap();
    // The second is still unfinished (earlier than the third): the key stays with its event
    // order, whoever holds the lock.
    assert!(
        a.claim_keys(vec![third.clone()])
            .await
            .unwrap()
            .granted
            .is_empty()
    );
    a.record_attempts(vec![delivered(second.delivery_id)])
        .await
        .unwrap();
    assert_eq!(
        a.claim_keys(vec![third.clone()]).await.unwrap().granted,
        vec![third.delivery_id]
    );
    // A dead letter that holds its key refuses every claim until it is retried.
    let mut dead = delivered(third.delivery_id);
    dead.status = DeliveryStatus::Dead;
    a.record_attempts(vec![dead]).await.unwrap();
    let mut e = ev("github", None);
    let held = keyed("x", Some("k2"), true, None);
    e.deliveries = vec![held.clone()];
    a.commit_event(e.clone()).await.unwrap();
    let mut dead = delivered(held.id);
    dead.status = DeliveryStatus::Dead;
    a.record_attempts(vec![dead]).await.unwrap();
    let later = {
        let mut e = ev("github", None);
        let d = keyed("x", Some("k2"), true, None);
        e.deliveries = vec![d.clone()];
        a.commit_event(e.clone()).await.unwrap();
        KeyClaim {
            delivery_id: d.id,
            event_id: e.id,
            agent_id: "x".into(),
            key: "k2".into(),
        }
    };
    assert!(
        a.claim_keys(vec![later.clone()])
            .await
            .unwrap()
            .granted
            .is_empty()
    );
    a.delete_dead(held.id).await.unwrap();
    assert_eq!(
        a.claim_keys(vec![later.clone()]).await.unwrap().granted,
        vec![later.delivery_id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_release_hands_work_back_and_wakes_the_others() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(60_000).await;
    let b = c.node(60_000).await;
    let mut rx = b.listen().await.unwrap().expect("a cluster listens");
    let e = with_pending(4);
    a.commit_event(e.clone()).await.unwrap();
    // A finished one stays finished.
    a.record_attempts(vec![delivered(e.deliveries[0].id)])
        .await
        .unwrap();
    assert!(matches!(next_notice(&mut rx).await, Notice::Events { .. }));
    assert_eq!(a.release().await.unwrap(), 3);
    assert_eq!(next_notice(&mut rx).await, Notice::Wake);
    let live: Vec<Uuid> = b.live_nodes().await.unwrap().iter().map(|n| n.id).collect();
    assert_eq!(live, vec![b.node_id().unwrap()]);
    // No lease to wait for: released work is free at once.
    let taken = b.take_over(100).await.unwrap();
    assert_eq!(taken.len(), 3);
    assert!(taken.iter().all(|p| p.id != e.deliveries[0].id));
    assert!(
        taken.iter().all(|p| p.body.is_some()),
        "take-over brings bodies"
    );

    // Released again and claimed at a start: within the body budget, in id order.
    assert_eq!(b.release().await.unwrap(), 3);
    let size = e.body.len();
    let claimed = a.unfinished_deliveries(size).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let with_body: Vec<bool> = claimed.iter().map(|p| p.body.is_some()).collect();
    assert_eq!(with_body, [true, false, false], "one body fits the budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_notices_reach_the_other_nodes_only() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(60_000).await;
    let b = c.node(60_000).await;
    let mut rx = a.listen().await.unwrap().expect("a cluster listens");
    let rule = |id: &str| StoredRule {
        id: id.into(),
        body: "{}".into(),
    };
    // A's own changes are not echoed back to A...
    a.put_rule(RuleKind::Route, rule("mine"), PutMode::Create)
        .await
        .unwrap();
    a.commit_event(ev("github", None)).await.unwrap();
    // ...so the first notice A hears is B's.
    b.put_rule(RuleKind::Filter, rule("theirs"), PutMode::Upsert)
        .await
        .unwrap();
    assert_eq!(next_notice(&mut rx).await, Notice::RulesChanged);
    // An unchanged rule (create of an existing id) says nothing; a delete does.
    b.put_rule(RuleKind::Filter, rule("theirs"), PutMode::Create)
        .await
        .unwrap();
    b.delete_rule(RuleKind::Filter, "theirs".into())
        .await
        .unwrap();
    assert_eq!(next_notice(&mut rx).await, Notice::RulesChanged);
    // A batch of B's events arrives as id-ordered notices naming B; a duplicate is not news.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut e = ev("linear", Some(&format!("n{i}")));
            e.filtered = i % 7 == 0;
            let id = e.id;
            b.commit_event(e).await.map(|_| id)
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        b.commit_event(ev("linear", Some("n0"))).await.unwrap(),
        CommitOutcome::Duplicate {
            event_id: sent[0],
            filtered: true,
            routed: false
        }
    );
    let mut heard = Vec::new();
    while heard.len() < sent.len() {
        match next_notice(&mut rx).await {
            Notice::Events { node, ids } => {
                assert_eq!(Some(node), b.node_id());
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "id order");
                heard.extend(ids);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    heard.sort_unstable();
    sent.sort_unstable();
    assert_eq!(heard, sent);
    // Nothing else is pending: B's next change is the next notice.
    b.put_rule(RuleKind::Agent, rule("x"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(next_notice(&mut rx).await, Notice::RulesChanged);
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_an_erasure_on_one_node_is_heard_by_the_others() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(60_000).await;
    let b = c.node(60_000).await;
    let mut rx = a.listen().await.unwrap().expect("a cluster listens");
    // A owns a scheduled delivery of an event; B erases it.
    let mut e = ev("github", None);
    e.deliveries.push(delivery("x", DeliveryStatus::Pending));
    a.commit_event(e.clone()).await.unwrap();
    assert_eq!(b.erase_events(vec![e.id], 7).await.unwrap(), [e.id]);
    assert_eq!(
        next_notice(&mut rx).await,
        Notice::Erased { ids: vec![e.id] }
    );
    assert!(unfinished(a.as_ref()).await.is_empty());
    assert_eq!(a.get_event(e.id).await.unwrap().unwrap().erased_at, Some(7));
    // Another node's erased event is not streamed from there either.
    assert!(a.remote_events(vec![e.id]).await.unwrap().is_empty());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_remote_events_carry_what_streams_need() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(60_000).await;
    let b = c.node(60_000).await;
    let mut f = ev("github", None);
    f.filtered = true;
    let mut e = ev("github", None);
    let mut transformed = delivery("x", DeliveryStatus::Pending);
    transformed.body = Some(Bytes::from_static(b"{\"x\":1}"));
    e.deliveries = vec![
        delivery("x", DeliveryStatus::Pending),
        transformed,
        delivery("w", DeliveryStatus::Pending),
    ];
    e.streamed = vec![
        ("z".into(), None),
        ("y".into(), Some(Bytes::from_static(b"{\"y\":2}"))),
    ];
    b.commit_event(f.clone()).await.unwrap();
    b.commit_event(e.clone()).await.unwrap();
    let got = a
        .remote_events(vec![e.id, Uuid::now_v7(), f.id])
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "missing ids skipped");
    assert_eq!(got[0].id, f.id, "id order");
    assert!(got[0].filtered);
    assert!(got[0].routed.is_empty());
    assert_eq!(got[0].body.as_bytes(), &f.body[..]);
    assert_eq!(got[1].id, e.id);
    assert!(!got[1].filtered);
    assert_eq!(got[1].body.as_bytes(), &e.body[..]);
    assert_eq!(
        got[1].routed,
        vec![
            ("w".to_string(), None),
            ("x".to_string(), Some("{\"x\":1}".to_string())),
            ("y".to_string(), Some("{\"y\":2}".to_string())),
            ("z".to_string(), None),
        ]
    );
    assert!(a.remote_events(vec![]).await.unwrap().is_empty());
}

/// A lease request of `want` units of `key` under `strategy`, `limit` per `window` ms.
fn lease_of(
    key: &str,
    strategy: &'static str,
    (limit, window, burst): (u64, u64, u64),
    want: u64,
    lease_ms: u64,
    give_back: Option<LeaseReturn>,
) -> LeaseRequest {
    LeaseRequest {
        key: key.into(),
        strategy,
        limit,
        window_ms: window,
        burst,
        want,
        lease: Uuid::now_v7(),
        lease_ms,
        give_back,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rate_leases_never_grant_past_the_limit() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(60_000).await;
    let b = c.node(60_000).await;
    const HOUR: u64 = 3_600_000;
    // Two nodes asking at once for one key: never more than its limit in all.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let r = lease_of(
                "github:hot",
                "fixed_window",
                (25, HOUR, 25),
                2,
                60_000,
                None,
            );
            let id = r.lease;
            (id, s.acquire_rate_leases(vec![r]).await.unwrap()[0])
        }));
    }
    let mut grants = Vec::new();
    for t in tasks {
        grants.push(t.await.unwrap());
    }
    assert_eq!(grants.iter().map(|(_, g)| g.granted).sum::<u64>(), 25);
    assert!(grants.iter().all(|(_, g)| g.granted <= 2));
    // Given back with one of its two spent, a lease returns one unit.
    let (id, _) = grants.iter().find(|(_, g)| g.granted == 2).unwrap();
    let back = LeaseReturn { id: *id, spent: 1 };
    b.release_rate_leases(vec![back, back]).await.unwrap();
    let r = lease_of(
        "github:hot",
        "fixed_window",
        (25, HOUR, 25),
        5,
        60_000,
        None,
    );
    assert_eq!(a.acquire_rate_leases(vec![r]).await.unwrap()[0].granted, 1);

    // A node that dies holding a lease: once it expires, what was stored under it counts as
    // spent and the rest comes back.
    let limit = (10, HOUR, 10);
    let r = lease_of("github:dead", "fixed_window", limit, 4, 300, None);
    let dead = r.lease;
    assert_eq!(a.acquire_rate_leases(vec![r]).await.unwrap()[0].granted, 4);
    a.commit_event_spending(ev("github", None), Some(dead))
        .await
        .unwrap();
    let r = lease_of("github:dead", "fixed_window", limit, 10, 60_000, None);
    let alive = r.lease;
    let g = b.acquire_rate_leases(vec![r]).await.unwrap()[0];
    assert_eq!((g.granted, g.curr), (6, 10));
    tokio::time::sleep(Duration::from_millis(350)).await;
    // B gives back its own lease fully spent and gets the dead lease's 3 unspent units.
    let back = Some(LeaseReturn {
        id: alive,
        spent: 6,
    });
    let r = lease_of("github:dead", "fixed_window", limit, 10, 60_000, back);
    assert_eq!(b.acquire_rate_leases(vec![r]).await.unwrap()[0].granted, 3);
    // A changed limit starts the key afresh.
    let r = lease_of(
        "github:dead",
        "fixed_window",
        (20, HOUR, 20),
        20,
        60_000,
        None,
    );
    assert_eq!(b.acquire_rate_leases(vec![r]).await.unwrap()[0].granted, 20);

    // Token bucket, 10 per second, burst 4: leased tokens hold the capacity down until settled;
    // spent ones are then charged (and refill at the rate).
    let bucket = (10, 1000, 4);
    let r = lease_of("linear:org", "token_bucket", bucket, 3, 60_000, None);
    let first = r.lease;
    let g = a.acquire_rate_leases(vec![r]).await.unwrap()[0];
    assert_eq!((g.granted, g.outstanding), (3, 3));
    let r = lease_of("linear:org", "token_bucket", bucket, 3, 60_000, None);
    assert_eq!(b.acquire_rate_leases(vec![r]).await.unwrap()[0].granted, 1);
    let back = Some(LeaseReturn {
        id: first,
        spent: 3,
    });
    let r = lease_of("linear:org", "token_bucket", bucket, 3, 60_000, back);
    let g = a.acquire_rate_leases(vec![r]).await.unwrap()[0];
    // 4 − 1 (still leased by B) − 3 (spent, charged just now) = 0.
    assert_eq!((g.granted, g.outstanding), (0, 1));
    assert!(g.tat_ms >= g.now_ms + 250, "{g:?}");
    tokio::time::sleep(Duration::from_millis(320)).await;
    let r = lease_of("linear:org", "token_bucket", bucket, 3, 60_000, None);
    assert!(a.acquire_rate_leases(vec![r]).await.unwrap()[0].granted >= 3);

    // Sliding window, 10 per hour: the whole limit in a first window.
    let r = lease_of(
        "slack:t",
        "sliding_window",
        (10, HOUR, 10),
        50,
        60_000,
        None,
    );
    let g = a.acquire_rate_leases(vec![r]).await.unwrap()[0];
    assert_eq!((g.granted, g.prev, g.curr), (10, 0, 10));
    // Upkeep leaves live keys alone.
    a.rate_limit_upkeep().await.unwrap();
    let r = lease_of(
        "slack:t",
        "sliding_window",
        (10, HOUR, 10),
        50,
        60_000,
        None,
    );
    assert_eq!(b.acquire_rate_leases(vec![r]).await.unwrap()[0].granted, 0);
    // Several keys in one statement: each answered in the order asked, whatever the key order.
    let asks = vec![
        lease_of("z:1", "fixed_window", (5, HOUR, 5), 2, 60_000, None),
        lease_of("a:1", "fixed_window", (5, HOUR, 5), 9, 60_000, None),
        lease_of("slack:t", "sliding_window", (10, HOUR, 10), 1, 60_000, None),
    ];
    let got: Vec<u64> = a
        .acquire_rate_leases(asks)
        .await
        .unwrap()
        .iter()
        .map(|g| g.granted)
        .collect();
    assert_eq!(got, vec![2, 5, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_listener_reconnects_and_asks_for_a_reload() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let a = c.node(60_000).await;
    let b = c.node(60_000).await;
    let mut rx = a.listen().await.unwrap().expect("a cluster listens");
    // The server ends the LISTEN connection (a restart, a network cut, an admin).
    let (admin, conn) = crate::store::postgres::testing::connect(&c.url)
        .await
        .unwrap();
    tokio::spawn(conn);
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    // Notices may have been missed meanwhile: reload rules, claim what has no owner.
    assert_eq!(next_notice(&mut rx).await, Notice::RulesChanged);
    assert_eq!(next_notice(&mut rx).await, Notice::Wake);
    // And it listens again.
    b.put_rule(
        RuleKind::Route,
        StoredRule {
            id: "r".into(),
            body: "{}".into(),
        },
        PutMode::Create,
    )
    .await
    .unwrap();
    assert_eq!(next_notice(&mut rx).await, Notice::RulesChanged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_remote_events_open_sealed_bodies() {
    let Some(c) = Cluster::new().await else {
        return;
    };
    let cipher = Arc::new(Cipher::new(&[9u8; 32]));
    let sealed = |node: Arc<PgStore>| {
        let cipher = cipher.clone();
        async move {
            encrypted::EncryptedStore::open(node, cipher, true)
                .await
                .unwrap()
        }
    };
    let a = sealed(c.node(60_000).await).await;
    let b = sealed(c.node(60_000).await).await;
    let mut e = ev("github", None);
    let mut d = delivery("x", DeliveryStatus::Pending);
    d.body = Some(Bytes::from_static(b"{\"x\":1}"));
    e.deliveries.push(d);
    e.streamed
        .push(("y".into(), Some(Bytes::from_static(b"{\"y\":1}"))));
    b.commit_event(e.clone()).await.unwrap();
    let got = a.remote_events(vec![e.id]).await.unwrap();
    assert_eq!(got[0].body.as_bytes(), &e.body[..]);
    assert_eq!(
        got[0].routed,
        vec![
            ("x".to_string(), Some("{\"x\":1}".to_string())),
            ("y".to_string(), Some("{\"y\":1}".to_string())),
        ]
    );
    // Taken over by another node, a sealed delivery is opened too.
    b.release().await.unwrap();
    let taken = a.take_over(10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].body.as_deref(), Some("{\"x\":1}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_a_first_attempt_success_out_of_the_attempts_table() {
    let Some(cluster) = Cluster::new().await else {
        return;
    };
    let store = cluster.node(30_000).await;
    let ((ok, _), retried, failed) = first_success_rows(store.as_ref()).await;
    let (client, conn) = crate::store::postgres::testing::connect(&cluster.url)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows: Vec<(Uuid, i64)> = client
        .query(
            "SELECT delivery_id, attempt::int8 FROM attempts ORDER BY delivery_id, attempt",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut want = vec![(retried, 1), (retried, 2), (failed, 1)];
    want.sort();
    assert_eq!(rows, want, "no row for {ok}");
    let first: (Option<i64>, Option<i64>, Option<i32>) = client
        .query_one(
            "SELECT first_started_at, first_duration_ms, first_status_code
             FROM deliveries WHERE id = $1",
            &[&ok],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(first, (Some(1000), Some(7), Some(200)));
    store.close().await;
}
