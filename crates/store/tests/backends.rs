//! The store's contract, run against both backends.

mod common;

use common::{obj, runtime, svc};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_store::{
    Event, EventType, FileStore, FileStoreOptions, Key, MemoryStore, Precondition, Store,
    StoreError, WatchEnd,
};
use tempfile::TempDir;

/// A store under test, with the directory that holds it (file backend).
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
}

type Make = fn(history: usize) -> Fixture;

fn memory(history: usize) -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::with_history(history)),
        _dir: None,
    }
}

fn file(history: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open_with(
        dir.path(),
        FileStoreOptions {
            history,
            ..Default::default()
        },
    )
    .unwrap();
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $test() { super::$test(super::memory); } )*
        }
        mod file {
            $( #[test] fn $test() { super::$test(super::file); } )*
        }
    };
}

suite!(
    crud,
    preconditions,
    invalid_writes,
    list_sorted_and_namespaced,
    watch_from_zero_and_mid,
    watch_filters,
    watch_live_under_concurrent_writes,
    compacted,
    watch_ends_when_store_dropped,
    slow_watch_catches_up_from_history,
    slow_watch_falls_behind_compaction,
);

const DEFAULT: usize = strait_store::DEFAULT_HISTORY;

/// All events available now.
fn drain(watch: &mut strait_store::Watch) -> Vec<Event> {
    std::iter::from_fn(|| watch.try_next()).collect()
}

fn revisions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.object.revision).collect()
}

fn crud(make: Make) {
    let f = make(DEFAULT);
    let s = &f.store;
    let key = svc("default", "web");
    assert_eq!(s.revision(), 0);
    assert_eq!(s.get(&key).unwrap(), None);

    let created = s.put(&key, obj("web", 1), Precondition::None).unwrap();
    assert_eq!(created.revision, 1);
    assert_eq!(created.key, key);
    assert_eq!(created.value["metadata"]["resourceVersion"], "1");
    assert_eq!(created.value["spec"]["n"], 1);
    assert_eq!(s.get(&key).unwrap(), Some(created));

    let updated = s.put(&key, obj("web", 2), Precondition::None).unwrap();
    assert_eq!(updated.revision, 2);
    assert_eq!(updated.value["metadata"]["resourceVersion"], "2");
    assert_eq!(s.get(&key).unwrap(), Some(updated));

    let deleted = s.delete(&key, Precondition::None).unwrap();
    assert_eq!(deleted.revision, 3);
    assert_eq!(deleted.value["spec"]["n"], 2);
    assert_eq!(deleted.value["metadata"]["resourceVersion"], "3");
    assert_eq!(s.get(&key).unwrap(), None);
    assert!(matches!(
        s.delete(&key, Precondition::None),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.revision(), 3);

    let events = drain(&mut s.watch(None, None, 0).unwrap());
    let types: Vec<_> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [EventType::Added, EventType::Modified, EventType::Deleted]
    );
    assert_eq!(events[2].object, deleted);
}

fn preconditions(make: Make) {
    let f = make(DEFAULT);
    let s = &f.store;
    let key = svc("default", "web");
    assert!(matches!(
        s.put(&key, obj("web", 1), Precondition::Revision(1)),
        Err(StoreError::NotFound { .. })
    ));
    s.put(&key, obj("web", 1), Precondition::MustNotExist)
        .unwrap();
    let err = s
        .put(&key, obj("web", 2), Precondition::MustNotExist)
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("Service default/web"), "{err}");

    let err = s
        .put(&key, obj("web", 2), Precondition::Revision(7))
        .unwrap_err();
    match &err {
        StoreError::Conflict {
            key: k,
            expected,
            actual,
        } => assert_eq!((k, *expected, *actual), (&key, 7, 1)),
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(err.to_string().contains("read the object again"), "{err}");
    let updated = s
        .put(&key, obj("web", 2), Precondition::Revision(1))
        .unwrap();
    assert_eq!(updated.revision, 2);

    assert!(matches!(
        s.delete(&key, Precondition::Revision(1)),
        Err(StoreError::Conflict {
            expected: 1,
            actual: 2,
            ..
        })
    ));
    assert!(matches!(
        s.delete(&key, Precondition::MustNotExist),
        Err(StoreError::AlreadyExists { .. })
    ));
    // Failed writes use no revision and leave no event.
    assert_eq!(s.revision(), 2);
    assert_eq!(
        revisions(&drain(&mut s.watch(None, None, 0).unwrap())),
        [1, 2]
    );
    s.delete(&key, Precondition::Revision(2)).unwrap();
    assert_eq!(s.revision(), 3);
}

