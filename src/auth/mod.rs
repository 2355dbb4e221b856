//! Authentication: who is calling. Only verified bearer JWTs count.
pub mod jwt;
