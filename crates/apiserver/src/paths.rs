//! Kubernetes-shaped resource paths.

use strait_api::Kind;

use crate::ApiError;

/// A parsed resource path: the kind, the version asked for, and the namespace and name if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub kind: Kind,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `?showSecrets=true`: a Secret's data is shown (it is hidden otherwise).
    pub show_secrets: bool,
}

impl ResourcePath {
    /// Reads `/api/v1/...` or `/apis/{group}/{version}/...`.
    pub fn parse(path: &str) -> Result<Self, ApiError> {
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let (group, version, rest) = match segs.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return Err(ApiError::not_found(format!("no such API path {path:?}"))),
        };
        let (namespace, plural, name) = match rest {
            ["namespaces", ns, plural] => (Some(*ns), *plural, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            // Namespaces themselves are cluster-scoped: /api/v1/namespaces/{name}.
            ["namespaces", name] if group.is_empty() => (None, "namespaces", Some(*name)),
            [plural] => (None, *plural, None),
            [plural, name] => (None, *plural, Some(*name)),
            _ => return Err(ApiError::not_found(format!("no such API path {path:?}"))),
        };
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural && k.group() == group)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "the server has no resource {plural:?} in group {:?}",
                    if group.is_empty() { "core" } else { group }
                ))
            })?;
        if !kind.versions().contains(&version) {
            return Err(ApiError::not_found(format!(
                "{} is not served at version {version:?}: use one of {:?}",
                kind.name(),
                kind.versions()
            )));
        }
        if name.is_some() && namespace.is_none() && kind.namespaced() {
            return Err(ApiError::not_found(format!(
                "{} is namespaced: use .../namespaces/{{namespace}}/{}/{{name}}",
                kind.name(),
                kind.plural()
            )));
        }
        for part in namespace.iter().chain(name.iter()) {
            if part.is_empty() || part.contains(['%', '?', '#']) {
                return Err(ApiError::bad_request(format!(
                    "invalid name or namespace {part:?} in the path"
                )));
            }
        }
        Ok(Self {
            kind,
            version: version.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            show_secrets: false,
        })
    }

    pub fn api_version(&self) -> String {
        if self.kind.group().is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.kind.group(), self.version)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kubernetes_shaped_paths() {
        let p = ResourcePath::parse(
            "/apis/networking.istio.io/v1beta1/namespaces/default/virtualservices/reviews",
        )
        .unwrap();
        assert_eq!(p.kind, Kind::VirtualService);
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.name.as_deref(), Some("reviews"));
        assert_eq!(p.api_version(), "networking.istio.io/v1beta1");
        let p = ResourcePath::parse("/api/v1/services").unwrap();
        assert_eq!((p.kind, p.namespace, p.name), (Kind::Service, None, None));
        let p = ResourcePath::parse("/api/v1/namespaces/default").unwrap();
        assert_eq!(
            (p.kind, p.name.as_deref()),
            (Kind::Namespace, Some("default"))
        );
        let p = ResourcePath::parse("/api/v1/namespaces/default/services").unwrap();
        assert_eq!(
            (p.kind, p.namespace.as_deref()),
            (Kind::Service, Some("default"))
        );
        assert!(ResourcePath::parse("/apis/networking.istio.io/v9/virtualservices").is_err());
        assert!(ResourcePath::parse("/apis/foo.io/v1/things").is_err());
        assert!(ResourcePath::parse("/apis/networking.istio.io/v1/virtualservices/x").is_err());
    }
}
