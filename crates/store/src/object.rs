//! Rules shared by the backends: key and value checks, preconditions, resourceVersion stamping.

use crate::{Key, Object, Precondition, StoreError};
use serde_json::Value;

pub(crate) fn check_key(key: &Key) -> Result<(), StoreError> {
    let reason = if key.kind.is_empty() {
        "the kind is empty"
    } else if key.name.is_empty() {
        "the name is empty"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidKey {
        key: key.clone(),
        reason,
    })
}

/// Checks `pre` against the revision of the current object (None: absent) before a put.
pub(crate) fn check_put(
    key: &Key,
    pre: Precondition,
    current: Option<u64>,
) -> Result<(), StoreError> {
    match (pre, current) {
        (Precondition::None, _) | (Precondition::MustNotExist, None) => Ok(()),
        (Precondition::MustNotExist, Some(_)) => {
            Err(StoreError::AlreadyExists { key: key.clone() })
        }
        (Precondition::Revision(_), None) => Err(StoreError::NotFound { key: key.clone() }),
        (Precondition::Revision(expected), Some(actual)) if expected == actual => Ok(()),
        (Precondition::Revision(expected), Some(actual)) => Err(StoreError::Conflict {
            key: key.clone(),
            expected,
            actual,
        }),
    }
}

/// Checks `pre` before a delete: the object must exist, and `pre` must hold.
pub(crate) fn check_delete(
    key: &Key,
    pre: Precondition,
    current: Option<u64>,
) -> Result<(), StoreError> {
    check_put(key, pre, current)?;
    match current {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound { key: key.clone() }),
    }
}

/// Sets `metadata.resourceVersion` to `revision`, creating `metadata` if needed.
pub(crate) fn stamp(key: &Key, value: &mut Value, revision: u64) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidObject {
        key: key.clone(),
        reason,
    };
    let object = value
        .as_object_mut()
        .ok_or_else(|| invalid("the value is not a JSON object"))?;
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()
        .ok_or_else(|| invalid("metadata is not a JSON object"))?;
    metadata.insert(
        "resourceVersion".to_string(),
        Value::String(revision.to_string()),
    );
    Ok(())
}

/// The object `key` = `value` at `revision`, its `metadata.resourceVersion` stamped to match:
/// what every backend returns for a write and (the etcd backend) a read.
pub(crate) fn stamped(key: Key, mut value: Value, revision: u64) -> Result<Object, StoreError> {
    stamp(&key, &mut value, revision)?;
    Ok(Object {
        key,
        revision,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> Key {
        Key::new("Service", "default", "web")
    }

    #[test]
    fn preconditions() {
        let k = key();
        assert!(check_put(&k, Precondition::None, None).is_ok());
        assert!(check_put(&k, Precondition::None, Some(3)).is_ok());
        assert!(check_put(&k, Precondition::MustNotExist, None).is_ok());
        assert!(matches!(
            check_put(&k, Precondition::MustNotExist, Some(3)),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert!(check_put(&k, Precondition::Revision(3), Some(3)).is_ok());
        assert!(matches!(
            check_put(&k, Precondition::Revision(2), Some(3)),
            Err(StoreError::Conflict {
                expected: 2,
                actual: 3,
                ..
            })
        ));
        assert!(matches!(
            check_put(&k, Precondition::Revision(2), None),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            check_delete(&k, Precondition::None, None),
            Err(StoreError::NotFound { .. })
        ));
        assert!(check_delete(&k, Precondition::Revision(3), Some(3)).is_ok());
    }

    #[test]
    fn stamps_resource_version() {
        let mut v = json!({"spec": {}});
        stamp(&key(), &mut v, 12).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "12");
        let mut v = json!({"metadata": {"name": "web", "resourceVersion": "3"}});
        stamp(&key(), &mut v, 13).unwrap();
        assert_eq!(
            v,
            json!({"metadata": {"name": "web", "resourceVersion": "13"}})
        );
        assert!(stamp(&key(), &mut json!([1]), 1).is_err());
        assert!(stamp(&key(), &mut json!({"metadata": 1}), 1).is_err());
        let o = stamped(key(), json!({"spec": {}}), 7).unwrap();
        assert_eq!((&o.key, o.revision), (&key(), 7));
        assert_eq!(o.value["metadata"]["resourceVersion"], "7");
        assert!(stamped(key(), json!("x"), 7).is_err());
    }

    #[test]
    fn key_display_and_checks() {
        assert_eq!(key().to_string(), "Service default/web");
        assert_eq!(
            Key::new("networking.istio.io/VirtualService", "", "x").to_string(),
            "networking.istio.io/VirtualService x"
        );
        assert!(check_key(&Key::new("", "a", "b")).is_err());
        assert!(check_key(&Key::new("Service", "a", "")).is_err());
        assert!(check_key(&Key::new("Namespace", "", "a")).is_ok());
    }
}
