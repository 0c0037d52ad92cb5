//! The etcd backend against a real etcd (Debian `etcd-server`) on loopback: the store contract
//! as it holds for a shared store (revisions increase with gaps; a batch is one revision),
//! compaction, an etcd outage, a store cut off from etcd across a compaction, and the leader
//! lease.

mod common;

use common::{obj, runtime, svc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_store::{
    EtcdOptions, EtcdStore, Event, EventType, Key, Precondition, Store, StoreError, Watch,
    WatchEnd, Write,
};
use strait_testsupport::{Etcd, Relay};

fn connect(etcd: &Etcd, prefix: &str) -> Arc<dyn Store> {
    connect_to(&etcd.endpoint(), prefix)
}

fn connect_to(endpoint: &str, prefix: &str) -> Arc<dyn Store> {
    let mut opts = EtcdOptions::from_url(&format!("etcd://{endpoint}")).unwrap();
    opts.prefix = prefix.into();
    Arc::new(EtcdStore::connect(&opts).unwrap())
}

/// Events until `n` have arrived (or 5 s pass).
fn take(rt: &tokio::runtime::Runtime, watch: &mut Watch, n: usize) -> Vec<Event> {
    rt.block_on(async {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
                Ok(Some(e)) => got.push(e),
                Ok(None) => panic!("the watch ended: {:?}", watch.ended()),
                Err(_) => panic!("only {} of {n} events in 5 s: {got:?}", got.len()),
            }
        }
        got
    })
}

/// Nothing more arrives within 300 ms.
fn quiet(rt: &tokio::runtime::Runtime, watch: &mut Watch) {
    rt.block_on(async {
        if let Ok(e) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
            panic!("unexpected event {e:?}");
        }
    })
}

