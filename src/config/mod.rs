//! Configuration: raw files -> validated settings and a compiled rules snapshot.
pub mod diag;
pub mod duration;
pub mod reload;
pub mod rules;
pub mod settings;