fn invalid_writes(make: Make) {
    let f = make(DEFAULT);
    let s = &f.store;
    let key = svc("default", "web");
    assert!(matches!(
        s.put(&key, json!(["not", "an", "object"]), Precondition::None),
        Err(StoreError::InvalidObject { .. })
    ));
    assert!(matches!(
        s.put(&key, json!({"metadata": 3}), Precondition::None),
        Err(StoreError::InvalidObject { .. })
    ));
    assert!(matches!(
        s.put(&svc("default", ""), obj("x", 1), Precondition::None),
        Err(StoreError::InvalidKey { .. })
    ));
    assert_eq!(s.revision(), 0);
    // A value without metadata gets one.
    let o = s
        .put(&key, json!({"spec": {}}), Precondition::None)
        .unwrap();
    assert_eq!(
        o.value,
        json!({"spec": {}, "metadata": {"resourceVersion": "1"}})
    );
}

fn list_sorted_and_namespaced(make: Make) {
    let f = make(DEFAULT);
    let s = &f.store;
    let keys = [
        svc("b", "z"),
        svc("a", "y"),
        svc("ab", "a"),
        svc("b", "a"),
        svc("a", "x"),
        Key::new("ServiceEntry", "a", "se"),
        Key::new("Servic", "a", "short"),
        Key::new("Namespace", "", "a"),
    ];
    for (i, key) in keys.iter().enumerate() {
        s.put(key, obj(&key.name, i as u64), Precondition::None)
            .unwrap();
    }
    let names = |list: &[strait_store::Object]| -> Vec<String> {
        list.iter()
            .map(|o| format!("{}/{}", o.key.namespace, o.key.name))
            .collect()
    };
    let (all, revision) = s.list("Service", None).unwrap();
    assert_eq!(revision, 8);
    assert_eq!(names(&all), ["a/x", "a/y", "ab/a", "b/a", "b/z"]);
    assert!(all.iter().all(|o| o.key.kind == "Service"));
    assert_eq!(all[0].revision, 5);
    assert_eq!(all[0].value["spec"]["n"], 4);

    let (in_a, _) = s.list("Service", Some("a")).unwrap();
    assert_eq!(names(&in_a), ["a/x", "a/y"]);
    let (in_b, _) = s.list("Service", Some("b")).unwrap();
    assert_eq!(names(&in_b), ["b/a", "b/z"]);
    assert!(s.list("Service", Some("c")).unwrap().0.is_empty());
    assert!(s.list("Gateway", None).unwrap().0.is_empty());
    let (namespaces, _) = s.list("Namespace", Some("")).unwrap();
    assert_eq!(names(&namespaces), ["/a"]);

    s.delete(&svc("a", "x"), Precondition::None).unwrap();
    let (in_a, revision) = s.list("Service", Some("a")).unwrap();
    assert_eq!((names(&in_a), revision), (vec!["a/y".to_string()], 9));
}

fn watch_from_zero_and_mid(make: Make) {
    let f = make(DEFAULT);
    let s = &f.store;
    for i in 1..=10 {
        s.put(
            &svc("ns", &format!("o{i}")),
            obj("o", i),
            Precondition::None,
        )
        .unwrap();
    }
    let mut from_zero = s.watch(None, None, 0).unwrap();
    let events = drain(&mut from_zero);
    assert_eq!(revisions(&events), (1..=10).collect::<Vec<_>>());
    assert_eq!(events[3].object.key, svc("ns", "o4"));
    assert_eq!(events[3].object.value["spec"]["n"], 4);
    assert_eq!(from_zero.revision(), 10);

    let mut from_mid = s.watch(None, None, 6).unwrap();
    assert_eq!(revisions(&drain(&mut from_mid)), [7, 8, 9, 10]);
    let mut from_now = s.watch(None, None, 10).unwrap();
    assert!(from_now.try_next().is_none());

    // Then live events, on every watch.
    s.delete(&svc("ns", "o1"), Precondition::None).unwrap();
    for w in [&mut from_zero, &mut from_mid, &mut from_now] {
        let live = drain(w);
        assert_eq!(revisions(&live), [11]);
        assert_eq!(live[0].event_type, EventType::Deleted);
    }
    // A watch from a future revision sees only what comes after it.
    let mut future = s.watch(None, None, 12).unwrap();
    s.put(&svc("ns", "a"), obj("a", 0), Precondition::None)
        .unwrap();
    s.put(&svc("ns", "b"), obj("b", 0), Precondition::None)
        .unwrap();
    assert_eq!(revisions(&drain(&mut future)), [13]);
}

