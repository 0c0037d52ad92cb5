//! "A write that returned success survives `kill -9` of the control plane and a restart."
//!
//! The test re-executes its own binary in a child mode (selected by an environment variable): the
//! child opens a FileStore and writes in a loop, printing each operation after it returned. The
//! parent kills it with SIGKILL mid-stream, reopens the store, and checks that every acknowledged
//! write is there, and that at most the one write in flight when the child died was added.

use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use strait_store::{EventType, FileStore, Key, Precondition, Store, StoreError};

const CHILD_DIR_ENV: &str = "STRAIT_STORE_CRASH_CHILD_DIR";
const TEST_NAME: &str = "acknowledged_writes_survive_kill_9";
const NAMESPACE: &str = "crash";
/// Kill the child after this many acknowledged writes, or after `KILL_AFTER`.
const ACKS: usize = 200;
const KILL_AFTER: Duration = Duration::from_secs(2);

/// The child's i-th operation: put `o{i}`, and every fourth step delete the previous object.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Put(u64),
    Delete(u64),
}

fn ops() -> impl Iterator<Item = Op> {
    (0..).flat_map(|i| {
        let delete = (i % 4 == 3).then(|| Op::Delete(i - 1));
        std::iter::once(Op::Put(i)).chain(delete)
    })
}

fn key(i: u64) -> Key {
    Key::new("Service", NAMESPACE, format!("o{i}"))
}

fn value(i: u64) -> serde_json::Value {
    json!({
        "metadata": {"name": format!("o{i}"), "namespace": NAMESPACE},
        "spec": {"n": i, "payload": "x".repeat(2000)},
    })
}

/// The expected objects: name → (revision, n).
type Model = BTreeMap<String, (u64, u64)>;

fn apply(model: &mut Model, op: Op, revision: u64) {
    match op {
        Op::Put(i) => model.insert(format!("o{i}"), (revision, i)),
        Op::Delete(i) => model.remove(&format!("o{i}")),
    };
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        run_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Read acknowledgements: "ACK <op index> <revision>".
    let started = Instant::now();
    let mut acked: Vec<u64> = Vec::new();
    let mut checked_in_use = false;
    while acked.len() < ACKS {
        let Some(left) = KILL_AFTER.checked_sub(started.elapsed()) else {
            break;
        };
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        let Some((index, revision)) = parse_ack(&line) else {
            continue;
        };
        assert_eq!(index, acked.len());
        acked.push(revision);
        if !checked_in_use {
            // While the child runs, nobody else may open its store.
            let err = FileStore::open(dir.path()).unwrap_err();
            assert!(matches!(err, StoreError::InUse { .. }), "{err}");
            checked_in_use = true;
        }
    }
    // Kill at a varying point of the child's next write (before, during or after its commit).
    let jitter = u64::from(started.elapsed().subsec_nanos()) % 2000;
    std::thread::sleep(Duration::from_micros(jitter));
    child.0.kill().unwrap(); // SIGKILL
    let status = child.0.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the child exited by itself: {status}"
    );
    reader.join().unwrap();
    // Acknowledgements printed just before the kill may still be in the pipe.
    for line in lines.try_iter() {
        if let Some((index, revision)) = parse_ack(&line) {
            assert_eq!(index, acked.len());
            acked.push(revision);
        }
    }
    assert!(
        acked.len() >= 20,
        "only {} writes were acknowledged in {KILL_AFTER:?}",
        acked.len()
    );

    // What the store must hold: every acknowledged op, and maybe the one in flight.
    let mut expected = Model::new();
    let mut ops = ops();
    // `acked` first: zip must not take an op from `ops` once `acked` is exhausted.
    for (revision, op) in acked.iter().zip(ops.by_ref()) {
        apply(&mut expected, op, *revision);
    }
    let last = *acked.last().unwrap();
    assert_eq!(last, acked.len() as u64, "each write takes one revision");
    let mut with_in_flight = expected.clone();
    apply(&mut with_in_flight, ops.next().unwrap(), last + 1);

    let store = FileStore::open(dir.path()).unwrap();
    let (objects, revision) = store.list("Service", Some(NAMESPACE)).unwrap();
    let found: Model = objects
        .iter()
        .map(|o| {
            assert_eq!(
                o.value["metadata"]["resourceVersion"],
                o.revision.to_string()
            );
            assert_eq!(o.value["spec"]["payload"].as_str().unwrap().len(), 2000);
            let n = o.value["spec"]["n"].as_u64().unwrap();
            (o.key.name.clone(), (o.revision, n))
        })
        .collect();
    eprintln!(
        "{} writes acknowledged in {:?}; after the kill the store is at revision {revision} \
         (last acknowledged: {last})",
        acked.len(),
        started.elapsed(),
    );
    if revision == last {
        assert_eq!(found, expected);
    } else {
        assert_eq!(
            revision,
            last + 1,
            "at most the write in flight may be added"
        );
        assert_eq!(found, with_in_flight);
    }

    // The revision sequence and the history continue.
    assert_eq!(store.revision(), revision);
    let history: Vec<_> = std::iter::from_fn({
        let mut watch = store.watch(None, None, 0).unwrap();
        move || watch.try_next()
    })
    .collect();
    let revisions: Vec<u64> = history.iter().map(|e| e.object.revision).collect();
    assert_eq!(revisions, (1..=revision).collect::<Vec<_>>());
    let deletes = history
        .iter()
        .filter(|e| e.event_type == EventType::Deleted)
        .count();
    assert!(deletes > 0);
    let next = store
        .put(
            &key(1_000_000),
            value(1_000_000),
            Precondition::MustNotExist,
        )
        .unwrap();
    assert_eq!(next.revision, revision + 1);
}

/// Parses "ACK <op index> <revision>" (libtest may print the test's name before it on the line).
fn parse_ack(line: &str) -> Option<(usize, u64)> {
    let ack = &line[line.find("ACK ")? + 4..];
    let (index, revision) = ack.split_once(' ')?;
    Some((index.parse().unwrap(), revision.parse().unwrap()))
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child: writes until killed (or, should the parent be gone, for at most 20 s).
fn run_child(dir: &Path) {
    let store = FileStore::open(dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = std::io::stdout().lock();
    for (index, op) in ops().enumerate() {
        if Instant::now() > deadline {
            break;
        }
        let object = match op {
            Op::Put(i) => store.put(&key(i), value(i), Precondition::MustNotExist),
            Op::Delete(i) => store.delete(&key(i), Precondition::None),
        }
        .unwrap();
        // A closed pipe means the parent is gone: stop.
        if writeln!(out, "ACK {index} {}", object.revision)
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
}
