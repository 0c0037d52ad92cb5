//! Conversion tests.
use super::*;
