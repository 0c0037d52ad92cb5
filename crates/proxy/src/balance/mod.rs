//! Cluster resilience and balancing policies beside the endpoint pick in `upstream`: outlier
//! detection, circuit breaking and consistent hashing.

pub(crate) mod circuit;
pub(crate) mod hash;
pub(crate) mod outlier;
