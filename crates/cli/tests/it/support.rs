//! What the process tests share.

use std::process::{Command, Stdio};

/// A database of the test's own on the test server (`MINICLOUD_TEST_DATABASE_URL`),
/// `mc_test_<what>_<pid>`: its name and URL. Whoever connects first creates it.
pub(crate) fn test_database(what: &str) -> (String, String) {
    let server = std::env::var("MINICLOUD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("mc_test_{what}_{}", std::process::id());
    let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
    (name, url)
}

/// Drops a test database, open connections and all.
pub(crate) fn drop_database(name: &str) {
    let _ = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
        .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A child process (a `minicloud serve`), killed and reaped when dropped.
pub(crate) struct Served(pub(crate) std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now (the caller binds it soon after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` distinct free ports (all held at once while choosing, so none repeats).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The lines a child prints on stdout, read on a thread of their own (and appended to
/// `log` when given, so a failed test leaves them behind).
pub(crate) fn lines_of(
    stdout: std::process::ChildStdout,
    mut log: Option<std::fs::File>,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead as _, Write as _};
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(log) = &mut log {
                let _ = writeln!(log, "{line}");
            }
            let _ = sender.send(line);
        }
    });
    lines
}

/// The first line starting with `prefix` (after leading spaces) within `timeout`.
pub(crate) fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    prefix: &str,
    timeout: std::time::Duration,
) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.trim_start().starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no line starting with {prefix:?} within {timeout:?}"),
        }
    }
}

/// The gateway URL `minicloud up` printed: tests that do not check ports let it pick
/// free ones (port 0), so no other test can take them between choosing and binding.
pub(crate) fn gateway_url(
    lines: &std::sync::mpsc::Receiver<String>,
    timeout: std::time::Duration,
) -> String {
    wait_for_line(lines, "gateway", timeout)
        .split_whitespace()
        .last()
        .expect("a URL on the gateway line")
        .to_owned()
}

/// A meter-journal directory of this test's own (a `serve` without one would write
/// under the crate's working directory, and its leftovers would be shipped by
/// whichever test started next there).
pub(crate) fn meters_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("minicloud-meters-{}", std::process::id()))
}
