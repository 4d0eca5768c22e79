//! Connection pools, one per service schema.

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Creates `database` on the server of `url` when it does not exist yet.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    match options.clone().connect().await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("3D000") => {
            let mut admin = options.database("postgres").connect().await?;
            let create = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
            match sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(&mut admin)
                .await
            {
                Ok(_) => Ok(()),
                // Someone else created it meanwhile: 42P04 when theirs had committed,
                // 23505 on the catalog when both creations ran at once (several
                // `serve` processes starting together).
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("42P04" | "23505")) =>
                {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// A pool whose connections see `schema` first on their search path, after creating
/// the schema. Each service's migrations and queries then stay inside its schema.
pub async fn schema_pool(url: &str, schema: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let base = PgConnectOptions::from_str(url)?;
    let mut connection = base.clone().connect().await?;
    let create = format!(
        "CREATE SCHEMA IF NOT EXISTS \"{}\"",
        schema.replace('"', "\"\"")
    );
    if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&mut connection)
        .await
    {
        // Two services creating one schema at once race on the catalog; the loser's
        // duplicate is harmless.
        let duplicate = matches!(&error, sqlx::Error::Database(e) if matches!(e.code().as_deref(), Some("42P06" | "23505")));
        if !duplicate {
            return Err(error.into());
        }
    }
    let options = base.options([("search_path", schema), ("statement_timeout", "30s")]);
    Ok(pool_options(max_connections).connect_with(options).await?)
}

/// A connection used less than this long ago is handed out without a ping.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// Pool settings of every service. By default sqlx pings each connection it hands
/// out — a second round trip to Postgres for every query. A connection used moments
/// ago is alive; one idle for longer (a restarted server, a proxy's idle cut) is
/// still checked, and replaced if the ping fails.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    pool_options_pinging_after(max_connections, PING_IF_IDLE_FOR)
}

/// [`pool_options`] with another idle time before a ping (tests).
pub fn pool_options_pinging_after(max_connections: u32, idle: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(move |connection, meta| {
            Box::pin(async move {
                if meta.idle_for > idle {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
}
