//! The invoker end to end: functions built for AWS Lambda (the `lambda_runtime`
//! crate, `awslambdaric`) and for our python3/nodejs runtimes, deployed over REST
//! and invoked through the gateway — cold, warm, timed out, crashed, throttled,
//! asynchronously through the bus, from bus events and from HTTP routes.

use std::io::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use minicloud_testkit::TestCloud;
use serde_json::{Value, json};

pub(crate) fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, mode) in entries {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        out.start_file(*name, options).unwrap();
        out.write_all(bytes).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn echo_bundle() -> Vec<u8> {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_echo-function")).unwrap();
    zip_of(&[("bootstrap", &binary, 0o755)])
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn deploy(cloud: &TestCloud, mut body: Value, zip: &[u8]) -> (u16, Value) {
    body["code"] = json!({"zip_base64": b64(zip)});
    let response = http()
        .post(format!("{}/functions/v1", cloud.gateway_url()))
        .bearer_auth(&cloud.keys.service_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn deploy_ok(cloud: &TestCloud, body: Value, zip: &[u8]) -> Value {
    let (status, out) = deploy(cloud, body, zip).await;
    assert_eq!(status, 201, "{out}");
    out
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn invoke_with(
    cloud: &TestCloud,
    path: &str,
    payload: &Value,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = http()
        .post(format!("{}{path}", cloud.gateway_url()))
        .bearer_auth(&cloud.keys.service_key)
        .body(payload.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn invoke(cloud: &TestCloud, name: &str, payload: Value) -> Answer {
    invoke_with(
        cloud,
        &format!("/functions/v1/{name}/invoke"),
        &payload,
        &[],
    )
    .await
}

/// Starts an invocation and returns at once; the task yields its status and body.
fn invoke_in_background(
    cloud: &TestCloud,
    name: &str,
    payload: Value,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = format!("{}/functions/v1/{name}/invoke", cloud.gateway_url());
    let key = cloud.keys.service_key.clone();
    tokio::spawn(async move {
        let response = http()
            .post(url)
            .bearer_auth(key)
            .body(payload.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

async fn log_lines(cloud: &TestCloud, name: &str, query: &str) -> Vec<Value> {
    let body: Value = http()
        .get(format!(
            "{}/functions/v1/{name}/logs?limit=1000&{query}",
            cloud.gateway_url()
        ))
        .bearer_auth(&cloud.keys.service_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["lines"].as_array().cloned().unwrap_or_default()
}

/// Polls `check` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn process_gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for an init that does not reap is dead too.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn instances(cloud: &TestCloud, name: &str) -> Value {
    http()
        .get(format!(
            "{}/functions/v1/{name}/instances",
            cloud.gateway_url()
        ))
        .bearer_auth(&cloud.keys.service_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST /functions/v1/{name}` (supabase `functions.invoke`): the request reaches the
/// function as an HTTP event, text or bytes; who may not invoke, an oversized body
/// and a bad name are refused before any function runs.
#[tokio::test]
async fn edge_style_invoke_passes_the_request_and_refuses_what_it_must() {
    let cloud = TestCloud::start().await.unwrap();
    deploy_ok(
        &cloud,
        json!({"name":"edge","runtime":"provided","timeout_s":5}),
        &echo_bundle(),
    )
    .await;
    let post = |name: &str, key: &str, body: Vec<u8>| {
        http()
            .post(format!("{}/functions/v1/{name}", cloud.gateway_url()))
            .bearer_auth(key)
            .body(body)
            .send()
    };
    let service = cloud.keys.service_key.clone();
    let text: Value = post("edge", &service, b"hello".to_vec())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(text["event"]["body"], "hello");
    assert_eq!(text["event"]["rawPath"], "/");
    assert_eq!(text["event"]["requestContext"]["http"]["method"], "POST");
    // Bytes that are not text (a NUL among them) arrive base64-encoded.
    let bytes: Value = post("edge", &service, vec![0, 159, 146, 150])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bytes["event"]["isBase64Encoded"], true);
    assert_eq!(bytes["event"]["body"], "AJ+Slg==");
    // The anon key has no functions:Invoke.
    let anon = post("edge", &cloud.keys.anon_key, b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(anon.status(), 403);
    // Over 4.5 MB: refused while it streams.
    let big = post("edge", &service, vec![b'x'; 5 * 1024 * 1024])
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let body: Value = big.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    for bad in ["Bad%20Name", &"x".repeat(200)] {
        let response = post(bad, &service, b"{}".to_vec()).await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let missing = post("nope", &service, b"{}".to_vec()).await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_lambda_runtime_function_runs_cold_then_warm_with_lambdas_contract() {
    let cloud = TestCloud::start().await.unwrap();
    deploy_ok(
        &cloud,
        json!({"name":"echo","runtime":"provided","memory_mb":128,"timeout_s":5,"env":{"GREETING":"hi"}}),
        &echo_bundle(),
    )
    .await;

    let first = invoke(
        &cloud,
        "echo",
        json!({"hello":"world","print":"first call"}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["event"]["hello"], "world");
    assert_eq!(
        first.body["function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:echo"
    );
    assert!(first.header("x-amz-function-error").is_none());
    let request_id = first.header("x-amzn-requestid").unwrap().to_owned();
    assert_eq!(first.body["request_id"], request_id.as_str());
    // The Runtime API's trace header carries the invoke's W3C trace id.
    let trace = first.body["trace_id"].as_str().unwrap_or_default();
    assert!(trace.starts_with("Root=1-"), "{trace}");
    // The function's sdk continues that trace: same 128-bit id, W3C form.
    let root = trace
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("Root=1-")
        .replace('-', "");
    let traceparent = first.body["traceparent"].as_str().unwrap();
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(root.as_str()),
        "{traceparent}"
    );

    // Scrubbed environment: the platform's variables and the function's own only.
    let env = first.body["env"].as_object().unwrap();
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "echo");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128");
    assert!(
        env["AWS_LAMBDA_RUNTIME_API"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(env["MINICLOUD_URL"], cloud.gateway_url());
    for (key, _) in std::env::vars() {
        let platform = ["PATH", "LANG", "TZ", "HOME", "TMPDIR", "PYTHONUNBUFFERED"]
            .contains(&key.as_str())
            || key.starts_with("AWS_")
            || key.starts_with("LAMBDA_")
            || key.starts_with("MINICLOUD_")
            || key.starts_with("_");
        assert!(
            platform || !env.contains_key(&key),
            "the invoker's {key} leaked into the function"
        );
    }
    assert!(!env.contains_key("MINICLOUD_TEST_DATABASE_URL"));
    // Its own working and tmp dirs.
    let cwd = first.body["cwd"].as_str().unwrap();
    assert!(cwd.contains("/.instances/"), "{cwd}");
    assert_eq!(env["TMPDIR"], format!("{cwd}/tmp"));

    let second = invoke(&cloud, "echo", json!({"n":2})).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body["pid"], first.body["pid"],
        "the warm instance served it"
    );

    // Logs: START/END/REPORT per request, Init Duration on the cold start only,
    // the function's stdout and stderr tagged with the request id.
    // END and REPORT are written just after the answer (off the caller's path).
    let has_report = |id: String| {
        let cloud = &cloud;
        async move {
            log_lines(
                cloud,
                "echo",
                &format!("request_id={id}&stream=platform&contains=REPORT"),
            )
            .await
            .len()
                == 1
        }
    };
    assert!(eventually(Duration::from_secs(2), || has_report(request_id.clone())).await);
    let lines = log_lines(&cloud, "echo", &format!("request_id={request_id}")).await;
    let text: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        text[0].starts_with(&format!("START RequestId: {request_id}")),
        "{text:?}"
    );
    assert!(text.contains(&"first call"), "{text:?}");
    assert!(text.contains(&"to stderr: first call"), "{text:?}");
    assert!(
        text.iter()
            .any(|l| l.starts_with(&format!("END RequestId: {request_id}")))
    );
    let report = text.iter().find(|l| l.starts_with("REPORT")).unwrap();
    assert!(report.contains("Memory Size: 128 MB"), "{report}");
    assert!(report.contains("Init Duration:"), "{report}");
    let used: u64 = report
        .split("Max Memory Used: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(used > 0, "{report}");
    let second_id = second.header("x-amzn-requestid").unwrap();
    assert!(eventually(Duration::from_secs(2), || has_report(second_id.to_owned())).await);
    let warm = log_lines(&cloud, "echo", &format!("request_id={second_id}")).await;
    let warm_report = warm
        .iter()
        .find(|l| l["message"].as_str().unwrap().starts_with("REPORT"))
        .unwrap();
    assert!(
        !warm_report["message"]
            .as_str()
            .unwrap()
            .contains("Init Duration")
    );

    // The Lambda Invoke API: tail of the log, dry run, unknown function.
    let tailed = invoke_with(
        &cloud,
        "/2015-03-31/functions/echo/invocations",
        &json!({"print":"tailed"}),
        &[("x-amz-log-type", "Tail")],
    )
    .await;
    assert_eq!(tailed.status, 200);
    let log_tail = |header: Option<&str>| {
        let tail = base64::engine::general_purpose::STANDARD
            .decode(header.expect("an X-Amz-Log-Result"))
            .unwrap();
        String::from_utf8(tail).unwrap()
    };
    let tail = log_tail(tailed.header("x-amz-log-result"));
    assert!(tail.contains("START RequestId:"), "{tail}");
    assert!(tail.contains("\ntailed\n"), "{tail}");
    assert!(tail.contains("to stderr: tailed"), "{tail}");
    // 2,000 lines printed just before the answer: the tail (its last 4 KB) ends
    // with the last of them, then END and REPORT — the capture is waited for.
    let burst = invoke_with(
        &cloud,
        "/2015-03-31/functions/echo/invocations",
        &json!({"print_lines": 2000}),
        &[("x-amz-log-type", "Tail")],
    )
    .await;
    assert_eq!(burst.status, 200);
    let tail = log_tail(burst.header("x-amz-log-result"));
    let lines: Vec<&str> = tail.lines().collect();
    let last_printed = lines.iter().rposition(|l| l.starts_with("burst line "));
    assert_eq!(
        last_printed.map(|at| lines[at]),
        Some("burst line 1999"),
        "{tail}"
    );
    assert!(
        lines[last_printed.unwrap() + 1].starts_with("END RequestId:"),
        "{tail}"
    );
    assert!(tail.len() <= 4096, "{}", tail.len());
    let dry = invoke_with(
        &cloud,
        "/2015-03-31/functions/echo/invocations",
        &json!({}),
        &[("x-amz-invocation-type", "DryRun")],
    )
    .await;
    assert_eq!(dry.status, 204);
    let missing = invoke_with(
        &cloud,
        "/2015-03-31/functions/nope/invocations",
        &json!({}),
        &[],
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("x-amzn-errortype"),
        Some("ResourceNotFoundException")
    );
    assert!(
        missing.body["message"]
            .as_str()
            .unwrap()
            .contains("Function not found")
    );

    // An anonymous caller may not invoke.
    let anonymous = http()
        .post(format!("{}/functions/v1/echo/invoke", cloud.gateway_url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn timeouts_crashes_and_memory_hogs_fail_alone() {
    let cloud = TestCloud::start().await.unwrap();
    deploy_ok(
        &cloud,
        json!({"name":"slow","runtime":"provided","timeout_s":1}),
        &echo_bundle(),
    )
    .await;
    deploy_ok(
        &cloud,
        json!({"name":"steady","runtime":"provided"}),
        &echo_bundle(),
    )
    .await;
    let steady = invoke(&cloud, "steady", json!({})).await;
    assert_eq!(steady.status, 200);

    // Timeout: the whole process group dies, the child it started included.
    let started = Instant::now();
    let timed_out = invoke(
        &cloud,
        "slow",
        json!({"spawn_sleeper":true,"sleep_ms":10_000}),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(timed_out.status, 200);
    assert_eq!(timed_out.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(timed_out.body["errorType"], "Sandbox.Timedout");
    assert!(
        timed_out.body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Task timed out after 1.00 seconds")
    );
    let request_id = timed_out.header("x-amzn-requestid").unwrap();
    let lines = log_lines(&cloud, "slow", &format!("request_id={request_id}")).await;
    let sleeper: u64 = lines
        .iter()
        .filter_map(|l| {
            l["message"]
                .as_str()?
                .strip_prefix("sleeper pid ")?
                .parse()
                .ok()
        })
        .next()
        .expect("the function logged its child's pid");
    assert!(
        eventually(Duration::from_secs(3), || async { process_gone(sleeper) }).await,
        "the function's child {sleeper} outlived the timeout"
    );
    // The next call starts a fresh instance.
    let after = invoke(&cloud, "slow", json!({"n":1})).await;
    assert_eq!(after.status, 200, "{}", after.body);

    // A crash mid-invocation is a Runtime.ExitError; the function then recovers.
    let crashed = invoke(&cloud, "slow", json!({"exit":3})).await;
    assert_eq!(crashed.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(crashed.body["errorType"], "Runtime.ExitError");
    assert!(
        crashed.body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status 3"),
        "{}",
        crashed.body
    );
    assert_eq!(invoke(&cloud, "slow", json!({})).await.status, 200);

    // 128 MB of memory: allocating 1 GiB fails the function, not the invoker.
    let hog = invoke(&cloud, "slow", json!({"alloc_mb":1024})).await;
    assert_eq!(
        hog.header("x-amz-function-error"),
        Some("Unhandled"),
        "{}",
        hog.body
    );
    assert_eq!(hog.body["errorType"], "Runtime.ExitError", "{}", hog.body);
    // Within the limit is fine.
    let modest = invoke(&cloud, "slow", json!({"alloc_mb":32})).await;
    assert_eq!(modest.status, 200, "{}", modest.body);
    assert!(
        modest.header("x-amz-function-error").is_none(),
        "{}",
        modest.body
    );

    // A handled error is a function error with the runtime's own error body.
    let failed = invoke(&cloud, "steady", json!({"fail":"no luck"})).await;
    assert_eq!(failed.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(failed.body["errorMessage"], "no luck");
    // Through all of it, the other function kept its warm instance.
    let again = invoke(&cloud, "steady", json!({})).await;
    assert_eq!(again.body["pid"], steady.body["pid"]);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn concurrency_limits_throttle_sync_invokes() {
    let cloud = TestCloud::start().await.unwrap();
    deploy_ok(
        &cloud,
        json!({"name":"single","runtime":"provided","reserved_concurrency":1,"timeout_s":5}),
        &echo_bundle(),
    )
    .await;
    let slow = invoke_in_background(&cloud, "single", json!({"sleep_ms":1500}));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let throttled = invoke(&cloud, "single", json!({})).await;
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    assert_eq!(
        throttled.header("x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(throttled.body["error"]["code"], "too_many_requests");
    let lambda = invoke_with(
        &cloud,
        "/2015-03-31/functions/single/invocations",
        &json!({}),
        &[],
    )
    .await;
    assert_eq!(lambda.status, 429);
    assert_eq!(
        lambda.header("x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(slow.await.unwrap().0, 200);
    assert_eq!(invoke(&cloud, "single", json!({})).await.status, 200);

    // A caller that hangs up does not cancel the call nor lose the instance.
    let abandoned = http()
        .post(format!(
            "{}/functions/v1/single/invoke",
            cloud.gateway_url()
        ))
        .bearer_auth(&cloud.keys.service_key)
        .timeout(Duration::from_millis(300))
        .body(json!({"sleep_ms": 1000, "print": "finished anyway"}).to_string())
        .send()
        .await;
    assert!(abandoned.is_err(), "the client gave up first");
    assert!(
        eventually(Duration::from_secs(3), || async {
            log_lines(&cloud, "single", "contains=finished%20anyway&stream=stdout")
                .await
                .len()
                == 1
                && instances(&cloud, "single").await["idle_pids"]
                    .as_array()
                    .is_some_and(|p| p.len() == 1)
        })
        .await,
        "the abandoned call did not finish on a kept instance"
    );
    let warm_pid = instances(&cloud, "single").await["idle_pids"][0].clone();
    assert_eq!(
        invoke(&cloud, "single", json!({})).await.body["pid"],
        warm_pid
    );

    // Reserved concurrency 0 switches a function off.
    deploy_ok(
        &cloud,
        json!({"name":"off","runtime":"provided","reserved_concurrency":0}),
        &echo_bundle(),
    )
    .await;
    assert_eq!(invoke(&cloud, "off", json!({})).await.status, 429);

    // The per-function metrics saw all of it.
    let metrics = http()
        .get(format!("{}/metrics", cloud.urls.invoker))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    // slow, abandoned and the two warm calls ran; two sync calls were throttled.
    assert_eq!(
        value(r#"minicloud_invoker_invocations_total{service="invoker",function="single"}"#),
        4.0
    );
    assert_eq!(
        value(r#"minicloud_invoker_throttles_total{service="invoker",function="single"}"#),
        2.0
    );
    assert_eq!(
        value(r#"minicloud_invoker_throttles_total{service="invoker",function="off"}"#),
        1.0
    );
    assert_eq!(
        value(r#"minicloud_invoker_cold_starts_total{service="invoker",function="single"}"#),
        1.0
    );
    assert_eq!(
        value(r#"minicloud_invoker_duration_seconds_count{service="invoker",function="single"}"#),
        4.0
    );
    assert_eq!(
        value(r#"minicloud_invoker_concurrent_executions{service="invoker",function="single"}"#),
        0.0
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn idle_instances_stop_provisioned_ones_stay_and_redeploys_drain() {
    let cloud = TestCloud::start().await.unwrap();
    deploy_ok(
        &cloud,
        json!({"name":"brief","runtime":"provided","keep_warm_s":1}),
        &echo_bundle(),
    )
    .await;
    let answer = invoke(&cloud, "brief", json!({})).await;
    let pid = answer.body["pid"].as_u64().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { process_gone(pid) }).await,
        "the idle instance was not stopped after keep_warm_s"
    );
    assert_eq!(instances(&cloud, "brief").await["live"], 0);

    // Provisioned: started without any invocation, and kept.
    deploy_ok(
        &cloud,
        json!({"name":"ready","runtime":"provided","provisioned_concurrency":1,"keep_warm_s":0}),
        &echo_bundle(),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            instances(&cloud, "ready").await["idle_pids"]
                .as_array()
                .is_some_and(|p| p.len() == 1)
        })
        .await,
        "no provisioned instance was started"
    );
    let provisioned_pid = instances(&cloud, "ready").await["idle_pids"][0]
        .as_u64()
        .unwrap();
    let answer = invoke(&cloud, "ready", json!({})).await;
    assert_eq!(answer.body["pid"], provisioned_pid);
    assert_eq!(
        answer.body["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"],
        "provisioned-concurrency"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !process_gone(provisioned_pid),
        "keep_warm_s does not stop provisioned instances"
    );
    // A provisioned instance that crashes is replaced.
    let _ = invoke(&cloud, "ready", json!({"exit":1})).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            instances(&cloud, "ready").await["idle_pids"]
                .as_array()
                .is_some_and(|p| p.len() == 1 && p[0].as_u64() != Some(provisioned_pid))
        })
        .await,
        "the crashed provisioned instance was not replaced"
    );

    // Redeploy while a call is in flight: it finishes on the old code, the next
    // call runs the new one.
    deploy_ok(
        &cloud,
        json!({"name":"versioned","runtime":"provided","env":{"VERSION":"1"},"timeout_s":5}),
        &echo_bundle(),
    )
    .await;
    let in_flight = invoke_in_background(&cloud, "versioned", json!({"sleep_ms":1000}));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let redeployed = http()
        .put(format!("{}/functions/v1/versioned", cloud.gateway_url()))
        .bearer_auth(&cloud.keys.service_key)
        .json(&json!({"runtime":"provided","env":{"VERSION":"2"},"timeout_s":5}))
        .send()
        .await
        .unwrap();
    assert_eq!(redeployed.status(), 200);
    let (_, old) = in_flight.await.unwrap();
    assert_eq!(old["env"]["VERSION"], "1", "{old}");
    let old_pid = old["pid"].as_u64().unwrap();
    let new = invoke(&cloud, "versioned", json!({})).await;
    assert_eq!(new.body["env"]["VERSION"], "2");
    assert!(eventually(Duration::from_secs(3), || async { process_gone(old_pid) }).await);
    cloud.stop().await.unwrap();
}

/// As on Lambda, a function's timeout counts from the moment its runtime takes the
/// event: a runtime that initialises for longer than the timeout still answers its
/// first call (a cold Node or Python start on a busy machine did not).
#[tokio::test]
async fn a_slow_init_does_not_use_up_the_function_timeout() {
    let cloud = TestCloud::start().await.unwrap();
    let binary = std::fs::read(env!("CARGO_BIN_EXE_echo-function")).unwrap();
    let bundle = zip_of(&[
        (
            "bootstrap",
            b"#!/bin/sh\nsleep 2\nexec \"$LAMBDA_TASK_ROOT/echo\"\n",
            0o755,
        ),
        ("echo", &binary, 0o755),
    ]);
    deploy_ok(
        &cloud,
        json!({"name":"slowinit","runtime":"provided","timeout_s":1}),
        &bundle,
    )
    .await;
    let answer = invoke(&cloud, "slowinit", json!({"hello": 1})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("x-amz-function-error"),
        None,
        "{}",
        answer.body
    );
    // The limit still holds once the event is taken.
    let slow = invoke(&cloud, "slowinit", json!({"sleep_ms": 1500})).await;
    assert_eq!(slow.body["errorType"], "Sandbox.Timedout", "{}", slow.body);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn python_node_and_awslambdaric_handlers_run() {
    let cloud = TestCloud::start().await.unwrap();
    let python = zip_of(&[(
        "app/main.py",
        b"import os\ndef handler(event, context):\n    print('python says', event.get('n'))\n    return {'n': event['n'] + 1, 'name': context.function_name, 'ms': context.get_remaining_time_in_millis() > 0, 'bytecode': os.path.exists(__cached__)}\n",
        0o644,
    )]);
    deploy_ok(
        &cloud,
        json!({"name":"py","runtime":"python3","handler":"app/main.handler"}),
        &python,
    )
    .await;
    let answer = invoke(&cloud, "py", json!({"n": 41})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The module came with its bytecode, compiled when the code was unpacked
    // (instances cannot write their code dir to cache it themselves).
    assert_eq!(
        answer.body,
        json!({"n": 42, "name": "py", "ms": true, "bytecode": true})
    );
    let raised = zip_of(&[(
        "bad.py",
        b"def handler(event, context):\n    raise ValueError('not today')\n",
        0o644,
    )]);
    deploy_ok(
        &cloud,
        json!({"name":"pyerr","runtime":"python3","handler":"bad.handler"}),
        &raised,
    )
    .await;
    let failed = invoke(&cloud, "pyerr", json!({})).await;
    assert_eq!(failed.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(failed.body["errorType"], "ValueError");
    assert_eq!(failed.body["errorMessage"], "not today");
    // Its trace names the file where it lives, not where its bytecode was made.
    let trace = failed.body["stackTrace"].to_string();
    assert!(trace.contains("bad.py"), "{trace}");
    assert!(!trace.contains(".unpack-"), "{trace}");

    // An init error is reported as such.
    let broken = zip_of(&[(
        "app.py",
        b"import no_such_module\ndef handler(e, c):\n    return 1\n",
        0o644,
    )]);
    deploy_ok(
        &cloud,
        json!({"name":"pyinit","runtime":"python3","handler":"app.handler"}),
        &broken,
    )
    .await;
    let init = invoke(&cloud, "pyinit", json!({})).await;
    assert_eq!(init.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(
        init.body["errorType"], "Runtime.ImportModuleError",
        "{}",
        init.body
    );

    let node = zip_of(&[(
        "index.mjs",
        b"export const handler = async (event, context) => ({ doubled: event.n * 2, name: context.functionName });\n",
        0o644,
    )]);
    deploy_ok(
        &cloud,
        json!({"name":"js","runtime":"nodejs","handler":"index.handler"}),
        &node,
    )
    .await;
    let answer = invoke(&cloud, "js", json!({"n": 21})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, json!({"doubled": 42, "name": "js"}));

    // An unmodified handler run by AWS's own runtime interface client, from PyPI.
    let pydeps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps");
    assert!(
        pydeps.join("awslambdaric").is_dir(),
        "awslambdaric missing: `make test` installs it into target/pydeps"
    );
    let mut entries: Vec<(String, Vec<u8>, u32)> = vec![
        (
            "bootstrap".into(),
            b"#!/bin/sh\ncd \"$LAMBDA_TASK_ROOT\"\nexec python3 -m awslambdaric lambda_function.lambda_handler\n".to_vec(),
            0o755,
        ),
        (
            "lambda_function.py".into(),
            b"def lambda_handler(event, context):\n    return {'ric': True, 'echo': event, 'arn': context.invoked_function_arn}\n".to_vec(),
            0o644,
        ),
    ];
    for entry in walk(&pydeps) {
        let relative = entry
            .strip_prefix(&pydeps)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if relative.contains("__pycache__") {
            continue;
        }
        entries.push((relative, std::fs::read(&entry).unwrap(), 0o644));
    }
    let refs: Vec<(&str, &[u8], u32)> = entries
        .iter()
        .map(|(n, b, m)| (n.as_str(), b.as_slice(), *m))
        .collect();
    deploy_ok(
        &cloud,
        json!({"name":"ric","runtime":"provided","timeout_s":10}),
        &zip_of(&refs),
    )
    .await;
    let answer = invoke(&cloud, "ric", json!({"k": "v"})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["ric"], true, "{}", answer.body);
    assert_eq!(answer.body["echo"], json!({"k": "v"}));
    cloud.stop().await.unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn hostile_bundles_bad_configs_and_oversized_payloads_are_refused() {
    let cloud = TestCloud::start().await.unwrap();
    let good = echo_bundle();
    let cases: Vec<(Value, Vec<u8>, u16, &str)> = vec![
        (
            json!({"name":"slip","runtime":"provided"}),
            zip_of(&[("bootstrap", b"x", 0o755), ("../../escape", b"x", 0o644)]),
            400,
            "outside",
        ),
        (
            json!({"name":"abs","runtime":"provided"}),
            zip_of(&[("bootstrap", b"x", 0o755), ("/etc/evil", b"x", 0o644)]),
            400,
            "outside",
        ),
        (
            json!({"name":"notzip","runtime":"provided"}),
            b"PK but not really".to_vec(),
            400,
            "zip",
        ),
        (
            json!({"name":"noboot","runtime":"provided"}),
            zip_of(&[("main", b"x", 0o755)]),
            400,
            "bootstrap",
        ),
        (
            json!({"name":"nohandler","runtime":"python3","handler":"app.handler"}),
            zip_of(&[("other.py", b"", 0o644)]),
            400,
            "app.py",
        ),
        (
            json!({"name":"bad name!","runtime":"provided"}),
            good.clone(),
            400,
            "function name",
        ),
        (
            json!({"name":"rt","runtime":"cobol"}),
            good.clone(),
            400,
            "runtime",
        ),
        (
            json!({"name":"mem","runtime":"provided","memory_mb":64}),
            good.clone(),
            400,
            "memory_mb",
        ),
        (
            json!({"name":"to","runtime":"provided","timeout_s":0}),
            good.clone(),
            400,
            "timeout_s",
        ),
        (
            json!({"name":"env","runtime":"provided","env":{"AWS_SECRET_ACCESS_KEY":"x"}}),
            good.clone(),
            400,
            "reserved",
        ),
        (
            json!({"name":"env2","runtime":"provided","env":{"1BAD":"x"}}),
            good.clone(),
            400,
            "env name",
        ),
        (
            json!({"name":"prov","runtime":"provided","reserved_concurrency":1,"provisioned_concurrency":2}),
            good.clone(),
            400,
            "provisioned",
        ),
        (
            json!({"name":"hand","runtime":"python3","handler":"../x.handler"}),
            good.clone(),
            400,
            "handler",
        ),
    ];
    for (body, zip, status, needle) in cases {
        let name = body["name"].as_str().unwrap().to_owned();
        let (got, error) = deploy(&cloud, body, &zip).await;
        assert_eq!(got, status, "{name}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{name}: {message}");
        // Nothing was written.
        let get = http()
            .get(format!(
                "{}/functions/v1/{}",
                cloud.gateway_url(),
                urlencode(&name)
            ))
            .bearer_auth(&cloud.keys.service_key)
            .send()
            .await
            .unwrap();
        assert!(
            matches!(get.status().as_u16(), 400 | 404),
            "{name} was stored"
        );
    }
    // A symlink entry.
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    out.start_file("bootstrap", zip::write::SimpleFileOptions::default())
        .unwrap();
    out.write_all(b"x").unwrap();
    out.add_symlink(
        "secrets",
        "/etc/shadow",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    let linked = out.finish().unwrap().into_inner();
    let (status, error) =
        deploy(&cloud, json!({"name":"link","runtime":"provided"}), &linked).await;
    assert_eq!(status, 400, "{error}");

    // Only the service role may hand a function a role.
    let session = cloud
        .client()
        .with_token(cloud.keys.anon_key.clone())
        .signup("dev@example.com", "correct horse battery")
        .await
        .unwrap();
    let token = session.access_token.as_str();
    let escalation = http()
        .post(format!("{}/functions/v1", cloud.gateway_url()))
        .bearer_auth(token)
        .json(&json!({"name":"esc","runtime":"provided","role":"admin","code":{"zip_base64":b64(&good)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(escalation.status(), 403);

    // Payload limits: 6 MB sync, 256 KB async; non-JSON payloads.
    deploy_ok(&cloud, json!({"name":"limits","runtime":"provided"}), &good).await;
    let big = json!({"blob": "x".repeat(6 * 1024 * 1024)});
    let answer = invoke(&cloud, "limits", big).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    let medium = json!({"blob": "x".repeat(300 * 1024)});
    let answer = invoke_with(
        &cloud,
        "/2015-03-31/functions/limits/invocations",
        &medium,
        &[("x-amz-invocation-type", "Event")],
    )
    .await;
    assert_eq!(answer.status, 413);
    assert_eq!(
        answer.header("x-amzn-errortype"),
        Some("RequestTooLargeException")
    );
    let not_json = http()
        .post(format!(
            "{}/functions/v1/limits/invoke",
            cloud.gateway_url()
        ))
        .bearer_auth(&cloud.keys.service_key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let bad_type = invoke_with(
        &cloud,
        "/functions/v1/limits/invoke",
        &json!({}),
        &[("x-amz-invocation-type", "Sometimes")],
    )
    .await;
    assert_eq!(bad_type.status, 400);
    // A config-only redeploy must still fit the stored code.
    let mismatched = http()
        .put(format!("{}/functions/v1/limits", cloud.gateway_url()))
        .bearer_auth(&cloud.keys.service_key)
        .json(&json!({"runtime":"python3","handler":"app.handler"}))
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), 400);
    let error: Value = mismatched.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("app.py"),
        "{error}"
    );
    let kept: Value = cloud.admin().get("/functions/v1/limits").await.unwrap();
    assert_eq!(kept["runtime"], "provided");

    // Malformed queries and bodies on the other endpoints.
    for (method, path, body) in [
        ("GET", "/functions/v1/limits/logs?stream=bogus", None),
        ("GET", "/functions/v1/limits/logs?limit=0", None),
        ("GET", "/functions/v1/limits/logs?since=yesterday", None),
        ("GET", "/functions/v1/limits/logs?after=-1", None),
        ("GET", "/functions/v1/bad%20name/instances", None),
        (
            "POST",
            "/functions/v1/limits/triggers",
            Some(json!({"topic":"functions","http":{"path":"/x"}})),
        ),
        (
            "POST",
            "/functions/v1/limits/triggers",
            Some(json!({"http":{"path":"/a/../b"}})),
        ),
        (
            "POST",
            "/functions/v1/limits/triggers",
            Some(json!({"http":{"methods":["BREW"],"path":"/x"}})),
        ),
        (
            "POST",
            "/functions/v1/limits/triggers",
            Some(json!({"topic":"functions","surprise":1})),
        ),
        ("PUT", "/functions/v1/limits/code", None),
    ] {
        let mut request = http()
            .request(
                method.parse().unwrap(),
                format!("{}{path}", cloud.gateway_url()),
            )
            .bearer_auth(&cloud.keys.service_key);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let error: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            matches!(status, 400 | 415),
            "{method} {path}: {status} {error}"
        );
        assert!(
            error["error"]["message"].is_string(),
            "{method} {path}: {error}"
        );
    }

    // A response over 6 MB is the function's error, not a broken connection.
    let huge = invoke(&cloud, "limits", json!({"respond_bytes": 7 * 1024 * 1024})).await;
    assert_eq!(huge.header("x-amz-function-error"), Some("Unhandled"));
    cloud.stop().await.unwrap();
}

fn urlencode(name: &str) -> String {
    name.replace(' ', "%20").replace('!', "%21")
}

#[tokio::test]
async fn async_invokes_bus_triggers_and_http_routes() {
    let cloud = TestCloud::start().await.unwrap();
    deploy_ok(
        &cloud,
        json!({"name":"worker","runtime":"provided"}),
        &echo_bundle(),
    )
    .await;

    // Async: 202 at once, runs through the bus.
    let queued = invoke_with(
        &cloud,
        "/2015-03-31/functions/worker/invocations",
        &json!({"print":"async hello"}),
        &[("x-amz-invocation-type", "Event")],
    )
    .await;
    assert_eq!(queued.status, 202, "{}", queued.body);
    assert!(queued.body["request_id"].is_string());
    assert!(
        eventually(Duration::from_secs(10), || async {
            log_lines(&cloud, "worker", "contains=async%20hello&stream=stdout")
                .await
                .len()
                == 1
        })
        .await,
        "the async invocation did not run"
    );

    // A failing async invocation: 3 attempts, then the dead-letter topic.
    let failing = invoke_with(
        &cloud,
        "/functions/v1/worker/invoke",
        &json!({"fail":"always broken"}),
        &[("x-amz-invocation-type", "Event")],
    )
    .await;
    assert_eq!(failing.status, 202);
    let dead_letters = || async {
        let body: Value = http()
            .get(format!(
                "{}/events/v1/subscriptions/sub_fnasync_worker/dead-letters",
                cloud.gateway_url()
            ))
            .bearer_auth(&cloud.keys.service_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["dead_letters"].as_array().cloned().unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            !dead_letters().await.is_empty()
        })
        .await,
        "the failing invocation was not dead-lettered"
    );
    let letter = &dead_letters().await[0];
    assert_eq!(letter["attempts"], 3, "{letter}");
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap()
            .contains("always broken"),
        "{letter}"
    );
    let attempts = log_lines(&cloud, "worker", "contains=START").await.len();
    assert_eq!(
        attempts,
        1 + 3,
        "one async success and three failed attempts"
    );

    // A bus trigger with a pattern: matching events run the function with the
    // CloudEvent as its event.
    let admin = cloud.admin();
    let _: Value = admin
        .post("/events/v1/topics", &json!({"name":"orders"}))
        .await
        .unwrap();
    let trigger: Value = admin
        .post(
            "/functions/v1/worker/triggers",
            &json!({"topic":"orders","pattern":{"type":["order.placed"]}}),
        )
        .await
        .unwrap();
    assert!(
        trigger["subscription_id"]
            .as_str()
            .unwrap()
            .starts_with("sub_fn_")
    );
    for (id, kind) in [("o1", "order.placed"), ("o2", "order.cancelled")] {
        let _: Value = admin
            .post(
                "/events/v1/topics/orders/events",
                &json!({"specversion":"1.0","id":id,"source":"/shop","type":kind,"data":{"print":format!("order {id}")}}),
            )
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            !log_lines(&cloud, "worker", "contains=START")
                .await
                .is_empty()
                && log_lines(&cloud, "worker", "stream=platform&contains=START")
                    .await
                    .len()
                    == 5
        })
        .await,
        "the trigger did not run the function"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        log_lines(&cloud, "worker", "stream=platform&contains=START")
            .await
            .len(),
        5,
        "only the matching event ran it"
    );
    let bad_trigger = http()
        .post(format!(
            "{}/functions/v1/worker/triggers",
            cloud.gateway_url()
        ))
        .bearer_auth(&cloud.keys.service_key)
        .json(&json!({"topic":"orders","pattern":{"type":"not-a-list"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_trigger.status(), 400);

    // An HTTP route: API Gateway v2.0 events in, the function's answer out.
    let _: Value = admin
        .post(
            "/functions/v1/worker/triggers",
            &json!({"http":{"methods":["GET"],"path":"/hello/*"}}),
        )
        .await
        .unwrap();
    // `/fn/{name}/` is the path `/`, which a `/*` route matches (issue 16).
    let _: Value = admin
        .post(
            "/functions/v1/worker/triggers",
            &json!({"http":{"methods":["GET"],"path":"/*"}}),
        )
        .await
        .unwrap();
    let _: Value = admin
        .post(
            "/functions/v1/worker/triggers",
            &json!({"http":{"methods":["POST"],"path":"/upload"}}),
        )
        .await
        .unwrap();
    for path in ["/fn/worker/", "/fn/worker"] {
        let root = http()
            .get(format!("{}{path}", cloud.gateway_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(root.status(), 200, "{path}");
    }
    // A body over the limit is refused while it streams, not buffered first: a
    // 200 MB upload to a public route leaves this process's peak memory (the whole
    // cloud runs in it) well below the body's size (issue 16).
    let peak_kib = minicloud_testkit::peak_memory_kib;
    let before = peak_kib();
    let chunk = axum::body::Bytes::from(vec![b'x'; 1024 * 1024]);
    let chunks =
        futures::stream::iter((0..200).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let big = http()
        .post(format!("{}/fn/worker/upload", cloud.gateway_url()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    // The answer is 413, or a reset once the invoker stops draining (32 MB).
    if let Ok(response) = big {
        assert_eq!(response.status(), 413);
    }
    let grown_mib = (peak_kib() - before) / 1024;
    assert!(grown_mib < 64, "peak memory grew by {grown_mib} MiB");
    let routed: Value = http()
        .get(format!(
            "{}/fn/worker/hello/there?x=1&x=2",
            cloud.gateway_url()
        ))
        .header("cookie", "a=b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = &routed["event"];
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["rawPath"], "/hello/there");
    assert_eq!(event["rawQueryString"], "x=1&x=2");
    assert_eq!(event["queryStringParameters"]["x"], "1,2");
    assert_eq!(event["requestContext"]["http"]["method"], "GET");
    assert_eq!(event["cookies"][0], "a=b");
    let unrouted = http()
        .post(format!("{}/fn/worker/hello/there", cloud.gateway_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unrouted.status(), 404);

    // Deleting the function removes its subscriptions.
    let deleted = http()
        .delete(format!("{}/functions/v1/worker", cloud.gateway_url()))
        .bearer_auth(&cloud.keys.service_key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let subscriptions: Value = admin.get("/events/v1/subscriptions").await.unwrap();
    assert!(
        subscriptions["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["target"]["function"] != "worker"),
        "{subscriptions}"
    );
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn the_internal_grpc_apis_refuse_malformed_requests() {
    use minicloud_proto::bus::v1::bus_service_client::BusServiceClient;
    use minicloud_proto::bus::v1::{DeleteSubscriptionRequest, EnsureSubscriptionRequest};
    use minicloud_proto::invoker::v1::InvokeRequest;
    use minicloud_proto::invoker::v1::invoker_service_client::InvokerServiceClient;

    let cloud = TestCloud::start().await.unwrap();
    deploy_ok(
        &cloud,
        json!({"name":"grpc","runtime":"provided"}),
        &echo_bundle(),
    )
    .await;
    let mut invoker = InvokerServiceClient::new(cloud.service_channel(&cloud.urls.invoker));
    let invoke = |function: &str, payload: &[u8], is_cloud_event: bool| InvokeRequest {
        function: function.to_owned(),
        payload: payload.to_vec(),
        is_cloud_event,
    };
    for (request, code) in [
        (
            invoke("bad name!", b"{}", false),
            tonic::Code::InvalidArgument,
        ),
        (invoke("missing", b"{}", false), tonic::Code::NotFound),
        (
            invoke("grpc", b"{not json", true),
            tonic::Code::InvalidArgument,
        ),
    ] {
        let status = invoker.invoke(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }
    // A well-formed one runs, and an async invocation's event arrives unwrapped.
    let event = json!({"specversion":"1.0","id":"1","source":"/t","type":"minicloud.function.invoke","data":{"echo":7}});
    let answer = invoker
        .invoke(invoke("grpc", event.to_string().as_bytes(), true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.function_error, "");
    assert_eq!(
        serde_json::from_slice::<Value>(&answer.payload).unwrap(),
        json!({"echo":7})
    );

    let mut bus = BusServiceClient::new(cloud.service_channel(&cloud.urls.bus));
    let good = json!({"topic":"functions","target":{"function":"grpc"}}).to_string();
    for (id, spec) in [
        ("not_sub_prefixed", good.as_str()),
        ("sub_x", "{not json"),
        (
            "sub_x",
            r#"{"topic":"functions","target":{"function":"bad name!"}}"#,
        ),
        (
            "sub_x",
            r#"{"topic":"no-such-topic","target":{"function":"grpc"}}"#,
        ),
        (
            "sub_x",
            r#"{"topic":"functions","target":{"function":"grpc"},"pattern":{"type":"x"}}"#,
        ),
    ] {
        let status = bus
            .ensure_subscription(EnsureSubscriptionRequest {
                id: id.into(),
                subscription_json: spec.into(),
                owner: String::new(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ),
            "{id} {spec}: {status:?}"
        );
    }
    // Ensuring twice keeps one subscription; deleting an unknown id says so.
    for _ in 0..2 {
        let id = bus
            .ensure_subscription(EnsureSubscriptionRequest {
                id: "sub_twice".into(),
                subscription_json: good.clone(),
                owner: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .id;
        assert_eq!(id, "sub_twice");
    }
    let deleted = bus
        .delete_subscription(DeleteSubscriptionRequest {
            id: "sub_nope".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!deleted.deleted);
    cloud.stop().await.unwrap();
}

#[tokio::test]
async fn an_aws_sdk_lambda_client_invokes_through_the_gateway() {
    use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_lambda::operation::invoke::InvokeError;
    use aws_sdk_lambda::primitives::Blob;
    use aws_sdk_lambda::types::{InvocationType, LogType};

    let cloud = TestCloud::start().await.unwrap();
    deploy_ok(
        &cloud,
        json!({"name":"sdk","runtime":"provided"}),
        &echo_bundle(),
    )
    .await;
    deploy_ok(
        &cloud,
        json!({"name":"sdkoff","runtime":"provided","reserved_concurrency":0}),
        &echo_bundle(),
    )
    .await;
    // The access key id carries the minicloud credential; the SDK signs with SigV4.
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(cloud.gateway_url())
        .credentials_provider(Credentials::new(
            cloud.keys.service_key.clone(),
            "not-checked",
            None,
            None,
            "minicloud",
        ))
        .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled())
        .build();
    let lambda = aws_sdk_lambda::Client::from_conf(config);

    let out = lambda
        .invoke()
        .function_name("sdk")
        .payload(Blob::new(r#"{"echo":"hi"}"#))
        .log_type(LogType::Tail)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status_code(), 200);
    assert!(out.function_error().is_none());
    let payload: Value = serde_json::from_slice(out.payload().unwrap().as_ref()).unwrap();
    assert_eq!(payload, json!({"echo":"hi"}));
    let tail = base64::engine::general_purpose::STANDARD
        .decode(out.log_result().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(tail)
            .unwrap()
            .contains("START RequestId:")
    );

    let failed = lambda
        .invoke()
        .function_name("sdk")
        .payload(Blob::new(r#"{"fail":"from the sdk"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.function_error(), Some("Unhandled"));
    let error: Value = serde_json::from_slice(failed.payload().unwrap().as_ref()).unwrap();
    assert_eq!(error["errorMessage"], "from the sdk");

    let queued = lambda
        .invoke()
        .function_name("sdk")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(r#"{"echo":"later"}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status_code(), 202);

    // Errors arrive as the SDK's typed errors.
    let missing = lambda
        .invoke()
        .function_name("nope")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            missing.into_service_error(),
            InvokeError::ResourceNotFoundException(_)
        ),
        "missing function"
    );
    let throttled = lambda
        .invoke()
        .function_name("sdkoff")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            throttled.into_service_error(),
            InvokeError::TooManyRequestsException(_)
        ),
        "throttled"
    );
    // A SigV4 header without a credential is refused, not mistaken for anonymous.
    let unsigned = http()
        .post(format!(
            "{}/2015-03-31/functions/sdk/invocations",
            cloud.gateway_url()
        ))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=x",
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 400);
    assert_eq!(
        unsigned.headers()["x-amzn-errortype"],
        "IncompleteSignatureException"
    );
    cloud.stop().await.unwrap();
}

/// Waits until the invoker has `n` python3 interpreters pre-started.
async fn prestarted_ready(cloud: &TestCloud, n: u64) {
    let ready = eventually(Duration::from_secs(20), || async {
        let sandbox: Value = http()
            .get(format!("{}/functions/v1/sandbox", cloud.gateway_url()))
            .bearer_auth(&cloud.keys.service_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sandbox["prestart"]["ready"].as_u64() >= Some(n)
    })
    .await;
    assert!(ready, "the invoker never had {n} interpreters pre-started");
}

/// Issue 21: a cold start takes a pre-started interpreter, which becomes exactly
/// its function — its environment (PYTHONPATH honoured), its memory limit, its
/// current code after a redeploy, its import errors — and functions whose
/// environment an interpreter reads only at start get a fresh one. (The hostile
/// suite in `sandbox.rs` runs on pre-started interpreters too.)
#[tokio::test]
async fn a_pre_started_interpreter_becomes_exactly_its_function() {
    let cloud = TestCloud::start().await.unwrap();
    let who = |version: u32| {
        let source = format!(
            "import os, resource, sys\n\
             def handler(event, context):\n\
             \x20   return {{'version': {version}, 'prestarted': '--prestarted' in sys.argv,\n\
             \x20           'data': list(resource.getrlimit(resource.RLIMIT_DATA)),\n\
             \x20           'secret': os.environ.get('SECRET'), 'path': sys.path[:2],\n\
             \x20           'hash_seed': os.environ.get('PYTHONHASHSEED'),\n\
             \x20           'env_names': sorted(os.environ), 'sys_path': sys.path,\n\
             \x20           'modules': sorted(m for m in sys.modules if 'minicloud' in m)}}\n"
        );
        zip_of(&[("who.py", source.as_bytes(), 0o644)])
    };
    let config = json!({"name":"who","runtime":"python3","handler":"who.handler","memory_mb":256,
        "env":{"SECRET":"first","PYTHONPATH":"/opt/extra"}});
    deploy_ok(&cloud, config.clone(), &who(1)).await;
    prestarted_ready(&cloud, 2).await;
    let first = invoke(&cloud, "who", json!({})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let task_root = first.body["path"][0].as_str().unwrap().to_owned();
    let mut first_body = first.body.clone();
    let (env_names, sys_path, modules) = {
        let body = first_body.as_object_mut().unwrap();
        let mut take = |key: &str| body.remove(key).unwrap();
        (take("env_names"), take("sys_path"), take("modules"))
    };
    assert_eq!(
        first_body,
        json!({"version": 1, "prestarted": true, "secret": "first", "hash_seed": null,
               "data": [(256 + 64) << 20, (256 + 64) << 20], "path": [task_root, "/opt/extra"]})
    );
    // Nothing left of its time as a pre-started interpreter: no variable of its
    // own (its environment is rewritten in place, not cleared), no module or
    // path entry of its import warm-up.
    assert_eq!(modules, json!([]), "{}", first.body);
    assert!(!sys_path.to_string().contains("warm-up"), "{}", first.body);
    // A fresh interpreter gives the same answer, but for how it was started.
    let fresh = TestCloud::builder()
        .invoker(|invoker| invoker.prestart = 0)
        .start()
        .await
        .unwrap();
    deploy_ok(&fresh, config.clone(), &who(1)).await;
    let spawned = invoke(&fresh, "who", json!({})).await;
    assert_eq!(spawned.body["prestarted"], false, "{}", spawned.body);
    assert_eq!(spawned.body["data"], first.body["data"]);
    assert_eq!(spawned.body["secret"], first.body["secret"]);
    assert_eq!(spawned.body["path"][1], "/opt/extra", "{}", spawned.body);
    assert_eq!(spawned.body["env_names"], env_names);
    // Past the task root (another cloud's dir here), the same search path.
    assert_eq!(spawned.body["sys_path"][0], spawned.body["path"][0]);
    assert_eq!(
        spawned.body["sys_path"].as_array().unwrap()[1..],
        sys_path.as_array().unwrap()[1..]
    );
    fresh.stop().await.unwrap();

    // A redeploy runs the new code, on a pre-started interpreter again.
    let mut changed = config.clone();
    changed["env"]["SECRET"] = json!("second");
    let response = http()
        .put(format!("{}/functions/v1/who", cloud.gateway_url()))
        .bearer_auth(&cloud.keys.service_key)
        .json(&{
            let mut body = changed;
            body["code"] = json!({"zip_base64": b64(&who(2))});
            body
        })
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    prestarted_ready(&cloud, 2).await;
    let second = invoke(&cloud, "who", json!({})).await;
    assert_eq!(second.body["version"], 2, "{}", second.body);
    assert_eq!(second.body["secret"], "second");
    assert_eq!(second.body["prestarted"], true);

    // A handler that cannot be imported is still an ImportModuleError.
    let broken = zip_of(&[("app.py", b"import no_such_module\n", 0o644)]);
    deploy_ok(
        &cloud,
        json!({"name":"broken","runtime":"python3","handler":"app.handler"}),
        &broken,
    )
    .await;
    prestarted_ready(&cloud, 2).await;
    let init = invoke(&cloud, "broken", json!({})).await;
    assert_eq!(
        init.body["errorType"], "Runtime.ImportModuleError",
        "{}",
        init.body
    );

    // What only a starting interpreter reads: a fresh one.
    let mut tuned = config;
    tuned["name"] = json!("tuned");
    tuned["env"]["PYTHONHASHSEED"] = json!("7");
    deploy_ok(&cloud, tuned, &who(1)).await;
    prestarted_ready(&cloud, 2).await;
    let own = invoke(&cloud, "tuned", json!({})).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["prestarted"], false, "{}", own.body);
    assert_eq!(own.body["hash_seed"], "7");
    cloud.stop().await.unwrap();
}

/// Issue 21: with `max_instances`, a burst of first calls queues for a few
/// instances instead of starting one per call or being throttled; a call that
/// cannot get an instance within the function's timeout is throttled; bad values
/// are refused.
#[tokio::test]
async fn a_burst_queues_for_max_instances() {
    let cloud = TestCloud::start().await.unwrap();
    for (bad, why) in [
        (json!(0), "zero"),
        (json!(1001), "too many"),
        (json!("2"), "a string"),
        (json!(2.5), "a fraction"),
    ] {
        let (status, body) = deploy(
            &cloud,
            json!({"name":"bad","runtime":"provided","max_instances":bad}),
            &echo_bundle(),
        )
        .await;
        assert_eq!(status, 400, "{why}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let (status, body) = deploy(
        &cloud,
        json!({"name":"bad","runtime":"provided","max_instances":1,"provisioned_concurrency":2}),
        &echo_bundle(),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let source = b"import os, time\ndef handler(event, context):\n    time.sleep(0.005)\n    return os.getpid()\n";
    let out = deploy_ok(
        &cloud,
        json!({"name":"burst","runtime":"python3","handler":"app.handler","max_instances":2}),
        &zip_of(&[("app.py", source, 0o644)]),
    )
    .await;
    assert_eq!(out["max_instances"], 2, "{out}");
    prestarted_ready(&cloud, 2).await;
    let calls: Vec<_> = (0..100)
        .map(|_| invoke_in_background(&cloud, "burst", json!({})))
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        pids.insert(body.as_u64().unwrap());
    }
    assert!(
        (1..=2).contains(&pids.len()),
        "100 calls ran on {pids:?}, more instances than max_instances"
    );
    assert!(instances(&cloud, "burst").await["live"].as_u64() <= Some(2));

    // One instance, each call up to 2 s: the third in line cannot get it in time.
    deploy_ok(
        &cloud,
        json!({"name":"single","runtime":"provided","max_instances":1,"timeout_s":2}),
        &echo_bundle(),
    )
    .await;
    let first = invoke_in_background(&cloud, "single", json!({"sleep_ms":1800}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = invoke_in_background(&cloud, "single", json!({"sleep_ms":1800}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = invoke(&cloud, "single", json!({})).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(
        third.header("x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
    cloud.stop().await.unwrap();
}
