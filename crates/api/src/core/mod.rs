//! The Kubernetes kinds a mesh reads: Service, ServiceAccount, Namespace, Deployment, Secret.
//!
//! Strait reads the fields it uses and checks their types; see each type for what it keeps.

pub mod deployment;
pub mod secret;
pub mod service;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ObjectMeta;

/// A ServiceAccount has no `spec`; its few top-level fields are kept here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

/// A whole ServiceAccount object, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountObject {
    #[expect(dead_code)]
    api_version: String,
    #[expect(dead_code)]
    kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    secrets: Option<Value>,
    #[serde(default)]
    image_pull_secrets: Option<Value>,
    #[serde(default)]
    automount_service_account_token: Option<bool>,
}

impl ServiceAccountObject {
    pub fn into_spec(self) -> ServiceAccount {
        ServiceAccount {
            secrets: self.secrets,
            image_pull_secrets: self.image_pull_secrets,
            automount_service_account_token: self.automount_service_account_token,
        }
    }
}

/// `spec` of a Namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}
