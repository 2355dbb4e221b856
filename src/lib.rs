//! phigate: a PHI/PII enforcement gateway. A TLS reverse proxy that refuses every request a
//! route's permissions do not cover, and masks JSON responses for anonymized callers.
//!
//! The modules follow a request: `server` accepts it, `routing` canonicalises and matches
//! it, `auth` and `access` decide, `proxy` forwards it, `masking` filters the response and
//! `audit` records it. `config` turns files into the validated snapshot all of them read.

pub mod access;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod decision;
pub mod demo;
pub mod error;
pub mod explain;
pub mod masking;
pub mod per_thread;
pub mod proxy;
pub mod report;
pub mod routing;
pub mod ruletest;
pub mod server;
pub mod telemetry;
