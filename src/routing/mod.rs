//! From a raw request target to the route that governs it.
pub mod canonical;
pub mod matcher;
