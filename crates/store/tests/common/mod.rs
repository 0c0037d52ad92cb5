//! What the store's test binaries share (`mod common;`): keys, values and a runtime for
//! watches.

use serde_json::{Value, json};
use strait_store::Key;

/// A Service's key.
pub fn svc(ns: &str, name: &str) -> Key {
    Key::new("Service", ns, name)
}

/// An object named `name` whose `spec.n` is `n`.
pub fn obj(name: &str, n: u64) -> Value {
    json!({"metadata": {"name": name}, "spec": {"n": n}})
}

/// A runtime to wait on watches with.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
