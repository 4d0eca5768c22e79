//! Trimming topics to their retention without losing an event.
//!
//! `XADD … MAXLEN ~ n` trims whatever is oldest, including entries a subscriber has
//! not been handed yet or has not acknowledged: a subscriber that fell behind lost
//! events silently (374 of 400 in a test with retention 10). So appends no longer
//! trim; this task does, every [`TRIM_EVERY`], and only entries that every
//! subscription's consumer group has already had and acknowledged. A topic keeps at
//! least `retention` events, and more while a subscription still needs them.

use std::time::Duration;

use redis::Value as RedisValue;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Bus;

const TRIM_EVERY: Duration = Duration::from_secs(2);
/// At most this many entries are trimmed from one topic per round (they are read
/// to find the cut), so a long backlog is trimmed over a few rounds.
const TRIM_AT_MOST: usize = 10_000;

pub(crate) fn spawn(bus: Bus, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            let topics: Vec<(String, i64)> =
                match sqlx::query_as("SELECT name, retention FROM topics")
                    .fetch_all(&bus.pool)
                    .await
                {
                    Ok(topics) => topics,
                    Err(error) => {
                        tracing::warn!(%error, "listing topics to trim failed");
                        continue;
                    }
                };
            for (topic, retention) in topics {
                if let Err(error) = trim(&bus, &topic, retention.max(0) as usize).await {
                    tracing::warn!(topic, %error, "trimming a topic failed");
                }
            }
        }
    })
}

/// A stream id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId(u64, u64);

impl StreamId {
    pub(crate) fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }

    fn next(self) -> StreamId {
        match self.1.checked_add(1) {
            Some(seq) => StreamId(self.0, seq),
            None => StreamId(self.0 + 1, 0),
        }
    }

    fn text(self) -> String {
        format!("{}-{}", self.0, self.1)
    }
}

/// The oldest entry some consumer group still needs: its oldest pending entry, or
/// the first it has not been handed. `None` when no group needs anything old.
async fn oldest_needed(
    redis: &mut redis::aio::ConnectionManager,
    key: &str,
) -> redis::RedisResult<Option<StreamId>> {
    let groups: RedisValue = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(redis)
        .await?;
    let RedisValue::Array(groups) = groups else {
        return Ok(None);
    };
    let mut oldest: Option<StreamId> = None;
    for group in groups {
        let fields = match group {
            RedisValue::Array(fields) => fields,
            RedisValue::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let mut name = None;
        let mut pending = 0i64;
        let mut last_delivered = None;
        for pair in fields.chunks(2) {
            let (Some(field), Some(value)) =
                (pair.first().and_then(crate::delivery::text), pair.get(1))
            else {
                continue;
            };
            match field.as_str() {
                "name" => name = crate::delivery::text(value),
                "pending" => pending = redis::from_redis_value(value.clone()).unwrap_or(0),
                "last-delivered-id" => {
                    last_delivered = crate::delivery::text(value).and_then(|t| StreamId::parse(&t))
                }
                _ => {}
            }
        }
        let Some(name) = name else { continue };
        let mut needed = last_delivered.map(StreamId::next);
        if pending > 0 {
            // XPENDING's summary: [count, smallest id, greatest id, consumers].
            let summary: RedisValue = redis::cmd("XPENDING")
                .arg(key)
                .arg(&name)
                .query_async(redis)
                .await?;
            if let RedisValue::Array(items) = summary
                && let Some(smallest) = items
                    .get(1)
                    .and_then(crate::delivery::text)
                    .and_then(|t| StreamId::parse(&t))
            {
                needed = Some(needed.map_or(smallest, |n| n.min(smallest)));
            }
        }
        if let Some(needed) = needed {
            oldest = Some(oldest.map_or(needed, |o| o.min(needed)));
        }
    }
    Ok(oldest)
}

/// Trims `topic` to `retention` entries, never past what a group still needs.
async fn trim(bus: &Bus, topic: &str, retention: usize) -> redis::RedisResult<()> {
    let key = bus.stream_key(topic);
    let mut redis = bus.redis.clone();
    let len: usize = redis::cmd("XLEN").arg(&key).query_async(&mut redis).await?;
    if len <= retention {
        return Ok(());
    }
    let excess = (len - retention).min(TRIM_AT_MOST);
    let needed = oldest_needed(&mut redis, &key).await?;
    // The oldest `excess` entries, stopping before the first one still needed.
    let end = needed.map_or_else(|| "+".to_owned(), |id| format!("({}", id.text()));
    let trimmable: RedisValue = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg(&end)
        .arg("COUNT")
        .arg(excess)
        .query_async(&mut redis)
        .await?;
    let Some(last) = crate::delivery::entries(&trimmable)
        .last()
        .and_then(|entry| StreamId::parse(&entry.id))
    else {
        return Ok(());
    };
    // Exact, not `~`: MINID removes every entry below it, and nothing at or above.
    let _: i64 = redis::cmd("XTRIM")
        .arg(&key)
        .arg("MINID")
        .arg(last.next().text())
        .query_async(&mut redis)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StreamId;

    #[test]
    fn stream_ids_order_and_step_as_redis_does() {
        let a = StreamId::parse("1700000000000-5").unwrap();
        let b = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(a.next().text(), "1700000000000-6");
        assert_eq!(StreamId(7, u64::MAX).next(), StreamId(8, 0));
        assert!(StreamId::parse("nope").is_none());
    }
}
