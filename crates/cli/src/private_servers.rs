//! When nothing answers at the configured Postgres or Redis address but their server
//! binaries are installed, `minicloud up` runs private ones under the data dir and
//! stops them on exit.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A server process this run started.
#[derive(Debug)]
pub struct PrivateServer {
    pub name: &'static str,
    child: Child,
}

impl PrivateServer {
    /// SIGTERM (a clean shutdown for both Postgres and Redis), then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        tracing::info!(server = self.name, "stopped private server");
    }
}

/// `host:port` of a `scheme://[userinfo@]host[:port][/…]` URL.
fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match hostport.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((hostport.to_owned(), default_port)),
    }
}

async fn answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// A server binary on PATH or, for Postgres, in Debian's version dirs.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    // Debian keeps the Postgres server binaries off PATH.
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `ready` every 50 ms for up to 30 s, failing early if `child` exits.
async fn wait_until<F, Fut>(name: &str, child: &mut Child, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last_error = String::new();
    for _ in 0..600 {
        match ready().await {
            Ok(()) => return Ok(()),
            Err(error) => last_error = error,
        }
        if let Some(status) = child.try_wait()? {
            bail!("private {name} exited during start-up ({status})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("private {name} was not ready within 30 s: {last_error}")
}

async fn wait_until_answering(name: &str, port: u16, child: &mut Child) -> anyhow::Result<()> {
    wait_until(name, child, || async {
        if answers("127.0.0.1", port).await {
            Ok(())
        } else {
            Err(format!("nothing answers on port {port}"))
        }
    })
    .await
}

/// Postgres listens before it takes sessions: until its start-up is done it answers
/// "the database system is starting up" (57P03), which failed `minicloud up` now and
/// then on a busy machine. A session that connects is the real sign of readiness.
async fn wait_until_accepting_sessions(
    port: u16,
    password: Option<&str>,
    child: &mut Child,
) -> anyhow::Result<()> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let mut options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("postgres")
        .database("postgres");
    if let Some(password) = password {
        options = options.password(password);
    }
    wait_until("postgres", child, || async {
        let connection = options.connect().await.map_err(|e| e.to_string())?;
        let _ = connection.close().await;
        Ok(())
    })
    .await
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Postgres refuses to run as root: as root, run it as the `postgres` user.
fn as_postgres_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.arg("-u").arg("postgres").arg("--").arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A random password in a new file only minicloud's user may read.
fn write_password_file(path: &Path) -> anyhow::Result<()> {
    use rand::RngCore as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{}", hex::encode(bytes))?;
    Ok(())
}

/// Returns the URL to use and, when one was started, the private server.
pub async fn ensure_postgres(
    url: &str,
    data_dir: &Path,
) -> anyhow::Result<(String, Option<PrivateServer>)> {
    let Some((host, port)) = host_port(url, 5432) else {
        return Ok((url.to_owned(), None));
    };
    if answers(&host, port).await {
        return Ok((url.to_owned(), None));
    }
    let (Some(initdb), Some(postgres)) = (find_binary("initdb"), find_binary("postgres")) else {
        bail!(
            "nothing answers at {host}:{port} (DATABASE_URL) and no Postgres server is installed"
        );
    };
    let dir = std::path::absolute(data_dir.join("postgres"))?;
    // The superuser's password, generated once and kept beside the data (0600):
    // anything else on the machine that reaches the port needs it.
    let password_file = std::path::absolute(data_dir.join("postgres.password"))?;
    if !dir.join("PG_VERSION").exists() {
        tokio::fs::create_dir_all(&dir).await?;
        if !password_file.exists() {
            write_password_file(&password_file)?;
        }
        if running_as_root() {
            Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(&dir)
                .arg(&password_file)
                .status()
                .await?;
        }
        let status = as_postgres_user(&initdb)
            .arg("-D")
            .arg(&dir)
            .arg("-U")
            .arg("postgres")
            .arg("--auth=scram-sha-256")
            .arg(format!("--pwfile={}", password_file.display()))
            .arg("-E")
            .arg("UTF8")
            .stdout(Stdio::null())
            .status()
            .await
            .context("running initdb")?;
        if !status.success() {
            bail!("initdb failed ({status})");
        }
    }
    let port = free_port()?;
    let mut child = as_postgres_user(&postgres)
        .arg("-D")
        .arg(&dir)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&dir)
        .arg("-c")
        .arg("listen_addresses=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting postgres")?;
    wait_until_answering("postgres", port, &mut child).await?;
    // A data dir made before passwords (trust auth) has no password file.
    let password = std::fs::read_to_string(&password_file)
        .ok()
        .map(|p| p.trim().to_owned());
    wait_until_accepting_sessions(port, password.as_deref(), &mut child).await?;
    tracing::info!(port, dir = %dir.display(), "started a private postgres");
    let credentials = match &password {
        Some(password) => format!("postgres:{password}"),
        None => "postgres".to_owned(),
    };
    Ok((
        format!("postgres://{credentials}@127.0.0.1:{port}/minicloud"),
        Some(PrivateServer {
            name: "postgres",
            child,
        }),
    ))
}

pub async fn ensure_redis(
    url: &str,
    data_dir: &Path,
) -> anyhow::Result<(String, Option<PrivateServer>)> {
    let Some((host, port)) = host_port(url, 6379) else {
        return Ok((url.to_owned(), None));
    };
    if answers(&host, port).await {
        return Ok((url.to_owned(), None));
    }
    let Some(redis) = find_binary("redis-server") else {
        bail!("nothing answers at {host}:{port} (REDIS_URL) and no redis-server is installed");
    };
    let dir = std::path::absolute(data_dir.join("redis"))?;
    tokio::fs::create_dir_all(&dir).await?;
    let password_file = std::path::absolute(data_dir.join("redis.password"))?;
    if !password_file.exists() {
        write_password_file(&password_file)?;
    }
    let password = std::fs::read_to_string(&password_file)?.trim().to_owned();
    let port = free_port()?;
    // The password goes in on stdin as a config line, not on the command line
    // (`/proc/<pid>/cmdline` is readable by every local user).
    let mut child = Command::new(redis)
        .arg("-")
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(&dir)
        .arg("--appendonly")
        .arg("yes")
        .arg("--save")
        .arg("")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server")?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt as _;
        stdin
            .write_all(format!("requirepass {password}\n").as_bytes())
            .await?;
        // Closing stdin ends the config redis reads from it.
        drop(stdin);
    }
    wait_until_answering("redis", port, &mut child).await?;
    tracing::info!(port, dir = %dir.display(), "started a private redis");
    Ok((
        format!("redis://:{password}@127.0.0.1:{port}"),
        Some(PrivateServer {
            name: "redis",
            child,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_and_port_from_urls() {
        assert_eq!(
            host_port("postgres://u:p@db:6000/x", 5432),
            Some(("db".into(), 6000))
        );
        assert_eq!(
            host_port("postgres://db/x", 5432),
            Some(("db".into(), 5432))
        );
        assert_eq!(
            host_port("redis://127.0.0.1:6379", 6379),
            Some(("127.0.0.1".into(), 6379))
        );
        assert_eq!(host_port("nonsense", 1), None);
    }
}
