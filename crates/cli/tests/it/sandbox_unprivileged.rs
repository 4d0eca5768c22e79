//! The hostile-function suite (`testkit::hostile`) against `minicloud up` run by an
//! unprivileged user, as on a developer's laptop: no root, no separate uids, only
//! what Linux gives an ordinary process. Under root (CI) the cloud runs as `nobody`.

use super::support::{drop_database, free_ports, gateway_url, lines_of, test_database};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use minicloud_testkit::hostile;

const NOBODY: u32 = 65534;

struct Running {
    child: std::process::Child,
    database: String,
    data_dir: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop_database(&self.database);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[tokio::test]
async fn hostile_functions_stay_sandboxed_under_an_unprivileged_minicloud() {
    let as_root = effective_uid() == 0;
    let data_dir =
        std::env::temp_dir().join(format!("minicloud-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir).unwrap();
    if as_root {
        std::os::unix::fs::chown(&data_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let (database, database_url) = test_database("unpriv");
    let redis_url = std::env::var("MINICLOUD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ports = free_ports(7);
    let names = [
        "gateway", "auth", "storage", "docdb", "bus", "invoker", "billing",
    ];
    // The checkout may sit under a private home that `nobody` cannot enter.
    let binary = if as_root {
        use std::os::unix::fs::PermissionsExt as _;
        let copy = data_dir.join("minicloud");
        std::fs::copy(env!("CARGO_BIN_EXE_minicloud"), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    } else {
        env!("CARGO_BIN_EXE_minicloud").into()
    };
    let mut command = Command::new(&binary);
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &data_dir)
        .env("DATABASE_URL", &database_url)
        .env("REDIS_URL", &redis_url)
        .current_dir(&data_dir)
        .arg("up")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--invoker-scratch-mb", "32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, port) in names.iter().zip(&ports) {
        command.arg("--port").arg(format!("{name}={port}"));
    }
    if as_root {
        command.uid(NOBODY).gid(NOBODY);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running {
        child,
        database,
        data_dir: data_dir.clone(),
    };
    let lines = lines_of(stdout, None);
    let gateway = gateway_url(&lines, Duration::from_secs(60));
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("credentials.json")).unwrap()).unwrap();
    let service_ports: BTreeMap<String, u16> = names[1..]
        .iter()
        .zip(&ports[1..])
        .map(|(name, port)| (name.to_string(), *port))
        .collect();
    hostile::run(&hostile::Target {
        gateway_url: gateway,
        service_key: credentials["service_key"].as_str().unwrap().to_owned(),
        invoker_pid: running.child.id(),
        data_dir: data_dir.clone(),
        code_dir: data_dir.join("functions"),
        service_ports,
        scratch_mb: 32,
        pids: 64,
        // `minicloud up` keeps two python3 interpreters pre-started by default.
        prestarted: true,
    })
    .await;
    drop(running);
}

/// The effective uid, from `/proc/self/status` (this test crate has no syscall crate).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .unwrap()
}
