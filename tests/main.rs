//! One integration-test binary (like ripgrep's): real TLS, real HTTP, real JWTs, a real
//! upstream on loopback.

// Shared by all modules; not every module uses every helper.
#[allow(dead_code)]
mod support;

mod check_cli;
mod cli;
mod faults;
mod hardening;
mod headers;
mod masking_e2e;
mod matrix;
mod ops;
mod paths;
mod smuggling;
mod tokens;
mod upstream_faults;