#[test]
fn contract() {
    let etcd = Etcd::start();
    let rt = runtime();
    let s = connect(&etcd, "/t1");
    // Another store's writes under another prefix use etcd revisions too: the gaps.
    let other = connect(&etcd, "/other");
    let key = svc("default", "web");
    assert_eq!(s.get(&key).unwrap(), None);
    let start = s.revision();
    let mut all = s.watch(None, None, start).unwrap();

    let created = s
        .put(&key, obj("web", 1), Precondition::MustNotExist)
        .unwrap();
    assert!(created.revision > start);
    assert_eq!(
        created.value["metadata"]["resourceVersion"],
        created.revision.to_string()
    );
    assert_eq!(s.get(&key).unwrap(), Some(created.clone()));
    other
        .put(&key, obj("elsewhere", 0), Precondition::None)
        .unwrap();
    let err = s
        .put(&key, obj("web", 2), Precondition::MustNotExist)
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    let err = s
        .put(
            &key,
            obj("web", 2),
            Precondition::Revision(created.revision + 100),
        )
        .unwrap_err();
    match err {
        StoreError::Conflict {
            expected, actual, ..
        } => {
            assert_eq!(
                (expected, actual),
                (created.revision + 100, created.revision)
            )
        }
        other => panic!("expected a conflict, got {other}"),
    }
    let updated = s
        .put(
            &key,
            obj("web", 2),
            Precondition::Revision(created.revision),
        )
        .unwrap();
    assert!(
        updated.revision > created.revision + 1,
        "the other prefix's write is a gap"
    );
    assert!(matches!(
        s.put(
            &svc("default", "nope"),
            obj("x", 0),
            Precondition::Revision(1)
        ),
        Err(StoreError::NotFound { .. })
    ));

    // Events: Added, Modified, Deleted (with the last value and the delete's revision).
    let deleted = s
        .delete(&key, Precondition::Revision(updated.revision))
        .unwrap();
    assert_eq!(deleted.value["spec"]["n"], 2);
    assert!(deleted.revision > updated.revision);
    assert!(matches!(
        s.delete(&key, Precondition::None),
        Err(StoreError::NotFound { .. })
    ));
    let events = take(&rt, &mut all, 3);
    let types: Vec<_> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [EventType::Added, EventType::Modified, EventType::Deleted]
    );
    assert_eq!(events[0].object, created);
    assert_eq!(events[1].object, updated);
    assert_eq!(events[2].object, deleted);
    quiet(&rt, &mut all);

    // Lists: one kind (not a kind it is a prefix of), sorted by (namespace, name).
    for (ns, name) in [("b", "z"), ("a-b", "y"), ("a", "y"), ("a", "x")] {
        s.put(&svc(ns, name), obj(name, 0), Precondition::None)
            .unwrap();
    }
    s.put(
        &Key::new("ServiceEntry", "a", "se"),
        obj("se", 0),
        Precondition::None,
    )
    .unwrap();
    s.put(
        &Key::new("Servic", "a", "short"),
        obj("s", 0),
        Precondition::None,
    )
    .unwrap();
    let last = s
        .put(
            &Key::new("Namespace", "", "a"),
            obj("a", 0),
            Precondition::None,
        )
        .unwrap();
    let names = |kind: &str, ns: Option<&str>| -> (Vec<String>, u64) {
        let (list, rev) = s.list(kind, ns).unwrap();
        (
            list.iter()
                .map(|o| format!("{}/{}", o.key.namespace, o.key.name))
                .collect(),
            rev,
        )
    };
    let (services, rev) = names("Service", None);
    assert_eq!(services, ["a/x", "a/y", "a-b/y", "b/z"]);
    assert!(rev >= last.revision);
    assert_eq!(names("Service", Some("a")).0, ["a/x", "a/y"]);
    assert_eq!(names("Namespace", Some("")).0, ["/a"]);
    assert_eq!(
        names("networking.istio.io/VirtualService", None).0,
        Vec::<String>::new()
    );

    // A filtered watch from the middle of the history.
    let mut in_a = s
        .watch(Some("Service"), Some("a"), deleted.revision)
        .unwrap();
    let got = take(&rt, &mut in_a, 2);
    assert_eq!(
        got.iter()
            .map(|e| e.object.key.name.as_str())
            .collect::<Vec<_>>(),
        ["y", "x"]
    );
    quiet(&rt, &mut in_a);
    assert!(in_a.revision() >= got[1].object.revision);

    // A batch is one transaction, one revision; it may write a key twice.
    let batch = s
        .write_batch(vec![
            Write::Put {
                key: svc("batch", "one"),
                value: obj("one", 1),
                pre: Precondition::MustNotExist,
            },
            Write::Put {
                key: svc("batch", "one"),
                value: obj("one", 2),
                pre: Precondition::None,
            },
            Write::Delete {
                key: svc("a", "x"),
                pre: Precondition::None,
            },
        ])
        .unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch.iter().all(|o| o.revision == batch[0].revision));
    assert_eq!(
        s.get(&svc("batch", "one")).unwrap().unwrap().value["spec"]["n"],
        2
    );
    assert_eq!(s.get(&svc("a", "x")).unwrap(), None);
    // A failing batch writes nothing and names the failing write.
    let before = s.list("Service", None).unwrap().0;
    let err = s
        .write_batch(vec![
            Write::Put {
                key: svc("batch", "two"),
                value: obj("two", 1),
                pre: Precondition::None,
            },
            Write::Put {
                key: svc("batch", "one"),
                value: obj("one", 3),
                pre: Precondition::MustNotExist,
            },
        ])
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::InBatch { index: 1, source, .. } if matches!(**source, StoreError::AlreadyExists { .. })),
        "{err}"
    );
    assert_eq!(s.list("Service", None).unwrap().0, before);

    // A second store on the same prefix (another control plane) sees the same objects.
    let replica = connect(&etcd, "/t1");
    assert_eq!(replica.list("Service", None).unwrap().0, before);
}

