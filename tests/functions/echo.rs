//! A function built with the `lambda_runtime` crate and nothing of minicloud's:
//! what a developer deploys to AWS Lambda, unmodified. The event says what to do,
//! so one binary can be well-behaved, slow, crashing or memory-hungry.

use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    // The benchmark's echo: the event back, nothing else.
    if payload.get("echo").is_some() {
        return Ok(payload);
    }
    if let Some(line) = payload.get("print").and_then(Value::as_str) {
        println!("{line}");
        eprintln!("to stderr: {line}");
    }
    if let Some(lines) = payload.get("print_lines").and_then(Value::as_u64) {
        // A burst just before answering: the log tail must still end with it.
        for n in 0..lines {
            println!("burst line {n}");
        }
    }
    if payload.get("spawn_sleeper").is_some() {
        // A child in the function's process group: a timeout must take it too.
        let child = std::process::Command::new("sleep").arg("300").spawn()?;
        println!("sleeper pid {}", child.id());
    }
    if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = payload.get("exit").and_then(Value::as_i64) {
        std::process::exit(code as i32);
    }
    if let Some(mb) = payload.get("alloc_mb").and_then(Value::as_u64) {
        // Touches every page, as a real memory hog would.
        let block = vec![1u8; (mb * 1024 * 1024) as usize];
        let sum: u64 = block.iter().step_by(4096).map(|b| u64::from(*b)).sum();
        return Ok(json!({ "touched_pages": sum }));
    }
    if let Some(message) = payload.get("fail").and_then(Value::as_str) {
        return Err(message.into());
    }
    if let Some(bytes) = payload.get("respond_bytes").and_then(Value::as_u64) {
        return Ok(json!({ "big": "x".repeat(bytes as usize) }));
    }
    let env: serde_json::Map<String, Value> = std::env::vars()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Ok(json!({
        "event": payload,
        "request_id": context.request_id,
        "function_arn": context.invoked_function_arn,
        "trace_id": context.xray_trace_id,
        // What our sdk would send on as the W3C trace of calls made now.
        "traceparent": minicloud_sdk::invocation_traceparent(),
        "deadline_ms": context.deadline,
        "pid": std::process::id(),
        "cwd": std::env::current_dir()?.display().to_string(),
        "env": env,
    }))
}

fn main() -> Result<(), Error> {
    // tokio's default multi-thread runtime unless the deployment asks for a
    // single-threaded one: the benchmark measures the echo both ways.
    let mut runtime = match std::env::var("ECHO_TOKIO_RUNTIME").as_deref() {
        Ok("current_thread") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime
        .enable_all()
        .build()?
        .block_on(lambda_runtime::run(service_fn(handle)))
}