fn watch_filters(make: Make) {
    let f = make(DEFAULT);
    let s = &f.store;
    let vs = |ns: &str, name: &str| Key::new("networking.istio.io/VirtualService", ns, name);
    s.put(&svc("a", "1"), obj("1", 1), Precondition::None)
        .unwrap();
    s.put(&vs("a", "2"), obj("2", 2), Precondition::None)
        .unwrap();
    s.put(&svc("b", "3"), obj("3", 3), Precondition::None)
        .unwrap();
    let mut services = s.watch(Some("Service"), None, 0).unwrap();
    let mut in_a = s.watch(None, Some("a"), 0).unwrap();
    let mut services_in_b = s.watch(Some("Service"), Some("b"), 0).unwrap();
    s.put(&vs("b", "4"), obj("4", 4), Precondition::None)
        .unwrap();
    s.put(&svc("a", "5"), obj("5", 5), Precondition::None)
        .unwrap();
    assert_eq!(revisions(&drain(&mut services)), [1, 3, 5]);
    assert_eq!(revisions(&drain(&mut in_a)), [1, 2, 5]);
    assert_eq!(revisions(&drain(&mut services_in_b)), [3]);
    assert_eq!(services_in_b.revision(), 5);
}

fn watch_live_under_concurrent_writes(make: Make) {
    const WRITERS: u64 = 4;
    const EACH: u64 = 40;
    let f = make(DEFAULT);
    let s = f.store.clone();
    for i in 0..20 {
        s.put(
            &svc("pre", &format!("o{i}")),
            obj("o", i),
            Precondition::None,
        )
        .unwrap();
    }
    let total = 20 + WRITERS * EACH;
    runtime().block_on(async {
        let all = s.watch(None, None, 10).unwrap();
        let odd = s.watch(Some("Service"), Some("w1"), 10).unwrap();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let key = svc(&format!("w{w}"), &format!("o{}", i % 7));
                        s.put(&key, obj("o", i), Precondition::None).unwrap();
                    }
                })
            })
            .collect();
        let collect = |mut watch: strait_store::Watch| async move {
            // A filtered watch's revision also advances past events it skips, which `next`
            // does not return for: poll with a short timeout (`next` is cancel-safe).
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut got = Vec::new();
            while watch.revision() < total {
                assert!(Instant::now() < deadline, "a watch stalled at {watch:?}");
                match tokio::time::timeout(Duration::from_millis(50), watch.next()).await {
                    Ok(Some(event)) => got.push(event),
                    Ok(None) => panic!("the watch ended: {:?}", watch.ended()),
                    Err(_elapsed) => {}
                }
            }
            got
        };
        let (all, odd) = tokio::join!(collect(all), collect(odd));
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(revisions(&all), (11..=total).collect::<Vec<_>>());
        // The filtered watch saw exactly the matching events, as the log has them.
        let expected: Vec<_> = all
            .iter()
            .filter(|e| e.object.key.namespace == "w1")
            .cloned()
            .collect();
        assert_eq!(odd, expected);
        assert_eq!(odd.len() as u64, EACH);
        let added = all
            .iter()
            .filter(|e| e.event_type == EventType::Added)
            .count();
        assert_eq!(
            added as u64,
            10 + WRITERS * 7,
            "o10..o19, then 7 names per writer"
        );
    });
}

fn compacted(make: Make) {
    let f = make(5);
    let s = &f.store;
    for i in 1..=20 {
        s.put(&svc("ns", "o"), obj("o", i), Precondition::None)
            .unwrap();
    }
    let err = s.watch(None, None, 0).unwrap_err();
    assert!(matches!(err, StoreError::Compacted { oldest: 15 }), "{err}");
    assert!(err.to_string().contains("list again"), "{err}");
    assert!(matches!(
        s.watch(Some("Service"), None, 14),
        Err(StoreError::Compacted { oldest: 15 })
    ));
    let mut w = s.watch(None, None, 15).unwrap();
    assert_eq!(revisions(&drain(&mut w)), [16, 17, 18, 19, 20]);
    // The objects themselves are not compacted.
    assert_eq!(s.get(&svc("ns", "o")).unwrap().unwrap().revision, 20);
}

fn watch_ends_when_store_dropped(make: Make) {
    let Fixture { store, _dir } = make(DEFAULT);
    store
        .put(&svc("ns", "o"), obj("o", 1), Precondition::None)
        .unwrap();
    let mut w = store.watch(None, None, 0).unwrap();
    drop(store);
    runtime().block_on(async {
        assert_eq!(w.next().await.unwrap().object.revision, 1);
        assert!(w.next().await.is_none());
        assert!(matches!(w.ended(), Some(WatchEnd::StoreClosed)));
        assert!(w.next().await.is_none());
    });
}

