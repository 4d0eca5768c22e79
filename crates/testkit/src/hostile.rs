//! The hostile-function suite (issue 15): functions that try every way out of their
//! sandbox, run against a cloud started in-process (as root in CI) and against a
//! `minicloud up` run by an unprivileged user (`crates/cli/tests`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

pub const HOSTILE_PY: &str = include_str!("../hostile/hostile.py");

/// What the suite needs to know of the cloud under attack.
#[derive(Debug)]
pub struct Target {
    pub gateway_url: String,
    pub service_key: String,
    /// The process that runs the invoker.
    pub invoker_pid: u32,
    /// minicloud's data dir, and the invoker's code dir inside it.
    pub data_dir: PathBuf,
    pub code_dir: PathBuf,
    /// The services' own ports (their gRPC APIs), never reachable from a function.
    pub service_ports: BTreeMap<String, u16>,
    /// The instance scratch size the cloud was started with.
    pub scratch_mb: u64,
    /// The per-instance pids limit the cloud was started with.
    pub pids: u64,
    /// Whether the Python functions must run on pre-started interpreters (the
    /// invoker keeps at least two) or on freshly spawned ones (it keeps none).
    pub prestarted: bool,
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    for (name, bytes) in files {
        zip.start_file(
            *name,
            zip::write::SimpleFileOptions::default().unix_permissions(0o644),
        )
        .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

struct Api {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {value}");
        value
    }

    async fn invoke(&self, name: &str, event: Value) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/functions/v1/{name}/invoke"),
            Some(event),
        )
        .await
    }
}

fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// Deploys the hostile function beside a victim with a stronger role, has it try
/// every attack, and asserts that each failed while its own role still works.
pub async fn run(target: &Target) {
    let api = Api {
        http: reqwest::Client::new(),
        url: target.gateway_url.clone(),
        key: target.service_key.clone(),
    };
    use reqwest::Method;
    // A bucket the hostile function's role may read one folder of.
    api.ok(
        Method::POST,
        "/storage/v1/bucket",
        Some(json!({"name":"loot"})),
    )
    .await;
    for path in ["open/readme.txt", "secret/plans.txt"] {
        let response = api
            .http
            .post(format!("{}/storage/v1/object/loot/{path}", api.url))
            .bearer_auth(&api.key)
            .header("content-type", "text/plain")
            .body("data")
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
    api.ok(
        Method::POST,
        "/auth/v1/admin/roles",
        Some(json!({"name":"limited","policies":[{"effect":"allow","actions":["storage:GetObject"],"resources":["storage:loot/open/*"]}]})),
    )
    .await;
    api.ok(
        Method::POST,
        "/auth/v1/admin/roles",
        Some(json!({"name":"powerful","policies":[{"effect":"allow","actions":["*"],"resources":["*"]}]})),
    )
    .await;
    let zip = base64::engine::general_purpose::STANDARD
        .encode(zip_of(&[("hostile.py", HOSTILE_PY.as_bytes())]));
    // The victim's bundle differs, so its code is unpacked in a dir of its own.
    let victim_zip = base64::engine::general_purpose::STANDARD.encode(zip_of(&[
        ("hostile.py", HOSTILE_PY.as_bytes()),
        ("victim.txt", b"the victim's own file"),
    ]));
    for (name, role, zip) in [
        ("victim", "powerful", &victim_zip),
        ("attacker", "limited", &zip),
    ] {
        api.ok(
            Method::POST,
            "/functions/v1",
            Some(
                json!({"name":name,"runtime":"python3","handler":"hostile.handler",
                "role":role,"timeout_s":10,"memory_mb":256,"keep_warm_s":300,
                "env":{"SECRET":format!("{name}-secret")},"code":{"zip_base64":zip}}),
            ),
        )
        .await;
    }
    if target.prestarted {
        // Both first calls take a waiting interpreter: wait until two wait.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, sandbox) = api.call(Method::GET, "/functions/v1/sandbox", None).await;
            if sandbox["prestart"]["ready"].as_u64() >= Some(2) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never pre-started: {sandbox}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (status, victim) = api.invoke("victim", json!({"mode":"whoami"})).await;
    assert_eq!(status, 200, "{victim}");
    let (status, attacker) = api.invoke("attacker", json!({"mode":"whoami"})).await;
    assert_eq!(status, 200, "{attacker}");
    for (name, who) in [("victim", &victim), ("attacker", &attacker)] {
        assert_eq!(who["prestarted"], target.prestarted, "{name}: {who}");
        // Its own environment, nothing of the other function's or the invoker's.
        assert_eq!(who["secret"], format!("{name}-secret"), "{who}");
        let platform = |variable: &str| {
            ["AWS_", "LAMBDA_", "MINICLOUD_", "OTEL_", "_"]
                .iter()
                .any(|prefix| variable.starts_with(prefix))
                || [
                    "PATH",
                    "LANG",
                    "TZ",
                    "PYTHONUNBUFFERED",
                    "HOME",
                    "TMPDIR",
                    "SECRET",
                ]
                .contains(&variable)
        };
        let foreign: Vec<&Value> = who["environ"]
            .as_array()
            .expect("environ")
            .iter()
            .filter(|v| !platform(v.as_str().unwrap_or_default()))
            .collect();
        assert!(foreign.is_empty(), "{name} sees {foreign:?}");
    }

    // The victim is mid-invocation while the attacker tries to take its event.
    let busy_victim = tokio::spawn({
        let http = api.http.clone();
        let url = format!("{}/functions/v1/victim/invoke", api.url);
        let key = api.key.clone();
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"mode":"sleep","seconds":4}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let victim_code_dir = PathBuf::from(victim["task_root"].as_str().unwrap());
    let unlisted = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let targets = json!({
        "invoker_pid": target.invoker_pid,
        "credentials": target.data_dir.join("credentials.json"),
        "data_dir": target.data_dir,
        "victim_pid": victim["pid"],
        "code_cache": target.code_dir,
        "victim_code_file": victim_code_dir.join("victim.txt"),
        "runtime_bootstrap": target.code_dir.join(".runtimes/python3/bootstrap.py"),
        "node_bootstrap": target.code_dir.join(".runtimes/nodejs/bootstrap.js"),
        "postgres_port": 5432,
        "postgres_socket": "/var/run/postgresql/.s.PGSQL.5432",
        "redis_port": 6379,
        "service_ports": target.service_ports,
        "unlisted_port": unlisted.local_addr().unwrap().port(),
        "victim_runtime_api": victim["runtime_api"],
        "scratch_fill_mb": target.scratch_mb + 16,
        "fork_count": target.pids + 20,
        "legit_paths": {
            "allowed": "/storage/v1/object/loot/open/readme.txt",
            "denied": "/storage/v1/object/loot/secret/plans.txt",
        },
    });
    let (status, report) = api.invoke("attacker", json!({"targets": targets})).await;
    assert_eq!(status, 200, "{report}");
    let attempts = report["attempts"].as_object().expect("attempts");
    let escaped: Vec<String> = attempts
        .iter()
        .filter(|(_, outcome)| outcome["blocked"] != true)
        .map(|(name, outcome)| format!("{name}: {}", outcome["detail"]))
        .collect();
    assert!(escaped.is_empty(), "the function got out: {escaped:#?}");
    // Sanity: the attempts really ran (a report of nothing proves nothing).
    for name in [
        "read_credentials",
        "read_invoker_environ",
        "read_sibling_environ",
        "modify_victim_code",
        "postgres_tcp",
        "postgres_unix_socket",
        "redis_tcp",
        "other_runtime_api",
        "read_shadow",
        "root",
        "ptrace_invoker",
        "mount_tmpfs",
        "setsid",
        "fill_scratch",
        "fork_beyond_pids_limit",
    ] {
        assert!(
            attempts.contains_key(name),
            "{name} was not tried: {report}"
        );
    }
    assert!(
        target
            .service_ports
            .keys()
            .all(|s| attempts.contains_key(&format!("service_port_{s}"))),
        "{report}"
    );
    // Its own role works, and only as far as it goes.
    assert_eq!(report["legit"]["allowed"], 200, "{report}");
    assert_eq!(report["legit"]["denied"], 403, "{report}");
    // The victim's event was not taken: it finishes normally.
    assert_eq!(busy_victim.await.unwrap().unwrap(), 200);
    drop(unlisted);

    // The victim's code and the shared runtime are intact.
    let code = std::fs::read_to_string(victim_code_dir.join("victim.txt")).unwrap();
    assert_eq!(code, "the victim's own file");
    let (status, again) = api.invoke("victim", json!({"mode":"whoami"})).await;
    assert_eq!(status, 200, "{again}");

    // A child that tries to leave the process group dies with the timed-out
    // instance.
    let marker = format!("{}.{}", 300, std::process::id() % 100_000 + 100_000);
    api.ok(
        Method::PUT,
        "/functions/v1/escaper",
        Some(
            json!({"runtime":"python3","handler":"hostile.handler","timeout_s":1,
            "code":{"zip_base64":zip}}),
        ),
    )
    .await;
    let (status, body) = api
        .invoke(
            "escaper",
            json!({"mode":"escape","targets":{"marker":marker}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("timed out"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        processes_with(&marker).is_empty(),
        "a process of the killed instance survived: {:?}",
        processes_with(&marker)
    );
}

/// `credentials.json` as `minicloud up` writes it, so the suite can try to read it
/// from a cloud that testkit started.
pub fn plant_credentials(data_dir: &Path, service_key: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = data_dir.join("credentials.json");
    std::fs::write(&path, json!({"service_key": service_key}).to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
