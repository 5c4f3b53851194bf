//! Queue mode's store on both backends: accept with idempotency and quotas, claims in order (and
//! one at a time per target for ordered tenants), leases that expire into a second attempt, fenced
//! outcomes, expiry, cancellation, retry and purge.

use relay_store::{
    Cancelled, Enqueued, Finish, NewMessage, QueueQuota, QueueSettings, QueueState, Store,
    StoredResponse,
};
use testkit::PgCluster;

/// The same test on each backend: `$sqlite` on a SQLite file, `$postgres` on a throwaway
/// PostgreSQL, each running `$body(store)`.
macro_rules! on_both_backends {
    (#[$test:meta] $sqlite:ident, $postgres:ident => $body:ident) => {
        #[$test]
        async fn $sqlite() {
            let (_dir, store) = sqlite().await;
            $body(store).await;
        }

        #[$test]
        async fn $postgres() {
            let cluster = PgCluster::start();
            $body(Store::connect(&cluster.url()).await.unwrap()).await;
        }
    };
}

fn msg(id: &str, target: &str, key: Option<&str>, body: &[u8]) -> NewMessage {
    NewMessage {
        id: id.into(),
        tenant_id: "t1".into(),
        tenant: "acme".into(),
        target: target.into(),
        method: "POST".into(),
        path: format!("/orders/{id}?x=1"),
        headers: r#"[["content-type","text/plain"]]"#.into(),
        body: body.to_vec(),
        idempotency_key: key.map(str::to_string),
        ttl_ms: 60_000,
    }
}

fn new(e: Enqueued) -> relay_store::QueueMessage {
    match e {
        Enqueued::New(m) => m,
        other => panic!("expected a new message, got {other:?}"),
    }
}

fn response(body: &[u8]) -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: "[]".into(),
        body: body.to_vec(),
        truncated: false,
    }
}

