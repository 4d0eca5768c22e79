//! The `minicloud` command as a library: configuration layering, composing every
//! service into one cloud (`up`) or serving some (`serve`), private Postgres/Redis.
//! The binary in `main.rs` only parses arguments and calls in here; `testkit` starts
//! clouds through the same [`cloud::start`].

pub mod cloud;
pub mod config;
pub mod demo;
pub mod functions;
pub mod postgres;
pub mod private_servers;
pub mod serve;
pub mod usage;
pub mod user;
