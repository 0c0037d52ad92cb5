//! Kubernetes label selectors, as Istio's analyzers use them.

use serde_json::Value;

use crate::object::{Labels, items, string_map, strings, text};

/// A selector built from a set (`labels.SelectorFromSet`): every key with its value. An empty
/// set matches everything.
pub fn set_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `app=reviews,version=v1`: the selector's string form, keys sorted.
pub fn set_string(selector: &Labels) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `metav1.LabelSelector` (`matchLabels` and `matchExpressions`); `null` matches everything.
/// A selector that cannot be read matches nothing, as Kubernetes refuses it.
pub fn label_selector_matches(selector: &Value, labels: &Labels) -> bool {
    if selector.is_null() {
        return true;
    }
    if !set_matches(&string_map(&selector["matchLabels"]), labels) {
        return false;
    }
    items(&selector["matchExpressions"]).iter().all(|e| {
        let key = text(&e["key"]);
        let values = strings(&e["values"]);
        let has = labels.get(key);
        match text(&e["operator"]) {
            "In" => has.is_some_and(|v| values.contains(v)),
            "NotIn" => has.is_none_or(|v| !values.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sets_and_expressions() {
        assert!(set_matches(&l(&[]), &l(&[("a", "1")])));
        assert!(set_matches(
            &l(&[("a", "1")]),
            &l(&[("a", "1"), ("b", "2")])
        ));
        assert!(!set_matches(&l(&[("a", "1")]), &l(&[("a", "2")])));
        assert_eq!(set_string(&l(&[("b", "2"), ("a", "1")])), "a=1,b=2");
        let sel = json!({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["x"]}]});
        assert!(label_selector_matches(&sel, &l(&[("a", "1")])));
        assert!(!label_selector_matches(&sel, &l(&[("a", "1"), ("b", "x")])));
        assert!(label_selector_matches(&Value::Null, &l(&[])));
    }
}
