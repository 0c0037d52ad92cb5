//! Batches (all or nothing), the event log's bound in bytes, and watches whose memory stays
//! bounded when they are not read: run against both backends.

use serde_json::{Value, json};
use std::sync::Arc;
use strait_store::{
    Event, EventType, FileStore, FileStoreOptions, Key, MemoryStore, Precondition, Store,
    StoreError, WatchEnd, Write,
};
use tempfile::TempDir;

struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
}

type Make = fn(history: usize, history_bytes: usize) -> Fixture;

fn memory(history: usize, history_bytes: usize) -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::with_history_bytes(history, history_bytes)),
        _dir: None,
    }
}

fn file(history: usize, history_bytes: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let options = FileStoreOptions {
        history,
        history_bytes,
    };
    let store = FileStore::open_with(dir.path(), options).unwrap();
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
    a_batch_is_written_whole,
    a_failing_batch_writes_nothing,
    history_is_bounded_in_bytes,
    an_unread_watch_of_large_events_catches_up_from_the_log,
    an_unread_watch_past_the_log_ends_fell_behind,
);

const DEFAULT: usize = strait_store::DEFAULT_HISTORY;
const DEFAULT_BYTES: usize = strait_store::DEFAULT_HISTORY_BYTES;

fn svc(name: &str) -> Key {
    Key::new("Service", "ns", name)
}

fn obj(name: &str, n: u64) -> Value {
    json!({"metadata": {"name": name}, "spec": {"n": n}})
}

/// An object of about `kib` KiB.
fn big(name: &str, n: u64, kib: usize) -> Value {
    json!({"metadata": {"name": name, "annotations": {"pad": "x".repeat(kib * 1024)}},
           "spec": {"n": n}})
}

fn put(key: Key, value: Value, pre: Precondition) -> Write {
    Write::Put { key, value, pre }
}

fn drain(watch: &mut strait_store::Watch) -> Vec<Event> {
    std::iter::from_fn(|| watch.try_next()).collect()
}

fn revisions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.object.revision).collect()
}

fn a_batch_is_written_whole(make: Make) {
    let f = make(DEFAULT, DEFAULT_BYTES);
    let s = &f.store;
    s.put(&svc("old"), obj("old", 0), Precondition::None)
        .unwrap();
    let mut w = s.watch(None, None, 1).unwrap();
    let written = s
        .write_batch(vec![
            put(svc("a"), obj("a", 1), Precondition::MustNotExist),
            // The same object again: checked against the batch's own first write.
            put(svc("a"), obj("a", 2), Precondition::Revision(2)),
            put(svc("b"), obj("b", 1), Precondition::None),
            Write::Delete {
                key: svc("old"),
                pre: Precondition::Revision(1),
            },
        ])
        .unwrap();
    let written: Vec<u64> = written.iter().map(|o| o.revision).collect();
    assert_eq!(written, [2, 3, 4, 5]);
    assert_eq!(s.revision(), 5);
    assert_eq!(s.get(&svc("a")).unwrap().unwrap().value["spec"]["n"], 2);
    assert_eq!(s.get(&svc("a")).unwrap().unwrap().revision, 3);
    assert!(s.get(&svc("old")).unwrap().is_none());
    let events = drain(&mut w);
    assert_eq!(revisions(&events), [2, 3, 4, 5]);
    let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [
            EventType::Added,
            EventType::Modified,
            EventType::Added,
            EventType::Deleted
        ]
    );
    // An empty batch writes nothing.
    assert!(s.write_batch(Vec::new()).unwrap().is_empty());
    assert_eq!(s.revision(), 5);
}

