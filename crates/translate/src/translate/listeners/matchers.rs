//! Istio's string matches as Envoy's matchers, for routes and the policies they carry.

use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use strait_api::networking::virtual_service::{StringMatch, StringMatchKind};

/// `exact`, `prefix` or `regex` (RE2, as Envoy's `safe_regex`); `None` for an empty match.
pub(super) fn string_matcher(sm: &StringMatch) -> Option<StringMatcher> {
    let pattern = match sm.kind()? {
        StringMatchKind::Exact(s) => string_matcher::MatchPattern::Exact(s.to_string()),
        StringMatchKind::Prefix(s) => string_matcher::MatchPattern::Prefix(s.to_string()),
        StringMatchKind::Regex(s) => string_matcher::MatchPattern::SafeRegex(regex(s)),
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

/// A `safe_regex` (Google RE2) matcher.
pub(super) fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.to_string(),
        ..Default::default()
    }
}