async fn queue_rules(store: Store) {
    let none = QueueQuota::default();
    // Accepted and readable; the body is not part of the status.
    let a = new(store
        .enqueue(&msg("a", "app", Some("k1"), b"one"), none)
        .await
        .unwrap());
    assert_eq!(
        (a.state, a.attempts, a.body_bytes),
        (QueueState::Queued, 0, 3)
    );
    assert_eq!(a.body, None);
    // The same idempotency key: the same message, nothing new stored.
    match store
        .enqueue(&msg("a2", "app", Some("k1"), b"dup"), none)
        .await
        .unwrap()
    {
        Enqueued::Existing(m) => assert_eq!(m.id, "a"),
        other => panic!("{other:?}"),
    }
    assert!(store.message("a2").await.unwrap().is_none());
    new(store
        .enqueue(&msg("b", "app", None, b"two"), none)
        .await
        .unwrap());
    new(store
        .enqueue(&msg("c", "echo", None, b"three"), none)
        .await
        .unwrap());

    // Quotas count waiting messages and bytes.
    let q = QueueQuota {
        max_messages: Some(3),
        max_bytes: None,
    };
    assert_eq!(
        store.enqueue(&msg("d", "app", None, b""), q).await.unwrap(),
        Enqueued::TooManyMessages
    );
    let q = QueueQuota {
        max_messages: None,
        max_bytes: Some(12),
    };
    assert_eq!(
        store
            .enqueue(&msg("d", "app", None, b"xx"), q)
            .await
            .unwrap(),
        Enqueued::TooManyBytes
    );

    // Parallel (the default): claims in acceptance order, each claim an attempt, with its body.
    let claimed = store.claim("t1", "n1", 60_000, 2).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(claimed[0].body.as_deref(), Some(&b"one"[..]));
    assert_eq!(claimed[0].attempts, 1);
    // Claimed messages are not claimed again while leased.
    let next = store.claim("t1", "n2", 60_000, 10).await.unwrap();
    assert_eq!(
        next.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert!(store
        .claim("t1", "n2", 60_000, 10)
        .await
        .unwrap()
        .is_empty());

    // Outcomes: delivered keeps the response; retry waits; a stale attempt changes nothing.
    assert!(store
        .finish_attempt("a", 1, &Finish::Delivered(response(b"ok-a")))
        .await
        .unwrap());
    assert!(!store
        .finish_attempt("a", 1, &Finish::Delivered(response(b"again")))
        .await
        .unwrap());
    let a = store.message("a").await.unwrap().unwrap();
    assert_eq!(
        (a.state, a.response_status),
        (QueueState::Delivered, Some(200))
    );
    assert_eq!(
        store.message_response("a").await.unwrap().unwrap().body,
        b"ok-a"
    );
    let later = relay_store::now_ms() + 60_000;
    assert!(store
        .finish_attempt(
            "b",
            1,
            &Finish::Retry {
                error: "503 from the backend".into(),
                at: later
            }
        )
        .await
        .unwrap());
    let b = store.message("b").await.unwrap().unwrap();
    assert_eq!(
        (b.state, b.last_error.as_deref()),
        (QueueState::Queued, Some("503 from the backend"))
    );
    assert!(
        store
            .claim("t1", "n1", 60_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "b is not due yet"
    );
    assert!(store
        .finish_attempt(
            "c",
            1,
            &Finish::Failed {
                error: "400".into(),
                response: Some(response(b"bad"))
            }
        )
        .await
        .unwrap());
    assert_eq!(
        store.message("c").await.unwrap().unwrap().state,
        QueueState::Failed
    );
    // A failed message keeps its request: an admin may put it back, due now.
    assert!(store.requeue_message("c", 60_000).await.unwrap());
    let c = store.claim("t1", "n1", 60_000, 10).await.unwrap();
    assert_eq!(
        (c[0].id.as_str(), c[0].body.as_deref()),
        ("c", Some(&b"three"[..]))
    );
    assert!(store
        .finish_attempt(
            "c",
            2,
            &Finish::Failed {
                error: "400".into(),
                response: None
            }
        )
        .await
        .unwrap());

    // A lease that runs out (the node died): claimed again, as attempt 2; the first node's late
    // outcome is refused.
    new(store
        .enqueue(&msg("e", "app", None, b"five"), none)
        .await
        .unwrap());
    let e = store.claim("t1", "n1", -1, 10).await.unwrap();
    assert_eq!(e.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["e"]);
    assert!(store
        .due_tenants()
        .await
        .unwrap()
        .contains(&"t1".to_string()));
    let again = store.claim("t1", "n2", 60_000, 10).await.unwrap();
    assert_eq!((again[0].id.as_str(), again[0].attempts), ("e", 2));
    assert!(!store
        .finish_attempt("e", 1, &Finish::Delivered(response(b"late")))
        .await
        .unwrap());
    assert!(store
        .finish_attempt("e", 2, &Finish::Delivered(response(b"ok-e")))
        .await
        .unwrap());

    // Cancel: only while waiting.
    new(store
        .enqueue(&msg("f", "app", None, b"six"), none)
        .await
        .unwrap());
    assert_eq!(store.cancel_message("f").await.unwrap(), Cancelled::Done);
    assert_eq!(
        store.cancel_message("a").await.unwrap(),
        Cancelled::Too(QueueState::Delivered)
    );
    assert_eq!(
        store.cancel_message("nope").await.unwrap(),
        Cancelled::NotFound
    );

    // Expiry: a message whose time to live ran out is never claimed; it becomes expired, and an
    // admin may put it back.
    let mut short = msg("g", "app", Some("k-g"), b"seven");
    short.ttl_ms = -1;
    new(store.enqueue(&short, none).await.unwrap());
    assert!(store
        .claim("t1", "n1", 60_000, 10)
        .await
        .unwrap()
        .iter()
        .all(|m| m.id != "g"));
    assert!(store.expire_messages().await.unwrap() >= 1);
    assert_eq!(
        store.message("g").await.unwrap().unwrap().state,
        QueueState::Expired
    );
    // An expired message's key may be used again.
    new(store
        .enqueue(&msg("g2", "app", Some("k-g"), b"7"), none)
        .await
        .unwrap());

    // Counts by state.
    let counts = store.queue_counts(Some("t1")).await.unwrap();
    assert_eq!(counts.by_state.get(&QueueState::Delivered), Some(&2));
    assert_eq!(counts.by_state.get(&QueueState::Cancelled), Some(&1));
    assert_eq!(
        store
            .messages("t1", Some(QueueState::Failed), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Purge: final messages lose bodies and responses, keeping a tombstone.
    assert!(store.purge_messages(-1).await.unwrap() >= 4);
    let a = store.message("a").await.unwrap().unwrap();
    assert!(a.purged);
    assert!(store.message_response("a").await.unwrap().is_none());
}

async fn ordered_tenants_deliver_one_at_a_time_per_target(store: Store) {
    store
        .set_queue_settings(
            "t1",
            &QueueSettings {
                ordered: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(store.queue_settings("t1").await.unwrap().ordered);
    let none = QueueQuota::default();
    for (id, target) in [("1", "app"), ("2", "app"), ("3", "echo"), ("4", "app")] {
        new(store
            .enqueue(&msg(id, target, None, b"x"), none)
            .await
            .unwrap());
    }
    // The head of each target only.
    let first = store.claim("t1", "n1", 60_000, 10).await.unwrap();
    assert_eq!(
        first.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["1", "3"]
    );
    assert!(store
        .claim("t1", "n1", 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    // A retry keeps its place: the next one waits for it.
    let now = relay_store::now_ms();
    store
        .finish_attempt(
            "1",
            1,
            &Finish::Retry {
                error: "e".into(),
                at: now,
            },
        )
        .await
        .unwrap();
    let again = store.claim("t1", "n1", 60_000, 10).await.unwrap();
    assert_eq!(
        again.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["1"]
    );
    store
        .finish_attempt("1", 2, &Finish::Delivered(response(b"1")))
        .await
        .unwrap();
    let next = store.claim("t1", "n1", 60_000, 10).await.unwrap();
    assert_eq!(
        next.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["2"]
    );
}

/// An ordered tenant's targets do not hold each other back: the head of a target behind another
/// target's long backlog goes at once, and so does its next message while the other target's
/// head waits for a retry.
async fn ordered_targets_do_not_wait_for_each_other(store: Store) {
    let ordered = QueueSettings {
        ordered: true,
        ..Default::default()
    };
    store.set_queue_settings("t1", &ordered).await.unwrap();
    let none = QueueQuota::default();
    for i in 0..300 {
        new(store
            .enqueue(&msg(&format!("a{i:03}"), "app", None, b"x"), none)
            .await
            .unwrap());
    }
    for id in ["e1", "e2"] {
        new(store
            .enqueue(&msg(id, "echo", None, b"x"), none)
            .await
            .unwrap());
    }
    let first = store.claim("t1", "n1", 60_000, 10).await.unwrap();
    assert_eq!(ids(first), ["a000", "e1"]);
    let later = Finish::Retry {
        error: "backend down".into(),
        at: i64::MAX / 2,
    };
    assert!(store.finish_attempt("a000", 1, &later).await.unwrap());
    let done = Finish::Delivered(response(b"ok"));
    assert!(store.finish_attempt("e1", 1, &done).await.unwrap());
    let next = store.claim("t1", "n1", 60_000, 10).await.unwrap();
    assert_eq!(ids(next), ["e2"]);
}

/// Makes tenant `t1` ordered.
async fn make_ordered(store: &Store) {
    let ordered = QueueSettings {
        ordered: true,
        ..Default::default()
    };
    store.set_queue_settings("t1", &ordered).await.unwrap();
}

/// The ids of `claimed`, in order.
fn ids(claimed: Vec<relay_store::QueueMessage>) -> Vec<String> {
    claimed.into_iter().map(|m| m.id).collect()
}

/// A deep ordered backlog drains in order, one message per target per claim, whatever the
/// depth; a head whose lease ran out (its node died) is claimed again before anything behind it.
async fn ordered_backlogs_drain_head_by_head(store: Store) {
    make_ordered(&store).await;
    let none = QueueQuota::default();
    // Interleaved: 400 messages of `app`, 40 each of `b` and `c`.
    for i in 0..400 {
        new(store
            .enqueue(&msg(&format!("app-{i:03}"), "app", None, b"x"), none)
            .await
            .unwrap());
        if i % 10 == 0 {
            for t in ["b", "c"] {
                new(store
                    .enqueue(&msg(&format!("{t}-{:03}", i / 10), t, None, b"x"), none)
                    .await
                    .unwrap());
            }
        }
    }
    // The first head's lease runs out: the next claim takes it again, and nothing behind it.
    let first = store.claim("t1", "n1", 1, 10).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["app-000", "b-000", "c-000"]);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let again = store.claim("t1", "n1", 60_000, 10).await.unwrap();
    let ids: Vec<(&str, i64)> = again.iter().map(|m| (m.id.as_str(), m.attempts)).collect();
    assert_eq!(ids, [("app-000", 2), ("b-000", 2), ("c-000", 2)]);
    let mut attempts: std::collections::HashMap<String, i64> =
        again.iter().map(|m| (m.id.clone(), m.attempts)).collect();
    // Then each claim brings each target's next message, in order, until all are delivered.
    let mut delivered: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut claims = 0;
    loop {
        for (id, attempt) in attempts.drain() {
            let done = Finish::Delivered(response(b"ok"));
            assert!(store.finish_attempt(&id, attempt, &done).await.unwrap());
            let target = id.split('-').next().unwrap().to_string();
            delivered.entry(target).or_default().push(id);
        }
        let next = store.claim("t1", "n1", 60_000, 10).await.unwrap();
        if next.is_empty() {
            break;
        }
        claims += 1;
        let targets: std::collections::HashSet<&str> =
            next.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets.len(), next.len(), "one per target: {targets:?}");
        attempts = next.iter().map(|m| (m.id.clone(), m.attempts)).collect();
    }
    assert_eq!(claims, 399);
    for (target, n) in [("app", 400), ("b", 40), ("c", 40)] {
        let want: Vec<String> = (0..n).map(|i| format!("{target}-{i:03}")).collect();
        assert_eq!(delivered[target], want, "{target}");
    }
}

/// An ordered target's head that ends (failed, cancelled, expired) lets the next message go; one
/// whose time to live ran out but that the sweep has not marked yet holds back its own target
/// only.
async fn ordered_heads_that_end_let_the_next_go(store: Store) {
    make_ordered(&store).await;
    let none = QueueQuota::default();
    let mut stale = msg("x1", "expiring", None, b"x");
    stale.ttl_ms = 1;
    new(store.enqueue(&stale, none).await.unwrap());
    for (id, target) in [
        ("x2", "expiring"),
        ("f1", "failing"),
        ("f2", "failing"),
        ("c1", "cancelled"),
        ("c2", "cancelled"),
    ] {
        new(store
            .enqueue(&msg(id, target, None, b"x"), none)
            .await
            .unwrap());
    }
    assert!(matches!(
        store.cancel_message("c1").await.unwrap(),
        relay_store::Cancelled::Done
    ));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // x1 expired but is not swept yet: it holds x2 back, and nothing else.
    let first = store.claim("t1", "n1", 60_000, 10).await.unwrap();
    assert_eq!(ids(first), ["f1", "c2"]);
    let failed = Finish::Failed {
        error: "400".into(),
        response: None,
    };
    assert!(store.finish_attempt("f1", 1, &failed).await.unwrap());
    assert_eq!(
        ids(store.claim("t1", "n1", 60_000, 10).await.unwrap()),
        ["f2"]
    );
    assert_eq!(store.expire_messages().await.unwrap(), 1);
    assert_eq!(
        ids(store.claim("t1", "n1", 60_000, 10).await.unwrap()),
        ["x2"]
    );
}

/// A failed message put back by an admin ("retry now") keeps its place ahead of the rest of its
/// target, but waits for the message of its target already under way: an ordered target never
/// has two deliveries in flight.
async fn ordered_retry_now_waits_for_the_delivery_in_flight(store: Store) {
    make_ordered(&store).await;
    let none = QueueQuota::default();
    for id in ["a1", "a2", "a3"] {
        new(store
            .enqueue(&msg(id, "app", None, b"x"), none)
            .await
            .unwrap());
    }
    assert_eq!(
        ids(store.claim("t1", "n1", 60_000, 10).await.unwrap()),
        ["a1"]
    );
    let failed = Finish::Failed {
        error: "400".into(),
        response: None,
    };
    assert!(store.finish_attempt("a1", 1, &failed).await.unwrap());
    assert_eq!(
        ids(store.claim("t1", "n1", 60_000, 10).await.unwrap()),
        ["a2"]
    );
    assert!(store.requeue_message("a1", 60_000).await.unwrap());
    assert!(store
        .claim("t1", "n1", 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    let done = Finish::Delivered(response(b"ok"));
    assert!(store.finish_attempt("a2", 1, &done).await.unwrap());
    assert_eq!(
        ids(store.claim("t1", "n1", 60_000, 10).await.unwrap()),
        ["a1"]
    );
    assert!(store.finish_attempt("a1", 2, &done).await.unwrap());
    assert_eq!(
        ids(store.claim("t1", "n1", 60_000, 10).await.unwrap()),
        ["a3"]
    );
}

/// Two deliveries of one target in flight (left by an older build, or by a tenant switched to
/// ordered while they ran) whose leases run out come back one at a time, oldest first.
async fn ordered_lapsed_deliveries_come_back_one_at_a_time(store: Store) {
    let none = QueueQuota::default();
    for id in ["a1", "a2"] {
        new(store
            .enqueue(&msg(id, "app", None, b"x"), none)
            .await
            .unwrap());
    }
    let ids = |claimed: Vec<relay_store::QueueMessage>| {
        claimed
            .into_iter()
            .map(|m| (m.id, m.attempts))
            .collect::<Vec<_>>()
    };
    // Parallel: both go at once, with a lease that runs out at once.
    assert_eq!(
        ids(store.claim("t1", "n1", 1, 10).await.unwrap()),
        [("a1".to_string(), 1), ("a2".to_string(), 1)]
    );
    make_ordered(&store).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        ids(store.claim("t1", "n1", 60_000, 10).await.unwrap()),
        [("a1".to_string(), 2)]
    );
    let done = Finish::Delivered(response(b"ok"));
    assert!(store.finish_attempt("a1", 2, &done).await.unwrap());
    assert_eq!(
        ids(store.claim("t1", "n1", 60_000, 10).await.unwrap()),
        [("a2".to_string(), 2)]
    );
}

on_both_backends!(
    #[tokio::test]
    ordered_lapsed_deliveries_on_sqlite,
    ordered_lapsed_deliveries_on_postgres => ordered_lapsed_deliveries_come_back_one_at_a_time
);

on_both_backends!(
    #[tokio::test]
    ordered_retry_now_on_sqlite,
    ordered_retry_now_on_postgres => ordered_retry_now_waits_for_the_delivery_in_flight
);

on_both_backends!(
    #[tokio::test]
    ordered_heads_that_end_on_sqlite,
    ordered_heads_that_end_on_postgres => ordered_heads_that_end_let_the_next_go
);

on_both_backends!(
    #[tokio::test]
    ordered_backlogs_on_sqlite,
    ordered_backlogs_on_postgres => ordered_backlogs_drain_head_by_head
);

on_both_backends!(
    #[tokio::test]
    ordered_targets_on_sqlite,
    ordered_targets_on_postgres => ordered_targets_do_not_wait_for_each_other
);

async fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let store = Store::connect(&url).await.unwrap();
    (dir, store)
}

on_both_backends!(
    #[tokio::test]
    queue_rules_on_sqlite,
    queue_rules_on_postgres => queue_rules
);

on_both_backends!(
    #[tokio::test]
    ordered_on_sqlite,
    ordered_on_postgres => ordered_tenants_deliver_one_at_a_time_per_target
);

/// Accepts that arrive together share INSERTs (group commit): every one is stored once, with its
/// own body, and answered with its own row as stored; a large body goes on its own beside them.
async fn concurrent_accepts_and_outcomes_are_each_stored_once(store: Store) {
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let store = store.clone();
        let body = if i == 7 {
            vec![b'L'; 300 * 1024]
        } else {
            format!("body {i} ").repeat(i % 50 + 1).into_bytes()
        };
        tasks.push(tokio::spawn(async move {
            let m = msg(&format!("m{i:03}"), "app", None, &body);
            let stored = new(store.enqueue(&m, QueueQuota::default()).await.unwrap());
            (m, stored)
        }));
    }
    let mut seqs = std::collections::HashSet::new();
    for t in tasks {
        let (sent, stored) = t.await.unwrap();
        assert_eq!(stored.id, sent.id);
        assert_eq!(stored.body_bytes, sent.body.len() as i64);
        assert_eq!(stored.path, sent.path);
        assert!(seqs.insert(stored.seq), "one row per accept");
        // What the accept answered with is the row as stored (a group insert returns only the
        // sequence number and builds the rest).
        assert_eq!(
            Some(&stored),
            store.message(&stored.id).await.unwrap().as_ref()
        );
    }
    let claimed = store.claim("t1", "n1", 60_000, 1000).await.unwrap();
    assert_eq!(claimed.len(), 200);
    for m in claimed {
        let i: usize = m.id[1..].parse().unwrap();
        let expected = if i == 7 {
            vec![b'L'; 300 * 1024]
        } else {
            format!("body {i} ").repeat(i % 50 + 1).into_bytes()
        };
        assert_eq!(m.body.as_deref(), Some(&expected[..]), "{}", m.id);
    }
    // Outcomes that end together are written together: each caller still learns whether its
    // attempt was the current one, and each row gets its own outcome.
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (attempt, how) = match i % 4 {
                0 => (1, Finish::Delivered(response(format!("r{i}").as_bytes()))),
                1 => (
                    1,
                    Finish::Failed {
                        error: format!("e{i}"),
                        response: Some(StoredResponse {
                            status: 422,
                            ..response(b"no")
                        }),
                    },
                ),
                2 => (
                    1,
                    Finish::Failed {
                        error: format!("e{i}"),
                        response: None,
                    },
                ),
                // Not the current attempt (another node's, whose lease ran out): no effect.
                _ => (2, Finish::Delivered(response(b"late"))),
            };
            let current = store
                .finish_attempt(&format!("m{i:03}"), attempt, &how)
                .await
                .unwrap();
            (i, current)
        }));
    }
    for t in tasks {
        let (i, current) = t.await.unwrap();
        assert_eq!(current, i % 4 != 3, "m{i:03}");
    }
    for i in 0..200usize {
        let id = format!("m{i:03}");
        let m = store.message(&id).await.unwrap().unwrap();
        let r = store.message_response(&id).await.unwrap();
        let error = format!("e{i}");
        match i % 4 {
            0 => {
                assert_eq!((m.state, m.last_error), (QueueState::Delivered, None));
                assert_eq!(r.map(|r| r.body), Some(format!("r{i}").into_bytes()));
            }
            1 => {
                assert_eq!(m.state, QueueState::Failed, "{id}");
                assert_eq!(m.last_error.as_deref(), Some(error.as_str()));
                assert_eq!(r.map(|r| (r.status, r.body)), Some((422, b"no".to_vec())));
            }
            2 => {
                assert_eq!(m.state, QueueState::Failed, "{id}");
                assert_eq!(m.last_error.as_deref(), Some(error.as_str()));
                assert_eq!(r, None);
            }
            _ => {
                assert_eq!(m.state, QueueState::Delivering, "{id}");
                assert_eq!((m.finished_at, r), (None, None));
            }
        }
        assert_eq!(m.finished_at.is_some(), i % 4 != 3, "{id}");
    }
}

/// The tenants with messages due: waiting and due, or leased with the lease run out; not those
/// whose messages all wait for a retry, are leased, or are finished.
async fn due_tenants_are_those_with_work(store: Store) {
    let none = QueueQuota::default();
    let to = |tenant: &str, id: &str| NewMessage {
        tenant_id: tenant.into(),
        ..msg(id, "app", None, b"x")
    };
    for (tenant, id) in [
        ("t1", "a"),
        ("t2", "b"),
        ("t3", "c"),
        ("t4", "d"),
        ("t5", "e"),
    ] {
        new(store.enqueue(&to(tenant, id), none).await.unwrap());
    }
    // A second message of t1 and another tenant between the others in the index's order.
    new(store.enqueue(&to("t1", "a2"), none).await.unwrap());
    new(store.enqueue(&to("t0", "z"), none).await.unwrap());
    assert_eq!(store.cancel_message("z").await.unwrap(), Cancelled::Done);
    assert_eq!(store.claim("t2", "n1", 60_000, 10).await.unwrap().len(), 1);
    assert_eq!(store.claim("t3", "n1", -1, 10).await.unwrap().len(), 1);
    assert_eq!(store.claim("t4", "n1", 60_000, 10).await.unwrap().len(), 1);
    let later = Finish::Retry {
        error: "no connector".into(),
        at: i64::MAX / 2,
    };
    assert!(store.finish_attempt("d", 1, &later).await.unwrap());
    assert_eq!(store.claim("t5", "n1", 60_000, 10).await.unwrap().len(), 1);
    let done = Finish::Delivered(response(b"ok"));
    assert!(store.finish_attempt("e", 1, &done).await.unwrap());
    let mut due = store.due_tenants().await.unwrap();
    due.sort();
    assert_eq!(due, ["t1", "t3"]);
    // With nothing due any more (only finished, retried and leased messages), no tenant.
    for id in ["a", "a2"] {
        assert_eq!(store.cancel_message(id).await.unwrap(), Cancelled::Done);
    }
    assert_eq!(store.claim("t3", "n1", 60_000, 10).await.unwrap().len(), 1);
    assert!(store.due_tenants().await.unwrap().is_empty());
}

on_both_backends!(
    #[tokio::test]
    due_tenants_on_sqlite,
    due_tenants_on_postgres => due_tenants_are_those_with_work
);

on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    concurrent_accepts_and_outcomes_on_sqlite,
    concurrent_accepts_and_outcomes_on_postgres => concurrent_accepts_and_outcomes_are_each_stored_once
);
