//! User commands: talk to a running cloud through the gateway, with the credentials
//! `minicloud up` wrote (or `--url`/`--token`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use minicloud_sdk::Client;

#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Gateway URL (default: from `<data-dir>/credentials.json`).
    #[arg(long = "url", env = "MINICLOUD_URL")]
    pub url: Option<String>,
    /// Bearer token (default: the service key from `<data-dir>/credentials.json`).
    #[arg(long = "token", env = "MINICLOUD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(
        long = "data-dir",
        env = "MINICLOUD_DATA_DIR",
        default_value = ".minicloud"
    )]
    pub data_dir: PathBuf,
}

impl Connection {
    pub fn client(&self) -> anyhow::Result<Client> {
        let credentials: Option<serde_json::Value> =
            std::fs::read_to_string(self.data_dir.join("credentials.json"))
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
        let from_file = |key: &str| {
            credentials
                .as_ref()
                .and_then(|c| c[key].as_str())
                .map(str::to_owned)
        };
        let url = self
            .url
            .clone()
            .or_else(|| from_file("gateway_url"))
            .context(
                "no gateway URL: pass --url or MINICLOUD_URL, or run `minicloud up` here first",
            )?;
        let client = Client::new(url);
        Ok(
            match self.token.clone().or_else(|| from_file("service_key")) {
                Some(token) => client.with_token(token),
                None => client,
            },
        )
    }
}

/// Prints the console's URL and opens it in a browser when the machine has one
/// (`xdg-open`/`open`); sign in there with the service key (in `credentials.json`).
pub fn console(connection: &Connection, mut out: impl std::io::Write) -> anyhow::Result<()> {
    let client = connection.client()?;
    let url = format!("{}/console", client.base_url().trim_end_matches('/'));
    writeln!(out, "{url}")?;
    let opened = ["xdg-open", "open"].iter().any(|opener| {
        std::process::Command::new(opener)
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if !opened {
        writeln!(out, "(no browser here: open the URL above)")?;
    }
    Ok(())
}

/// Prints a topic's new events, one JSON line each, until interrupted.
pub async fn tail(
    connection: &Connection,
    topic: &str,
    mut out: impl std::io::Write,
) -> anyhow::Result<()> {
    let client = connection.client()?;
    print_sse(
        &client,
        &format!("/events/v1/topics/{topic}/tail"),
        &mut out,
    )
    .await
}

/// Prints the mails in auth's outbox, newest first.
pub async fn mail(
    connection: &Connection,
    to: Option<&str>,
    limit: u32,
    mut out: impl std::io::Write,
) -> anyhow::Result<()> {
    let client = connection.client()?;
    let mut query = vec![("limit", limit.to_string())];
    if let Some(to) = to {
        query.push(("to", to.to_owned()));
    }
    let list: serde_json::Value = client
        .send(
            client
                .request(reqwest::Method::GET, "/auth/v1/admin/mail")
                .query(&query),
        )
        .await?;
    for mail in list["mails"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "To: {}\nDate: {}\nSubject: {}\n\n{}",
            mail["to"].as_str().unwrap_or_default(),
            mail["created_at"].as_str().unwrap_or_default(),
            mail["subject"].as_str().unwrap_or_default(),
            mail["body"].as_str().unwrap_or_default(),
        )?;
    }
    Ok(())
}

/// Prints the data lines of a Server-Sent Events stream until it ends.
pub async fn print_sse(
    client: &Client,
    path: &str,
    mut out: impl std::io::Write,
) -> anyhow::Result<()> {
    let response = client
        .request(reqwest::Method::GET, path)
        .timeout(std::time::Duration::from_secs(365 * 24 * 3600))
        .send()
        .await
        .context("connecting to the gateway")?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        bail!("{status}: {body}");
    }
    let mut buffer = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(
            &chunk.context("reading the stream")?,
        ));
        // Server-sent events end with a blank line; keep only their data lines.
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    writeln!(out, "{}", data.trim_start())?;
                    out.flush()?;
                }
            }
        }
    }
    Ok(())
}
