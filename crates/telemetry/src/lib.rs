//! Everything a minicloud service needs to be observable and reachable:
//! tracing + OpenTelemetry setup ([`init`]), W3C trace context on every hop
//! ([`trace_context`], [`http_server`], [`grpc_client`]), Prometheus metrics
//! ([`metrics`]), the one-port REST+gRPC server with health endpoints ([`server`]) and
//! the traces and log lines a process keeps itself ([`trace_store`], [`log_store`]) or
//! shares with every process of a deployment in Postgres ([`shared_store`]).

mod forward;
pub mod grpc_client;
pub mod http_server;
pub mod init;
pub mod log_store;
pub mod metrics;
pub mod server;
pub mod shared_store;
pub mod span_keeper;
pub mod trace_context;
pub mod trace_store;

pub use init::{TelemetryConfig, TelemetryGuard, init};
