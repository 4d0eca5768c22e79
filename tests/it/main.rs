//! The end-to-end tests, one binary (each test still runs in a process of its own
//! under nextest): a whole cloud per test, driven over REST and gRPC like an app.
//! One module per service or concern; a binary each cost a link of the whole cloud.

mod auth;
mod aws_clients;
mod billing;
mod bus;
mod console;
mod docdb;
mod foundation;
mod invoker;
mod outbox;
mod s3_api;
mod sandbox;
mod storage;
mod supabase_clients;
mod trace_propagation;
mod traces;
