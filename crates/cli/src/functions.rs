//! `minicloud fn …`: deploy, list, get, delete, invoke and read logs of functions
//! through the gateway.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::user::Connection;

#[derive(Debug, clap::Subcommand)]
pub enum FnCommand {
    /// Create or replace a function from a directory or a zip.
    Deploy(DeployArgs),
    /// The functions you may invoke.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    Get {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    Delete {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Invoke and print the result (or the request id with --async).
    Invoke {
        name: String,
        /// The event, JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Queue it through the bus instead of waiting.
        #[arg(long = "async")]
        asynchronous: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print log lines; -f keeps following.
    Logs {
        name: String,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    pub name: String,
    /// `provided`, `python3` or `nodejs`.
    #[arg(long)]
    pub runtime: String,
    /// `file.function` (python3, nodejs).
    #[arg(long)]
    pub handler: Option<String>,
    /// A directory to zip …
    #[arg(long, conflicts_with = "zip", required_unless_present = "zip")]
    pub dir: Option<PathBuf>,
    /// … or a zip file.
    #[arg(long)]
    pub zip: Option<PathBuf>,
    #[arg(long = "memory")]
    pub memory_mb: Option<i32>,
    #[arg(long = "timeout")]
    pub timeout_s: Option<i32>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env")]
    pub env: Vec<String>,
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long = "reserved-concurrency")]
    pub reserved_concurrency: Option<i32>,
    #[arg(long = "provisioned-concurrency")]
    pub provisioned_concurrency: Option<i32>,
    #[arg(long = "keep-warm")]
    pub keep_warm_s: Option<i32>,
    /// At most this many instances; calls beyond wait for a free one.
    #[arg(long = "max-instances")]
    pub max_instances: Option<i32>,
    #[command(flatten)]
    pub connection: Connection,
}

/// Zips `dir` in memory, keeping file modes (so `bootstrap` stays executable).
pub fn zip_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt as _;
    fn add(
        out: &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>,
        root: &Path,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let name = path.strip_prefix(root)?.to_string_lossy().into_owned();
            if meta.is_dir() {
                add(out, root, &path)?;
            } else if meta.is_file() {
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .unix_permissions(meta.permissions().mode() & 0o777);
                out.start_file(name, options)?;
                out.write_all(&std::fs::read(&path)?)?;
            } else {
                bail!(
                    "{} is a link or special file; bundles hold regular files only",
                    path.display()
                );
            }
        }
        Ok(())
    }
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    add(&mut out, dir, dir)?;
    Ok(out.finish()?.into_inner())
}

pub async fn run(command: FnCommand, mut out: impl std::io::Write) -> anyhow::Result<()> {
    match command {
        FnCommand::Deploy(args) => {
            let zip = match (&args.dir, &args.zip) {
                (Some(dir), _) => {
                    zip_dir(dir).with_context(|| format!("zipping {}", dir.display()))?
                }
                (None, Some(file)) => {
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
                }
                (None, None) => bail!("pass --dir or --zip"),
            };
            let mut env = serde_json::Map::new();
            for pair in &args.env {
                let (key, value) = pair.split_once('=').context("--env takes KEY=VALUE")?;
                env.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            let body = json!({
                "runtime": args.runtime, "handler": args.handler, "memory_mb": args.memory_mb,
                "timeout_s": args.timeout_s, "env": env, "role": args.role,
                "reserved_concurrency": args.reserved_concurrency,
                "provisioned_concurrency": args.provisioned_concurrency,
                "keep_warm_s": args.keep_warm_s,
                "max_instances": args.max_instances,
                "code": {"zip_base64": base64::engine::general_purpose::STANDARD.encode(&zip)},
            });
            let client = args.connection.client()?;
            let deployed: Value = client
                .put(&format!("/functions/v1/{}", args.name), &body)
                .await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&deployed)?)?;
        }
        FnCommand::List { connection } => {
            let list: Value = connection.client()?.get("/functions/v1").await?;
            for function in list["functions"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{}\t{}\t{} MB\t{} s",
                    function["name"].as_str().unwrap_or_default(),
                    function["runtime"].as_str().unwrap_or_default(),
                    function["memory_mb"],
                    function["timeout_s"]
                )?;
            }
        }
        FnCommand::Get { name, connection } => {
            let function: Value = connection
                .client()?
                .get(&format!("/functions/v1/{name}"))
                .await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&function)?)?;
        }
        FnCommand::Delete { name, connection } => {
            connection
                .client()?
                .delete(&format!("/functions/v1/{name}"))
                .await?;
        }
        FnCommand::Invoke {
            name,
            payload,
            asynchronous,
            connection,
        } => {
            serde_json::from_str::<Value>(&payload).context("--payload must be JSON")?;
            let client = connection.client()?;
            let mut request = client
                .request(
                    reqwest::Method::POST,
                    &format!("/functions/v1/{name}/invoke"),
                )
                .header("content-type", "application/json")
                .body(payload);
            if asynchronous {
                request = request.header("x-amz-invocation-type", "Event");
            }
            let response = request.send().await.context("invoking")?;
            let status = response.status();
            let failed = response.headers().contains_key("x-amz-function-error");
            let body = response.text().await?;
            writeln!(out, "{body}")?;
            if !status.is_success() {
                bail!("{status}");
            }
            if failed {
                bail!("the function failed");
            }
        }
        FnCommand::Logs {
            name,
            follow,
            request_id,
            connection,
        } => {
            let client = connection.client()?;
            let mut query = String::from("limit=1000");
            if let Some(id) = request_id {
                query.push_str(&format!("&request_id={id}"));
            }
            if follow {
                let path = format!("/functions/v1/{name}/logs?{query}&follow=true");
                // One JSON object per line, as `events tail` prints events.
                crate::user::print_sse(&client, &path, &mut out).await?;
            } else {
                let page: Value = client
                    .get(&format!("/functions/v1/{name}/logs?{query}"))
                    .await?;
                for line in page["lines"].as_array().into_iter().flatten() {
                    writeln!(out, "{}", line["message"].as_str().unwrap_or_default())?;
                }
            }
        }
    }
    Ok(())
}