fn a_failing_batch_writes_nothing(make: Make) {
    let f = make(DEFAULT, DEFAULT_BYTES);
    let s = &f.store;
    s.put(&svc("a"), obj("a", 0), Precondition::None).unwrap();
    let mut w = s.watch(None, None, 1).unwrap();
    let cases: Vec<(Vec<Write>, usize)> = vec![
        (
            vec![
                put(svc("b"), obj("b", 1), Precondition::None),
                put(svc("a"), obj("a", 1), Precondition::MustNotExist),
            ],
            1,
        ),
        (
            vec![
                put(svc("c"), obj("c", 1), Precondition::None),
                put(svc("d"), obj("d", 1), Precondition::None),
                put(svc("a"), obj("a", 1), Precondition::Revision(7)),
            ],
            2,
        ),
        (
            vec![
                put(svc("e"), obj("e", 1), Precondition::None),
                Write::Delete {
                    key: svc("nope"),
                    pre: Precondition::None,
                },
            ],
            1,
        ),
        (
            vec![
                put(svc("f"), obj("f", 1), Precondition::None),
                put(
                    Key::new("Service", "ns", ""),
                    obj("x", 1),
                    Precondition::None,
                ),
            ],
            1,
        ),
    ];
    for (writes, failing) in cases {
        match s.write_batch(writes) {
            Err(StoreError::InBatch { index, .. }) => assert_eq!(index, failing),
            other => panic!("expected the batch to fail at {failing}: {other:?}"),
        }
        assert_eq!(s.revision(), 1);
        assert_eq!(s.list("Service", None).unwrap().0.len(), 1);
        assert!(drain(&mut w).is_empty());
    }
    // Single writes keep their own errors.
    assert!(matches!(
        s.put(&svc("a"), obj("a", 1), Precondition::MustNotExist),
        Err(StoreError::AlreadyExists { .. })
    ));
}

fn history_is_bounded_in_bytes(make: Make) {
    // 1 MiB of history, 100 KiB events: about 10 are kept, however many the count allows.
    let f = make(DEFAULT, 1 << 20);
    let s = &f.store;
    for i in 1..=40 {
        s.put(&svc("o"), big("o", i, 100), Precondition::None)
            .unwrap();
    }
    let oldest = match s.watch(None, None, 0) {
        Err(StoreError::Compacted { oldest }) => oldest,
        other => panic!("expected the log to be compacted: {other:?}"),
    };
    assert!((25..=32).contains(&oldest), "oldest {oldest}");
    let mut w = s.watch(None, None, oldest).unwrap();
    assert_eq!(
        revisions(&drain(&mut w)),
        (oldest + 1..=40).collect::<Vec<_>>()
    );
    // One event larger than the bound is still kept: the newest always is.
    s.put(&svc("o"), big("o", 41, 2048), Precondition::None)
        .unwrap();
    let mut w = s.watch(None, None, 40).unwrap();
    assert_eq!(revisions(&drain(&mut w)), [41]);
}

fn an_unread_watch_of_large_events_catches_up_from_the_log(make: Make) {
    let f = make(DEFAULT, 256 << 20);
    let s = &f.store;
    let mut all = s.watch(None, None, 0).unwrap();
    // 40 MiB of events: far more than a watch's queue holds.
    for i in 1..=160 {
        s.put(
            &svc(&format!("o{}", i % 7)),
            big("o", i, 256),
            Precondition::None,
        )
        .unwrap();
    }
    let events = drain(&mut all);
    assert_eq!(revisions(&events), (1..=160).collect::<Vec<_>>());
    assert!(
        events
            .iter()
            .all(|e| e.object.value["spec"]["n"] == e.object.revision)
    );
}

fn an_unread_watch_past_the_log_ends_fell_behind(make: Make) {
    let f = make(DEFAULT, 4 << 20);
    let s = &f.store;
    let mut w = s.watch(None, None, 0).unwrap();
    for i in 1..=100 {
        s.put(&svc("o"), big("o", i, 256), Precondition::None)
            .unwrap();
    }
    let events = drain(&mut w);
    // What the queue held before it overflowed may come first; then the watch ends.
    assert!(events.len() < 40, "{} events", events.len());
    assert!(
        matches!(w.ended(), Some(WatchEnd::FellBehind { .. })),
        "{w:?}"
    );
}