/// More writes than the live channel holds, while the watcher does not read: it catches up
/// from the event log without losing or repeating anything.
fn slow_watch_catches_up_from_history(make: Make) {
    let f = make(DEFAULT);
    let s = &f.store;
    let mut all = s.watch(None, None, 0).unwrap();
    let mut some = s.watch(None, Some("n3"), 0).unwrap();
    for i in 1..=1500 {
        let key = svc(&format!("n{}", i % 5), &format!("o{}", i % 11));
        s.put(&key, obj("o", i), Precondition::None).unwrap();
    }
    assert_eq!(revisions(&drain(&mut all)), (1..=1500).collect::<Vec<_>>());
    let some_events = drain(&mut some);
    assert_eq!(some_events.len(), 300);
    assert!(some_events.iter().all(|e| e.object.key.namespace == "n3"));
    assert!(
        some_events
            .windows(2)
            .all(|w| w[0].object.revision < w[1].object.revision)
    );
    s.put(&svc("n3", "last"), obj("o", 0), Precondition::None)
        .unwrap();
    assert_eq!(revisions(&drain(&mut all)), [1501]);
    assert_eq!(revisions(&drain(&mut some)), [1501]);
}

/// A watcher that falls behind the retained history ends, saying so.
fn slow_watch_falls_behind_compaction(make: Make) {
    let f = make(100);
    let s = &f.store;
    let mut w = s.watch(None, None, 0).unwrap();
    for i in 1..=1500 {
        s.put(&svc("ns", "o"), obj("o", i), Precondition::None)
            .unwrap();
    }
    assert!(drain(&mut w).is_empty());
    assert!(
        matches!(w.ended(), Some(WatchEnd::FellBehind { oldest: 1400 })),
        "{w:?}"
    );
    assert!(w.try_next().is_none());
}

// File backend only.

#[test]
fn reopen_keeps_data_revision_and_history() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FileStore::open(dir.path()).unwrap();
        for i in 1..=5 {
            s.put(
                &svc("ns", &format!("o{i}")),
                obj("o", i),
                Precondition::None,
            )
            .unwrap();
        }
        s.delete(&svc("ns", "o2"), Precondition::None).unwrap();
    }
    let s = FileStore::open(dir.path()).unwrap();
    assert_eq!(s.revision(), 6);
    let o3 = s.get(&svc("ns", "o3")).unwrap().unwrap();
    assert_eq!((o3.revision, &o3.value["spec"]["n"]), (3, &json!(3)));
    assert_eq!(s.get(&svc("ns", "o2")).unwrap(), None);
    assert_eq!(s.list("Service", None).unwrap().0.len(), 4);
    let mut w = s.watch(None, None, 3).unwrap();
    let next = s
        .put(&svc("ns", "o6"), obj("o", 6), Precondition::None)
        .unwrap();
    assert_eq!(next.revision, 7);
    let events = drain(&mut w);
    assert_eq!(revisions(&events), [4, 5, 6, 7]);
    assert_eq!(events[2].event_type, EventType::Deleted);
    assert_eq!(events[2].object.key, svc("ns", "o2"));
}

#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = FileStore::open(dir.path()).unwrap();
    let err = FileStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("in use by another control plane")
            && message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn lowering_history_compacts_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FileStore::open(dir.path()).unwrap();
        for i in 1..=10 {
            s.put(&svc("ns", "o"), obj("o", i), Precondition::None)
                .unwrap();
        }
    }
    let s = FileStore::open_with(
        dir.path(),
        FileStoreOptions {
            history: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        s.watch(None, None, 6),
        Err(StoreError::Compacted { oldest: 7 })
    ));
    assert_eq!(
        revisions(&drain(&mut s.watch(None, None, 7).unwrap())),
        [8, 9, 10]
    );
}

#[test]
fn open_reports_an_unusable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let err = FileStore::open(&not_a_dir).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(err.to_string().contains("file"), "{err}");
}

#[test]
fn damaged_file_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FileStore::open(dir.path()).unwrap();
        for i in 1..=50 {
            s.put(
                &svc("ns", &format!("o{i}")),
                obj("o", i),
                Precondition::None,
            )
            .unwrap();
        }
    }
    let file = dir.path().join("store.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    // Damage a stored value (a checksummed page).
    let at = bytes
        .windows(6)
        .position(|w| w == b"\"spec\"")
        .expect("the file holds the values");
    bytes[at + 1] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    let err = FileStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );

    std::fs::write(&file, b"not a database at all, just some text").unwrap();
    let err = FileStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("Not a redb database"), "{err}");
}
