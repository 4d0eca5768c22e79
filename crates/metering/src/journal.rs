//! The local journal a process appends its meters to: one line per served request,
//! numbered from 1, written with one `write(2)` before the response leaves. A
//! killed process leaves the lines in the page cache and on disk; the next process
//! to find the file ships it ([`orphans`]). Not fsynced: a kernel crash or power
//! loss may lose the last seconds, as it would the page cache of any database
//! running with `synchronous_commit = off`.
//!
//! A journal is `<dir>/<service>-<id>.journal`, created under a temporary name and
//! renamed once its writer holds an exclusive `flock` on it, so a scan for orphans
//! (which takes the lock before reading) never takes a live journal.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::Meter;

pub(crate) const EXTENSION: &str = "journal";

/// One line of a journal, as billing ingests it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<'a> {
    #[serde(rename = "s")]
    pub seq: u64,
    #[serde(rename = "t")]
    pub at_ms: i64,
    #[serde(rename = "r", borrow)]
    pub resource: Cow<'a, str>,
    #[serde(rename = "o", borrow)]
    pub owner: Cow<'a, str>,
    #[serde(rename = "q")]
    pub quantities: Cow<'a, [(Meter, u64)]>,
}

impl Serialize for Meter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Meter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Meter, D::Error> {
        let name = Cow::<str>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The journal being appended to.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) id: String,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// The sequence number of the last line written (0: none yet).
    pub(crate) last_seq: u64,
    pub(crate) bytes: u64,
}

impl Writer {
    /// A new, locked journal for `service` in `dir`.
    pub(crate) fn create(dir: &Path, service: &str) -> std::io::Result<Writer> {
        std::fs::create_dir_all(dir)?;
        let id = format!("{service}-{}", uuid::Uuid::now_v7().simple());
        let temporary = dir.join(format!(".{id}.tmp"));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(&temporary)?;
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)?;
        let path = dir.join(format!("{id}.{EXTENSION}"));
        std::fs::rename(&temporary, &path)?;
        Ok(Writer {
            id,
            path,
            file: Arc::new(file),
            last_seq: 0,
            bytes: 0,
        })
    }

    /// Appends one record (its `seq` is assigned here) in a single write.
    pub(crate) fn append(&mut self, mut record: Record<'_>) -> std::io::Result<()> {
        record.seq = self.last_seq + 1;
        let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        (&*self.file).write_all(&line)?;
        self.last_seq = record.seq;
        self.bytes += line.len() as u64;
        Ok(())
    }
}

/// Reads the whole lines of `file` from `offset`, at most `max_records` of them:
/// the records and the offset after the last one read. A line still being written
/// (no newline yet) is left for the next read; a line that does not parse (the torn
/// end of a journal whose process died mid-write) is skipped.
pub(crate) fn read_from(
    file: &File,
    mut offset: u64,
    max_records: usize,
) -> std::io::Result<(Vec<Record<'static>>, u64)> {
    let mut records = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    'reading: while records.len() < max_records {
        let read = file.read_at(&mut buffer, offset + pending.len() as u64)?;
        if read == 0 {
            break;
        }
        pending.extend_from_slice(&buffer[..read]);
        let mut start = 0;
        while let Some(newline) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + newline];
            start += newline + 1;
            match serde_json::from_slice::<Record<'_>>(line) {
                Ok(record) => records.push(into_owned(record)),
                Err(error) => {
                    tracing::warn!(offset, %error, "skipping an unreadable meter journal line")
                }
            }
            if records.len() == max_records {
                offset += start as u64;
                pending.clear();
                break 'reading;
            }
        }
        offset += start as u64;
        pending.drain(..start);
    }
    Ok((records, offset))
}

fn into_owned(record: Record<'_>) -> Record<'static> {
    Record {
        seq: record.seq,
        at_ms: record.at_ms,
        resource: Cow::Owned(record.resource.into_owned()),
        owner: Cow::Owned(record.owner.into_owned()),
        quantities: Cow::Owned(record.quantities.into_owned()),
    }
}

/// A journal left by a process that is gone: its lock taken, so nobody else ships it.
#[derive(Debug)]
pub(crate) struct Orphan {
    pub(crate) id: String,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
}

/// The journals in `dir` that no live writer holds, except `own`.
pub(crate) fn orphans(dir: &Path) -> std::io::Result<Vec<Orphan>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != EXTENSION) {
            continue;
        }
        let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            found.push(Orphan { id, path, file });
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mc-journal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(resource: &str, amount: u64) -> Record<'static> {
        Record {
            seq: 0,
            at_ms: 1_700_000_000_000,
            resource: Cow::Owned(resource.to_owned()),
            owner: Cow::Borrowed("authenticated:u1"),
            quantities: Cow::Owned(vec![
                (Meter::FunctionRequests, 1),
                (Meter::FunctionMbMs, amount),
            ]),
        }
    }

    #[test]
    fn records_read_back_in_order_with_their_sequence_numbers() {
        let dir = temp_dir();
        let mut writer = Writer::create(&dir, "invoker").unwrap();
        for i in 0..1_000 {
            writer.append(record(&format!("fn-{i}"), i)).unwrap();
        }
        let (first, offset) = read_from(&writer.file, 0, 600).unwrap();
        assert_eq!(first.len(), 600);
        let (rest, end) = read_from(&writer.file, offset, 600).unwrap();
        assert_eq!(rest.len(), 400);
        assert_eq!(end, writer.bytes);
        let all: Vec<_> = first.into_iter().chain(rest).collect();
        for (i, record) in all.iter().enumerate() {
            assert_eq!(record.seq, i as u64 + 1);
            assert_eq!(record.resource, format!("fn-{i}"));
            assert_eq!(record.quantities[1], (Meter::FunctionMbMs, i as u64));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_waits_and_a_corrupt_one_is_skipped() {
        let dir = temp_dir();
        let mut writer = Writer::create(&dir, "storage").unwrap();
        writer.append(record("a", 1)).unwrap();
        (&*writer.file)
            .write_all(b"{\"s\":2,\"t\":1,\"r\":\"b")
            .unwrap();
        let (records, offset) = read_from(&writer.file, 0, 10).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(offset, writer.bytes, "the torn line is not consumed");
        (&*writer.file).write_all(b"\n").unwrap();
        writer.bytes += 20;
        writer.append(record("c", 3)).unwrap();
        let (records, _) = read_from(&writer.file, offset, 10).unwrap();
        assert_eq!(records.len(), 1, "the corrupt line is skipped");
        assert_eq!(records[0].resource, "c");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_live_journal_is_never_an_orphan_and_a_dead_one_is() {
        let dir = temp_dir();
        let live = Writer::create(&dir, "docdb").unwrap();
        let mut dead = Writer::create(&dir, "bus").unwrap();
        dead.append(record("t", 1)).unwrap();
        let dead_id = dead.id.clone();
        assert!(orphans(&dir).unwrap().is_empty(), "both are held");
        drop(dead);
        let found = orphans(&dir).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, dead_id);
        assert_ne!(found[0].id, live.id);
        // Taken: a second scan (another process) does not get it too.
        assert!(orphans(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
