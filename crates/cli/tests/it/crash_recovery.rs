//! Issue 16's fault test: the whole `minicloud up` process is killed (SIGKILL) in the
//! middle of a burst of document and object writes with subscriptions attached; then,
//! under a second burst, Redis is restarted and Postgres crashes (immediate shutdown,
//! recovery from its WAL on start). Afterwards every acknowledged write is stored,
//! and every stored write's change event was delivered or dead-lettered, once after
//! dedupe by event id, and no event exists for a write that is not stored.
//!
//! The test runs its own Postgres and Redis (in a temp dir, on free ports) so it can
//! crash and restart them without touching the servers other tests share.

use super::support::{free_port, gateway_url, lines_of};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// A server binary (on PATH, or Debian's Postgres dir), as `minicloud up` finds it.
fn find_binary(name: &str) -> PathBuf {
    minicloud_cli::private_servers::find_binary(name)
        .unwrap_or_else(|| panic!("{name} must be installed for this test (.ci/run installs it)"))
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// Postgres refuses to run as root: as root, run it as the `postgres` user.
fn as_postgres_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

struct Postgres {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    fn init(dir: PathBuf) -> Postgres {
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let status = as_postgres_user(&find_binary("initdb"))
            .arg("-D")
            .arg(&dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let mut postgres = Postgres {
            dir,
            port: free_port(),
            child: None,
        };
        postgres.start();
        postgres
    }

    fn start(&mut self) {
        let child = as_postgres_user(&find_binary("postgres"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        let pg_isready = find_binary("pg_isready");
        // Answering TCP is not accepting sessions (it may still be recovering).
        while !Command::new(&pg_isready)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
            .status()
            .unwrap()
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "postgres did not accept sessions"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn postmaster_pid(&self) -> u32 {
        let pid_file = std::fs::read_to_string(self.dir.join("postmaster.pid")).unwrap();
        pid_file.lines().next().unwrap().trim().parse().unwrap()
    }

    /// An immediate shutdown: every backend is killed at once, nothing is
    /// checkpointed, and the next start recovers from the WAL as after a crash.
    fn crash_and_restart(&mut self) {
        signal(self.postmaster_pid(), "QUIT");
        let mut child = self.child.take().unwrap();
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.dir.join("postmaster.pid").exists() {
            assert!(Instant::now() < deadline, "postgres did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.start();
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.child.is_some() {
            signal(self.postmaster_pid(), "QUIT");
            let _ = self.child.take().unwrap().wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Redis {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start(dir: PathBuf) -> Redis {
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            dir,
            port: free_port(),
            child: None,
        };
        redis.spawn();
        redis
    }

    /// As `minicloud up` runs its private Redis: the append-only file on.
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--save", ""])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test (.ci/run installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "redis");
    }

    /// A restart as an operator does one (SIGTERM: Redis flushes its append-only
    /// file and exits), with minicloud running and writing through it.
    fn restart(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(child.id(), "TERM");
        let _ = child.wait();
        self.spawn();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Up {
    child: Child,
    gateway: String,
    service_key: String,
}

impl Up {
    /// Its log goes to `log` (kept when the test fails).
    fn start(data_dir: &Path, postgres: &Postgres, redis: &Redis, log: &Path) -> Up {
        let mut command = Command::new(env!("CARGO_BIN_EXE_minicloud"));
        command.arg("up").arg("--data-dir").arg(data_dir);
        command.args([
            "--port",
            "gateway=0,auth=0,storage=0,docdb=0,bus=0,invoker=0,billing=0",
        ]);
        let mut child = command
            .env("DATABASE_URL", postgres.url())
            .env("REDIS_URL", redis.url())
            // Entries the killed process had in flight are reclaimed after this.
            .env("MINICLOUD_BUS_VISIBILITY_TIMEOUT", "2")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        // Logs go to stdout with the lines a user reads: all of them into the log too.
        let log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
        let lines = lines_of(child.stdout.take().unwrap(), Some(log));
        let gateway = gateway_url(&lines, Duration::from_secs(60));
        let credentials: Value = serde_json::from_str(
            &std::fs::read_to_string(data_dir.join("credentials.json")).unwrap(),
        )
        .unwrap();
        Up {
            child,
            gateway,
            service_key: credentials["service_key"].as_str().unwrap().to_owned(),
        }
    }

    fn kill(mut self) {
        signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the webhook saw: successful deliveries per event id (with the subject), and
/// how many deliveries it refused.
#[derive(Default)]
struct Seen {
    delivered: HashMap<String, (String, u32)>,
    refused: u32,
}

type Shared = Arc<Mutex<Seen>>;

/// Writes whose number ends in 7 are refused (a permanent 400), so their events end
/// as dead letters; the rest are accepted.
fn refused_subject(subject: &str) -> bool {
    subject.ends_with('7')
}

async fn receive(State(seen): State<Shared>, headers: HeaderMap) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, subject) = (header("ce-id"), header("ce-subject"));
    let mut seen = seen.lock().unwrap();
    if refused_subject(&subject) {
        seen.refused += 1;
        return StatusCode::BAD_REQUEST;
    }
    seen.delivered.entry(id).or_insert((subject, 0)).1 += 1;
    StatusCode::NO_CONTENT
}

#[derive(Default)]
struct Acked {
    objects: BTreeSet<String>,
    documents: BTreeSet<String>,
    failed: u32,
}

/// Writers until `stop`: each alternates an object upload and a document create, with
/// its own names, and records what was acknowledged (2xx received).
async fn burst(gateway: String, key: String, phase: char, stop: Arc<AtomicBool>) -> Acked {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut writers = Vec::new();
    for writer in 0..6 {
        let (client, gateway, key, stop) = (
            client.clone(),
            gateway.clone(),
            key.clone(),
            Arc::clone(&stop),
        );
        writers.push(tokio::spawn(async move {
            let mut acked = Acked::default();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("{phase}{writer}-{i}");
                let object = client
                    .put(format!("{gateway}/storage/v1/object/crash/{name}"))
                    .bearer_auth(&key)
                    .header("content-type", "text/plain")
                    .body(format!("object {name}"))
                    .send()
                    .await;
                match object {
                    Ok(r) if r.status().is_success() => {
                        acked.objects.insert(name.clone());
                    }
                    _ => {
                        acked.failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let document = client
                    .put(format!("{gateway}/db/v1/collections/crash/docs/{name}"))
                    .bearer_auth(&key)
                    .json(&json!({"n": i}))
                    .send()
                    .await;
                match document {
                    Ok(r) if r.status().is_success() => {
                        acked.documents.insert(name);
                    }
                    _ => {
                        acked.failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                i += 1;
            }
            acked
        }));
    }
    let mut all = Acked::default();
    for writer in writers {
        let acked = writer.await.unwrap();
        all.objects.extend(acked.objects);
        all.documents.extend(acked.documents);
        all.failed += acked.failed;
    }
    all
}

async fn admin(client: &reqwest::Client, up: &Up, path: &str, body: Value) -> Value {
    let response = client
        .post(format!("{}{path}", up.gateway))
        .bearer_auth(&up.service_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// Every object name and document id stored, through the public APIs (paged).
async fn stored(client: &reqwest::Client, up: &Up) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut objects = BTreeSet::new();
    let mut cursor = Value::Null;
    loop {
        let page = admin(
            client,
            up,
            "/storage/v1/object/list/crash",
            json!({"prefix":"","limit":1000,"cursor":cursor}),
        )
        .await;
        for object in page["objects"].as_array().unwrap() {
            objects.insert(object["name"].as_str().unwrap().to_owned());
        }
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let mut documents = BTreeSet::new();
    let mut cursor = Value::Null;
    loop {
        let page = admin(
            client,
            up,
            "/db/v1/collections/crash/query",
            json!({"limit":1000,"cursor":cursor}),
        )
        .await;
        for document in page["documents"].as_array().unwrap() {
            documents.insert(document["id"].as_str().unwrap().to_owned());
        }
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    (objects, documents)
}

/// Dead letters per event id (with the subject), over the given subscriptions.
async fn dead_letters(
    client: &reqwest::Client,
    up: &Up,
    subscriptions: &[String],
) -> BTreeMap<String, (String, u32)> {
    let mut letters: BTreeMap<String, (String, u32)> = BTreeMap::new();
    for subscription in subscriptions {
        let page: Value = client
            .get(format!(
                "{}/events/v1/subscriptions/{subscription}/dead-letters",
                up.gateway
            ))
            .bearer_auth(&up.service_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for letter in page["dead_letters"].as_array().unwrap() {
            let event = &letter["event"];
            let id = event["id"].as_str().unwrap().to_owned();
            let subject = event["subject"].as_str().unwrap().to_owned();
            letters.entry(id).or_insert((subject, 0)).1 += 1;
        }
    }
    letters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_and_their_events_survive_kill_9_and_restarts_of_redis_and_postgres() {
    let base = std::env::temp_dir().join(format!("minicloud-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let mut postgres = Postgres::init(base.join("postgres"));
    let mut redis = Redis::start(base.join("redis"));
    let data_dir = base.join("data");

    let seen: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = reqwest::Client::new();
    let up = Up::start(&data_dir, &postgres, &redis, &base.join("up-1.log"));
    admin(&client, &up, "/storage/v1/bucket", json!({"name":"crash"})).await;
    admin(&client, &up, "/db/v1/collections", json!({"name":"crash"})).await;
    let retry = json!({"max_attempts":2,"min_backoff_ms":20,"max_backoff_ms":50});
    let mut subscriptions = Vec::new();
    for (topic, pattern) in [
        (
            "storage",
            json!({"type":["minicloud.storage.object.created"],"data":{"bucket":["crash"]}}),
        ),
        (
            "db",
            json!({"type":["minicloud.db.document.created"],"data":{"collection":["crash"]}}),
        ),
    ] {
        let made = admin(
            &client,
            &up,
            "/events/v1/subscriptions",
            json!({"topic":topic,"pattern":pattern,"target":{"webhook":hook},"retry":retry,"max_in_flight":8}),
        )
        .await;
        subscriptions.push(made["id"].as_str().unwrap().to_owned());
    }

    // Phase A: the whole process is killed mid-burst.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(burst(
        up.gateway.clone(),
        up.service_key.clone(),
        'a',
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tokio::task::spawn_blocking(move || up.kill())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let acked_a = writers.await.unwrap();

    // Phase B: a new process; under a second burst, Redis restarts, then Postgres
    // crashes and recovers.
    let up = Up::start(&data_dir, &postgres, &redis, &base.join("up-2.log"));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(burst(
        up.gateway.clone(),
        up.service_key.clone(),
        'b',
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    postgres = tokio::task::spawn_blocking(move || {
        postgres.crash_and_restart();
        postgres
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked_b = writers.await.unwrap();

    // Every acknowledged write is stored.
    let (objects, documents) = stored(&client, &up).await;
    let mut acked_objects = acked_a.objects.clone();
    acked_objects.extend(acked_b.objects.iter().cloned());
    let mut acked_documents = acked_a.documents.clone();
    acked_documents.extend(acked_b.documents.iter().cloned());
    let lost_objects: Vec<_> = acked_objects.difference(&objects).collect();
    let lost_documents: Vec<_> = acked_documents.difference(&documents).collect();
    assert!(
        lost_objects.is_empty(),
        "acknowledged objects lost: {lost_objects:?}"
    );
    assert!(
        lost_documents.is_empty(),
        "acknowledged documents lost: {lost_documents:?}"
    );
    assert!(
        !acked_a.objects.is_empty() && !acked_b.documents.is_empty(),
        "both bursts wrote something"
    );

    // Every stored write's event arrives (delivered, or dead-lettered when refused).
    let expected: BTreeSet<String> = objects
        .iter()
        .map(|name| format!("crash/{name}"))
        .chain(documents.iter().map(|id| format!("crash/{id}")))
        .collect();
    // Objects and documents share names, so each subject is expected twice (one event
    // on each topic): count per subject.
    let mut expected_count: BTreeMap<String, u32> = BTreeMap::new();
    for name in objects.iter().chain(documents.iter()) {
        *expected_count.entry(format!("crash/{name}")).or_default() += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let (delivered, letters) = loop {
        let delivered = seen.lock().unwrap().delivered.clone();
        let letters = dead_letters(&client, &up, &subscriptions).await;
        let mut arrived: BTreeMap<String, u32> = BTreeMap::new();
        for (subject, _) in delivered.values().chain(letters.values()) {
            *arrived.entry(subject.clone()).or_default() += 1;
        }
        if arrived == expected_count {
            // Settled: a little longer, to see any late duplicate or stray event.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let letters = dead_letters(&client, &up, &subscriptions).await;
            let delivered = seen.lock().unwrap().delivered.clone();
            break (delivered, letters);
        }
        assert!(
            Instant::now() < deadline,
            "events still missing after 90 s: {} expected, {} arrived; missing {:?}; extra {:?}",
            expected_count.values().sum::<u32>(),
            arrived.values().sum::<u32>(),
            expected_count
                .iter()
                .filter(|(s, n)| arrived.get(*s) < Some(n))
                .take(10)
                .collect::<Vec<_>>(),
            arrived
                .iter()
                .filter(|(s, n)| expected_count.get(*s) < Some(n))
                .take(10)
                .collect::<Vec<_>>(),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Exactly once after dedupe: one event id per stored write, delivered or
    // dead-lettered, never both; none for a write that is not stored.
    let mut per_subject: BTreeMap<String, u32> = BTreeMap::new();
    for (id, (subject, _)) in delivered.iter().chain(letters.iter()) {
        assert!(
            expected.contains(subject),
            "an event for an unstored write: {id} {subject}"
        );
        *per_subject.entry(subject.clone()).or_default() += 1;
    }
    assert_eq!(per_subject, expected_count, "one event per stored write");
    for id in delivered.keys() {
        assert!(
            !letters.contains_key(id),
            "{id} both delivered and dead-lettered"
        );
    }
    for (id, (subject, _)) in &delivered {
        assert!(
            !refused_subject(subject),
            "{id}: a refused subject was delivered"
        );
    }
    for (id, (subject, _)) in &letters {
        assert!(
            refused_subject(subject),
            "{id}: an accepted subject was dead-lettered"
        );
    }

    let duplicate_deliveries: u32 = delivered.values().map(|(_, n)| n - 1).sum();
    let duplicate_letters: u32 = letters.values().map(|(_, n)| n - 1).sum();
    let acked = acked_objects.len() + acked_documents.len();
    let stored_writes = objects.len() + documents.len();
    eprintln!(
        "crash test: {acked} writes acknowledged ({} before the kill, {} after), \
         {stored_writes} stored ({} stored without an acknowledgement, in flight at a fault), \
         {} requests failed during the faults; events: {} delivered ({duplicate_deliveries} \
         duplicate deliveries removed by event id), {} dead-lettered ({duplicate_letters} \
         duplicates), 0 lost, 0 for unstored writes",
        acked_a.objects.len() + acked_a.documents.len(),
        acked_b.objects.len() + acked_b.documents.len(),
        stored_writes - acked,
        acked_a.failed + acked_b.failed,
        delivered.len(),
        letters.len(),
    );
    drop(up);
    drop(postgres);
    drop(redis);
    let _ = std::fs::remove_dir_all(&base);
}
