//! What the load benchmarks share: timing an operation run one after another, and
//! the latency summary every figure in docs/benchmarks.md is built from.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The allocator the `minicloud` binary ships with (crates/cli/src/main.rs), so
/// that the clouds these benchmarks start in-process allocate as it does. Every
/// bench binary must link this crate for it to apply (console.rs names it for that
/// alone).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Throughput over `wall`, p50 and p99 of `samples`.
pub fn summary(mut samples: Vec<Duration>, wall: Duration) -> Value {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    json!({
        "ops_per_s": samples.len() as f64 / wall.as_secs_f64(),
        "p50_us": pick(0.50).as_secs_f64() * 1e6,
        "p99_us": pick(0.99).as_secs_f64() * 1e6,
    })
}

/// [`summary`] of operations that ran one after another: the wall time is their sum.
pub fn sequential_summary(samples: Vec<Duration>) -> Value {
    let total = samples.iter().sum();
    summary(samples, total)
}

/// Runs `op` n/10 (at least 5) times to warm up — with indices from `usize::MAX`
/// down, so warm-up keys differ from measured ones — then n times, timing each.
pub async fn time<F, Fut>(n: usize, mut op: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for i in 0..(n / 10).max(5) {
        op(usize::MAX - i).await?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        op(i).await?;
        out.push(started.elapsed());
    }
    Ok(out)
}

/// Runs `measure` the way a separate client program would: on a thread of its own
/// with a single-threaded runtime. The cloud keeps the benchmark's worker threads to
/// itself, and the load generator's own task hand-offs (reqwest's connection task,
/// the timing loop) stay on one thread instead of waking the cloud's workers from the
/// main thread. Connections (HTTP pools, sqlx pools) must be made inside `measure`:
/// a socket stays tied to the runtime that opened it.
pub async fn as_client<F, Fut, T>(measure: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(measure())
    })
    .await?
}

/// How many blocks the rows of one comparison are measured in, taking turns: a row
/// and its baseline then span the same minutes. On this VM the same loop's p50
/// drifts by tens of microseconds from one minute to the next.
pub const ROUNDS: usize = 10;

/// One operation of [`time_in_turns`], given the index of the call.
pub type Op<'a> =
    Box<dyn FnMut(usize) -> futures::future::LocalBoxFuture<'a, anyhow::Result<()>> + 'a>;

/// [`time`] for several operations compared with each other: each is warmed up,
/// then they take turns in [`ROUNDS`] blocks of n / ROUNDS calls. Indices run from 0
/// to n - 1 for each operation (warm-up ones from `usize::MAX` down).
pub async fn time_in_turns(n: usize, ops: &mut [Op<'_>]) -> anyhow::Result<Vec<Vec<Duration>>> {
    for op in ops.iter_mut() {
        for i in 0..(n / 10).max(5) {
            op(usize::MAX - i).await?;
        }
    }
    let mut out: Vec<Vec<Duration>> = ops.iter().map(|_| Vec::with_capacity(n)).collect();
    let block = n / ROUNDS;
    for round in 0..ROUNDS {
        for (op, samples) in ops.iter_mut().zip(&mut out) {
            for i in round * block..(round + 1) * block {
                let started = Instant::now();
                op(i).await?;
                samples.push(started.elapsed());
            }
        }
    }
    Ok(out)
}

/// A function zip of `(name, bytes, unix mode)` entries, base64 as deploys take it.
pub fn zip_of(entries: &[(&str, &[u8], u32)]) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, mode) in entries {
        out.start_file(
            *name,
            zip::write::SimpleFileOptions::default().unix_permissions(*mode),
        )?;
        out.write_all(bytes)?;
    }
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        out.finish()?.into_inner(),
    ))
}

/// User + system CPU time of every thread of `pid` so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .map(|(u, s)| u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0))
        .unwrap_or(0);
    // Linux reports these in USER_HZ, 100 per second on every architecture.
    Duration::from_millis(ticks * 10)
}
