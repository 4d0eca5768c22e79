//! The `minicloud` binary as users run it (`up`, `serve`, the CLI commands), and the
//! failures of whole processes: one test binary, a module per command or fault.

mod bus_failover;
mod crash_recovery;
mod events_tail;
mod fn_commands;
mod metering_crash;
mod sandbox_unprivileged;
mod serve_service_key;
mod serve_several;
mod serve_traces;
mod support;
mod up;
