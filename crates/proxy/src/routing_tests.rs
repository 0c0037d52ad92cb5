//! Routing tests.
use super::*;