#[test]
fn compaction_outage_and_leader() {
    let mut etcd = Etcd::start();
    let rt = runtime();
    let s = connect(&etcd, "/t2");
    let key = svc("ns", "o");
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(
            s.put(&key, obj("o", i), Precondition::None)
                .unwrap()
                .revision,
        );
    }
    let mut live = s.watch(None, None, revs[9]).unwrap();
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .unwrap();
        client
            .compact(
                revs[5] as i64,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .unwrap();
    });
    // A watch from before the compaction: the client must list again.
    let err = s.watch(None, None, revs[2]).unwrap_err();
    match &err {
        StoreError::Compacted { oldest } => assert_eq!(*oldest, revs[5] - 1),
        other => panic!("expected Compacted, got {other}"),
    }
    assert!(err.to_string().contains("list again"), "{err}");
    let mut from_oldest = s.watch(None, None, revs[5] - 1).unwrap();
    assert_eq!(take(&rt, &mut from_oldest, 5)[0].object.revision, revs[5]);

    // etcd down: reads and writes fail, clearly and in bounded time.
    etcd.stop();
    let t = Instant::now();
    let err = s
        .put(&svc("ns", "down"), obj("down", 0), Precondition::None)
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("etcd"), "{err}");
    assert!(s.get(&key).is_err());
    // Back: the open watch goes on from where it was; nothing acknowledged is lost.
    etcd.start_again();
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        match s.put(&svc("ns", "back"), obj("back", 0), Precondition::None) {
            Ok(o) => break o,
            Err(e) => assert!(Instant::now() < deadline, "etcd did not come back: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s.get(&key).unwrap().unwrap().revision, revs[9]);
    let got = take(&rt, &mut live, 1);
    assert_eq!(got[0].object, after);
    assert!(live.ended().is_none());

    // The leader lease: exactly one of two stores holds it; when it goes, the other takes it.
    let a = EtcdStore::connect(&EtcdOptions {
        prefix: "/t3".into(),
        ..EtcdOptions::from_url(&format!("etcd://{}", etcd.endpoint())).unwrap()
    })
    .unwrap();
    let b = connect(&etcd, "/t3");
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(12);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("one store becomes leader", &|| {
        a.is_leader() || b.is_leader()
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(a.is_leader() != b.is_leader(), "exactly one leader");
    if a.is_leader() {
        drop(a);
        wait("the other store takes over", &|| b.is_leader());
    } else {
        let b_was = b;
        drop(b_was);
        wait("the other store takes over", &|| a.is_leader());
    }
    drop(s);
    rt.block_on(async {
        assert!(live.next().await.is_none());
        assert!(matches!(live.ended(), Some(WatchEnd::StoreClosed)));
    });
}

/// A store cut off from etcd (its connections closed, new ones refused) while another writes
/// and etcd compacts: its writes fail clearly meanwhile, and its open watch, which reconnects
/// from its last revision when the connection is back, finds that revision compacted and ends
/// with `FellBehind` (its client lists again) rather than skipping the compacted events.
#[test]
fn a_watch_cut_off_across_a_compaction_falls_behind() {
    let etcd = Etcd::start();
    let rt = runtime();
    let relay = Relay::start(etcd.endpoint().parse().unwrap());
    let cut_off = connect_to(&relay.addr().to_string(), "/t4");
    let other = connect(&etcd, "/t4");
    let key = svc("ns", "o");
    let first = other.put(&key, obj("o", 0), Precondition::None).unwrap();
    let mut watch = cut_off.watch(None, None, first.revision).unwrap();
    let second = other.put(&key, obj("o", 1), Precondition::None).unwrap();
    assert_eq!(take(&rt, &mut watch, 1)[0].object, second);

    relay.cut();
    let t = Instant::now();
    let err = cut_off
        .put(&svc("ns", "cut"), obj("cut", 0), Precondition::None)
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("etcd"), "{err}");
    // Two writes the cut-off watch misses, then their history is compacted away.
    other.put(&key, obj("o", 2), Precondition::None).unwrap();
    other.delete(&key, Precondition::None).unwrap();
    let compacted = etcd.compact();
    relay.restore();

    let next =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(15), watch.next()).await });
    match next {
        Ok(None) => {}
        Ok(Some(e)) => panic!("the watch skipped the compacted events to {e:?}"),
        Err(_) => panic!("the watch did not end within 15 s of reconnecting"),
    }
    match watch.ended() {
        Some(WatchEnd::FellBehind { oldest }) => assert_eq!(*oldest, compacted - 1),
        other => panic!("expected FellBehind, got {other:?}"),
    }
    assert!(
        relay.refused() > 0,
        "the store tried to reconnect meanwhile"
    );
    // Listing again gives the current state: the deleted object is gone; writes work again.
    assert_eq!(cut_off.list("Service", None).unwrap().0, vec![]);
    assert_eq!(cut_off.get(&svc("ns", "cut")).unwrap(), None);
    cut_off
        .put(&svc("ns", "back"), obj("back", 0), Precondition::None)
        .unwrap();
}
