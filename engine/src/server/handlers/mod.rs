//! The handlers of `tessera.v1.Tessera`, by kind of call; the service
//! ([`super::service`]) frames each one (deadline, admission, metrics).

pub mod admin;
pub mod documents;
pub mod search;
