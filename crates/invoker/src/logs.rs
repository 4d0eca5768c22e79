//! Function logs: the platform's `START`/`END`/`REPORT` lines and the function's
//! own stdout/stderr, per request id, kept in memory with bounded retention and
//! broadcast to live tails.
//!
//! In memory rather than in Postgres because a warm invocation writes three to
//! five lines and the whole invoke budget is a few hundred microseconds; logs of a
//! local cloud are for debugging, not for audit (docs/architecture.md).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

/// Per function: whichever limit is hit first drops the oldest lines.
pub const MAX_LINES: usize = 10_000;
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// START, END, REPORT and the platform's own errors.
    Platform,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Increasing per function; `?after=` resumes from it.
    pub seq: u64,
    pub time: DateTime<Utc>,
    #[schema(value_type = Option<String>)]
    pub request_id: Option<Arc<str>>,
    pub stream: LogStream,
    pub message: String,
}

pub struct FunctionLogs {
    lines: Mutex<Ring>,
    /// Made by the first follower: its 1024 slots cost ~48 KB, which 200 idle
    /// functions without followers should not pay.
    live: std::sync::OnceLock<broadcast::Sender<Arc<LogLine>>>,
}

impl std::fmt::Debug for FunctionLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionLogs").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    next_seq: u64,
}

/// What `GET …/logs` asks for.
#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    pub request_id: Option<String>,
    pub after: Option<u64>,
    pub since: Option<DateTime<Utc>>,
    pub contains: Option<String>,
    pub stream: Option<LogStream>,
}

impl LogFilter {
    pub fn matches(&self, line: &LogLine) -> bool {
        self.request_id
            .as_deref()
            .is_none_or(|id| line.request_id.as_deref() == Some(id))
            && self.after.is_none_or(|after| line.seq > after)
            && self.since.is_none_or(|since| line.time >= since)
            && self
                .contains
                .as_deref()
                .is_none_or(|text| line.message.contains(text))
            && self.stream.is_none_or(|stream| line.stream == stream)
    }
}

impl FunctionLogs {
    fn new() -> FunctionLogs {
        FunctionLogs {
            lines: Mutex::new(Ring::default()),
            live: std::sync::OnceLock::new(),
        }
    }

    pub fn push(&self, request_id: Option<Arc<str>>, stream: LogStream, message: String) {
        let line = {
            let mut ring = self.lines.lock().unwrap();
            let line = Arc::new(LogLine {
                seq: ring.next_seq,
                time: Utc::now(),
                request_id,
                stream,
                message,
            });
            ring.next_seq += 1;
            ring.bytes += line.message.len();
            ring.lines.push_back(Arc::clone(&line));
            while ring.lines.len() > MAX_LINES || ring.bytes > MAX_BYTES {
                match ring.lines.pop_front() {
                    Some(old) => ring.bytes -= old.message.len(),
                    None => break,
                }
            }
            line
        };
        if let Some(live) = self.live.get() {
            // No receivers left is fine.
            let _ = live.send(line);
        }
    }

    /// The newest `limit` lines that match, oldest first.
    pub fn query(&self, filter: &LogFilter, limit: usize) -> Vec<Arc<LogLine>> {
        let ring = self.lines.lock().unwrap();
        let mut out: Vec<_> = ring
            .lines
            .iter()
            .rev()
            .filter(|line| filter.matches(line))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.live
            .get_or_init(|| broadcast::channel(1024).0)
            .subscribe()
    }

    /// The last 4 KB of one invocation's log, for `X-Amz-Log-Result`.
    pub fn tail_of(&self, request_id: &str) -> String {
        let filter = LogFilter {
            request_id: Some(request_id.to_owned()),
            ..Default::default()
        };
        let mut text = String::new();
        for line in self.query(&filter, 200) {
            text.push_str(&line.message);
            text.push('\n');
        }
        if text.len() > 4096 {
            let mut cut = text.len() - 4096;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
        text
    }
}

/// Every function's log.
#[derive(Debug, Default)]
pub struct LogStore {
    functions: RwLock<HashMap<String, Arc<FunctionLogs>>>,
}

impl LogStore {
    pub fn of(&self, function: &str) -> Arc<FunctionLogs> {
        if let Some(logs) = self.functions.read().unwrap().get(function) {
            return Arc::clone(logs);
        }
        let mut functions = self.functions.write().unwrap();
        Arc::clone(
            functions
                .entry(function.to_owned())
                .or_insert_with(|| Arc::new(FunctionLogs::new())),
        )
    }

    pub fn remove(&self, function: &str) {
        self.functions.write().unwrap().remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_bounded_by_lines_and_bytes() {
        let logs = FunctionLogs::new();
        for i in 0..(MAX_LINES + 10) {
            logs.push(None, LogStream::Stdout, format!("line {i}"));
        }
        let all = logs.query(&LogFilter::default(), usize::MAX);
        assert_eq!(all.len(), MAX_LINES);
        assert_eq!(all[0].message, "line 10");
        let big = "x".repeat(64 * 1024);
        for _ in 0..100 {
            logs.push(None, LogStream::Stderr, big.clone());
        }
        let kept: usize = logs
            .query(&LogFilter::default(), usize::MAX)
            .iter()
            .map(|l| l.message.len())
            .sum();
        assert!(kept <= MAX_BYTES, "{kept} bytes kept");
    }

    #[test]
    fn filters_and_tail_select_one_request() {
        let logs = FunctionLogs::new();
        let a: Arc<str> = Arc::from("req-a");
        logs.push(Some(Arc::clone(&a)), LogStream::Platform, "START a".into());
        logs.push(Some(Arc::from("req-b")), LogStream::Stdout, "from b".into());
        logs.push(Some(Arc::clone(&a)), LogStream::Stdout, "from a".into());
        assert_eq!(logs.tail_of("req-a"), "START a\nfrom a\n");
        let filter = LogFilter {
            contains: Some("from".into()),
            after: Some(1),
            ..Default::default()
        };
        let found = logs.query(&filter, 10);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].message, "from a");
        logs.push(Some(a), LogStream::Stdout, "é".repeat(3000));
        assert!(logs.tail_of("req-a").len() <= 4096);
    }
}
