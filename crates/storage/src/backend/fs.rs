//! Local files: `<root>/<bucket>/<key>`. A write goes to `<root>/.tmp/<uuid>`, is
//! fsynced, renamed into place and the directory fsynced, so a crash mid-upload
//! leaves at most a temp file (removed at start), never a partial object.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt as _;
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Backend, BackendError, ByteRange, ByteStream, Written};

const READ_CHUNK: usize = 1024 * 1024;
const WRITE_BATCH: usize = 1024 * 1024;

#[derive(Debug)]
pub struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    /// Uses `root`, clearing temp files a crash may have left.
    pub async fn open(root: PathBuf) -> io::Result<FsBackend> {
        let tmp = root.join(".tmp");
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp).await?;
        Ok(FsBackend { root })
    }

    fn blob_path(&self, bucket: &str, key: &str) -> PathBuf {
        // Keys were checked by `paths::normalise_path` (no `..`, no empty segments).
        self.root.join(bucket).join(key)
    }

    async fn sync_dir(dir: &Path) -> io::Result<()> {
        tokio::fs::File::open(dir).await?.sync_all().await
    }
}

fn not_found(error: io::Error) -> BackendError {
    if error.kind() == io::ErrorKind::NotFound {
        BackendError::NotFound
    } else {
        BackendError::Io(error)
    }
}

#[async_trait::async_trait]
impl Backend for FsBackend {
    async fn check(&self) -> Result<(), BackendError> {
        let probe = self.root.join(".tmp").join("readyz-probe");
        tokio::fs::write(&probe, b"ok").await?;
        tokio::fs::remove_file(&probe).await?;
        Ok(())
    }

    async fn create_bucket(&self, bucket: &str) -> Result<(), BackendError> {
        tokio::fs::create_dir_all(self.root.join(bucket)).await?;
        Ok(())
    }

    async fn delete_bucket(&self, bucket: &str) -> Result<(), BackendError> {
        match tokio::fs::remove_dir_all(self.root.join(bucket)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<Written, BackendError> {
        let temp = self
            .root
            .join(".tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let target = self.blob_path(bucket, key);
        let dir = target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.join(bucket));
        let result = async {
            let mut file: Option<tokio::fs::File> = None;
            let mut hasher = Md5::new();
            let mut size = 0u64;
            // Every file operation is a hop to the blocking pool: write in 1 MiB
            // batches, not per network chunk.
            let mut pending = bytes::BytesMut::with_capacity(WRITE_BATCH);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(BackendError::Body)?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BackendError::TooLarge { limit });
                }
                hasher.update(&chunk);
                pending.extend_from_slice(&chunk);
                if pending.len() >= WRITE_BATCH {
                    let open = match &mut file {
                        Some(open) => open,
                        None => file.insert(tokio::fs::File::create(&temp).await?),
                    };
                    open.write_all(&pending).await?;
                    pending.clear();
                }
            }
            let file = match file {
                Some(mut open) => {
                    // Surfaces the last batch's write error, if any.
                    open.flush().await?;
                    Some(open.into_std().await)
                }
                None => None,
            };
            // The last batch, fsync, rename and the directory's fsync in one hop to
            // the blocking pool: for a small object, the whole write is this one hop
            // instead of six.
            let temp = temp.clone();
            tokio::task::spawn_blocking(move || -> io::Result<()> {
                let mut file = match file {
                    Some(file) => file,
                    None => std::fs::File::create(&temp)?,
                };
                std::io::Write::write_all(&mut file, &pending)?;
                file.sync_all()?;
                drop(file);
                std::fs::create_dir_all(&dir)?;
                std::fs::rename(&temp, &target)?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .await
            .map_err(io::Error::other)??;
            Ok(Written {
                size,
                md5_hex: hex::encode(hasher.finalize()),
            })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ByteStream, BackendError> {
        // Opening, seeking and reading the first chunk in one blocking-pool hop: a
        // small object is then served without another (each hop is two thread
        // wake-ups, which cost more than the read itself).
        let path = self.blob_path(bucket, key);
        let (file, first, remaining) = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Seek as _};
            let mut file = std::fs::File::open(path).map_err(not_found)?;
            let remaining = match range {
                Some(range) => {
                    if range.start > 0 {
                        file.seek(io::SeekFrom::Start(range.start))?;
                    }
                    range.len()
                }
                None => file.metadata()?.len(),
            };
            let mut first = vec![0u8; remaining.min(READ_CHUNK as u64) as usize];
            file.read_exact(&mut first)?;
            let remaining = remaining - first.len() as u64;
            Ok::<_, BackendError>((file, Bytes::from(first), remaining))
        })
        .await
        .map_err(io::Error::other)??;
        // `read_stream` ends at once when nothing remains.
        let first = futures::stream::iter((!first.is_empty()).then_some(Ok(first)));
        Ok(Box::pin(first.chain(read_stream(
            tokio::fs::File::from_std(file),
            remaining,
        ))))
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        match tokio::fs::remove_file(self.blob_path(bucket, key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn copy(
        &self,
        bucket: &str,
        from: &str,
        to_bucket: &str,
        to: &str,
    ) -> Result<(), BackendError> {
        let source = self.blob_path(bucket, from);
        let temp = self
            .root
            .join(".tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let result = async {
            tokio::fs::copy(&source, &temp).await.map_err(not_found)?;
            tokio::fs::File::open(&temp).await?.sync_all().await?;
            let target = self.blob_path(to_bucket, to);
            let dir = target
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.root.join(to_bucket));
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::rename(&temp, &target).await?;
            Self::sync_dir(&dir).await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    async fn list(&self, bucket: &str) -> Result<Vec<(String, SystemTime)>, BackendError> {
        let base = self.root.join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            while let Some(entry) = entries.next_entry().await? {
                let metadata = entry.metadata().await?;
                if metadata.is_dir() {
                    stack.push(entry.path());
                } else if let Ok(relative) = entry.path().strip_prefix(&base)
                    && let Some(key) = relative.to_str()
                {
                    out.push((key.to_owned(), metadata.modified()?));
                }
            }
        }
        Ok(out)
    }
}

/// Streams `remaining` bytes of `file` from its current position, in chunks.
fn read_stream(file: tokio::fs::File, remaining: u64) -> ByteStream {
    Box::pin(futures::stream::unfold(
        (file, remaining),
        |(mut file, remaining)| async move {
            if remaining == 0 {
                return None;
            }
            let len = remaining.min(READ_CHUNK as u64) as usize;
            let mut buffer = vec![0u8; len];
            match file.read_exact(&mut buffer).await {
                Ok(_) => Some((Ok(Bytes::from(buffer)), (file, remaining - len as u64))),
                Err(error) => Some((Err(error), (file, 0))),
            }
        },
    ))
}
