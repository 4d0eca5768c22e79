//! Code bundles: zip archives checked at deploy, kept in Postgres by content hash,
//! and unpacked once per hash into the code cache.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use minicloud_proto::error::{ApiError, ErrorCode};
use sha2::Digest as _;

/// Lambda's own limits: 50 MiB zipped, 250 MiB unpacked.
pub const MAX_ZIPPED: usize = 50 * 1024 * 1024;
pub const MAX_UNPACKED: u64 = 250 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("code is not a readable zip archive: {0}")]
    NotZip(String),
    #[error("code bundle is larger than {} MiB zipped", MAX_ZIPPED / 1024 / 1024)]
    TooLarge,
    #[error("code bundle unpacks to more than {} MiB", MAX_UNPACKED / 1024 / 1024)]
    UnpacksTooLarge,
    #[error("code bundle has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("zip entry {0:?} would land outside the code directory")]
    Escapes(String),
    #[error("zip entry {0:?} is a link; links are refused")]
    Link(String),
    #[error("{0}")]
    Missing(String),
}

impl From<BundleError> for ApiError {
    fn from(error: BundleError) -> Self {
        match error {
            BundleError::TooLarge | BundleError::UnpacksTooLarge => {
                ApiError::new(ErrorCode::PayloadTooLarge, error.to_string())
            }
            other => ApiError::invalid(other.to_string()),
        }
    }
}

/// The hex SHA-256 of the zip: the bundle's identity.
pub fn hash(zip: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(zip))
}

/// Checks every entry without writing anything, and that the runtime finds what it
/// starts: `bootstrap` for `provided`, the handler's file for `python3`/`nodejs`.
pub fn check(zip: &[u8], runtime: &str, handler: &str) -> Result<(), BundleError> {
    if zip.len() > MAX_ZIPPED {
        return Err(BundleError::TooLarge);
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| BundleError::NotZip(e.to_string()))?;
    if archive.len() > MAX_ENTRIES {
        return Err(BundleError::TooManyEntries);
    }
    let mut total = 0u64;
    let mut names = std::collections::HashSet::new();
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|e| BundleError::NotZip(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|e| BundleError::NotZip(e.to_string()))?
            .into_owned();
        // `enclosed_name` refuses any `..` that climbs out; it would quietly make an
        // absolute name relative, so those are refused here first.
        let absolute =
            name.starts_with('/') || name.starts_with('\\') || name.get(1..2) == Some(":");
        let Some(path) = entry.enclosed_name().filter(|_| !absolute) else {
            return Err(BundleError::Escapes(name));
        };
        if entry.is_symlink() {
            return Err(BundleError::Link(name));
        }
        // Declared sizes can lie; unpacking enforces the limit on real bytes too.
        total = total.saturating_add(entry.size());
        if total > MAX_UNPACKED {
            return Err(BundleError::UnpacksTooLarge);
        }
        if entry.is_file() {
            names.insert(path.to_string_lossy().replace('\\', "/"));
        }
    }
    let wanted: Vec<String> = match runtime {
        "provided" => vec!["bootstrap".into()],
        // `pkg.mod.fn` and `pkg/mod.fn` both name pkg/mod.py.
        "python3" => vec![format!("{}.py", handler_file(handler).replace('.', "/"))],
        // Node takes the file up to the first dot (`file.obj.fn` is file.js's obj.fn).
        "nodejs" => {
            let file = handler.split_once('.').map_or(handler, |(file, _)| file);
            ["js", "mjs", "cjs"]
                .iter()
                .map(|ext| format!("{file}.{ext}"))
                .collect()
        }
        _ => Vec::new(),
    };
    if !wanted.is_empty() && !wanted.iter().any(|w| names.contains(w)) {
        return Err(BundleError::Missing(format!(
            "the {runtime} runtime needs {} in the bundle",
            wanted.join(" or ")
        )));
    }
    Ok(())
}

/// `dir/file.function` → `dir/file`.
pub fn handler_file(handler: &str) -> &str {
    handler.rsplit_once('.').map_or(handler, |(file, _)| file)
}

/// Where the digest of an unpacked tree is kept, beside (not inside) the tree.
fn digest_path(cache: &Path, hash: &str) -> PathBuf {
    cache.join(format!(".{hash}.tree"))
}

/// SHA-256 over every entry of `dir` in name order: relative path, mode and bytes.
pub fn tree_digest(dir: &Path) -> Result<String, std::io::Error> {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut entries = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            }
            entries.push((entry.path(), kind));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut digest = sha2::Sha256::new();
    for (path, kind) in entries {
        let relative = path.strip_prefix(dir).unwrap_or(&path);
        digest.update(relative.as_os_str().as_encoded_bytes());
        digest.update([0]);
        let metadata = std::fs::symlink_metadata(&path)?;
        digest.update(metadata.permissions().mode().to_le_bytes());
        if kind.is_symlink() {
            digest.update(b"symlink");
        } else if kind.is_file() {
            let mut file = std::fs::File::open(&path)?;
            std::io::copy(&mut file, &mut digest)?;
        }
        digest.update([0]);
    }
    Ok(hex::encode(digest.finalize()))
}

/// True when `cache/<hash>` is exactly what was unpacked there (its digest matches
/// the one recorded at unpack time): a tree changed since is not reused.
pub fn is_intact(cache: &Path, hash: &str) -> bool {
    let Ok(recorded) = std::fs::read_to_string(digest_path(cache, hash)) else {
        return false;
    };
    tree_digest(&cache.join(hash)).is_ok_and(|digest| digest == recorded.trim())
}

/// Removes a cached tree (files are read-only, directories writable by minicloud).
pub fn discard(cache: &Path, hash: &str) {
    let _ = std::fs::remove_dir_all(cache.join(hash));
    let _ = std::fs::remove_file(digest_path(cache, hash));
}

/// Unpacks `zip` into `cache/<hash>` unless it is already there; returns that dir.
/// Unpacks into a temporary sibling and renames, so a crash never leaves a half
/// tree under the final name. The tree's digest is recorded beside it. With a
/// `python`, its modules are compiled to bytecode first ([`compile_python`]).
pub fn unpack(
    zip: &[u8],
    hash: &str,
    cache: &Path,
    python: Option<&Path>,
) -> Result<PathBuf, std::io::Error> {
    let target = cache.join(hash);
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(cache)?;
    let staging = cache.join(format!(".unpack-{}", uuid::Uuid::new_v4()));
    let result = unpack_into(zip, &staging)
        .map(|()| {
            if let Some(python) = python {
                compile_python(python, &staging, &target, COMPILE_MEMORY_BYTES);
            }
        })
        .and_then(|()| tree_digest(&staging))
        .and_then(|digest| std::fs::write(digest_path(cache, hash), digest));
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    match std::fs::rename(&staging, &target) {
        Ok(()) => Ok(target),
        // Another invocation unpacked the same hash first: theirs is identical.
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(target)
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(error)
        }
    }
}

/// How long compiling one bundle's Python may take before the bundle is used as
/// it is (its modules then compile in each cold start, as before).
const COMPILE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The compiler's RLIMIT_DATA: a bundle may hold 250 MiB of source in one file,
/// and parsing takes ~350× the source (a 4 MB list literal: 1.4 GB resident, 3 s),
/// as the invoker, outside any sandbox. A module past it fails with a MemoryError
/// and compiles at import instead, inside its instance's limits.
const COMPILE_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;

/// Compiles every module under `staging` to bytecode (`__pycache__`, as the
/// instances' interpreter would itself) with that interpreter, naming the files by
/// their final place `target` in tracebacks. Instances cannot write their code dir,
/// so without this every cold start compiles every module it imports — a bundle's
/// dependencies included. Compiling runs no code of the bundle (`-I`: not even a
/// module of the bundle's that shadows `compileall`; the parser only), but the
/// input is hostile, so it is bounded in time and its failure only logged: a module
/// that does not compile is reported at import, as it always was.
fn compile_python(python: &Path, staging: &Path, target: &Path, memory_bytes: u64) {
    let started = std::time::Instant::now();
    let spawned = std::process::Command::new(python)
        .args(["-I", "-m", "compileall", "-q", "-d"])
        .arg(target)
        .arg(staging)
        .env_clear()
        .current_dir(staging)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            tracing::warn!(%error, python = %python.display(), "compiling a bundle's Python failed to start");
            return;
        }
    };
    // Set on the started child, as an instance's is: the interpreter's own
    // start-up is all that runs unlimited.
    if let Err(error) = crate::instance::set_memory_limit(child.id() as i32, memory_bytes) {
        let _ = child.kill();
        let _ = child.wait();
        tracing::warn!(%error, "could not limit the memory of a bundle's Python compiler; not compiled");
        return;
    }
    loop {
        match child.try_wait() {
            // compileall exits 1 when a module does not compile: the rest are done.
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < COMPILE_LIMIT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(
                    limit_s = COMPILE_LIMIT.as_secs(),
                    "compiling a bundle's Python took too long; its modules compile at import"
                );
                break;
            }
        }
    }
    tracing::debug!(
        took_ms = started.elapsed().as_millis() as u64,
        "compiled a bundle's Python"
    );
}

fn unpack_into(zip: &[u8], dir: &Path) -> Result<(), std::io::Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let invalid =
        |e: zip::result::ZipError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    std::fs::create_dir_all(dir)?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(invalid)?;
    let mut budget = MAX_UNPACKED;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(invalid)?;
        let (Some(relative), false) = (entry.enclosed_name(), entry.is_symlink()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "entry escapes the code dir or is a link",
            ));
        };
        let path = dir.join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&path)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::File::create(&path)?;
        // Counts real bytes: a zip bomb with small declared sizes stops here.
        let copied = std::io::copy(&mut (&mut entry).take(budget + 1), &mut file)?;
        if copied > budget {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bundle unpacks past the size limit",
            ));
        }
        budget -= copied;
        // Read-only for everyone (instances may run under uids of their own, and
        // never write their code); execute bits kept. Zips made on Windows carry no
        // mode; `bootstrap` must still run.
        let mode = match entry.unix_mode() {
            Some(mode) => 0o444 | (mode & 0o111),
            None => 0o444,
        };
        let mode = if relative == Path::new("bootstrap") || mode & 0o111 != 0 {
            0o555
        } else {
            mode
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            out.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            out.write_all(bytes).unwrap();
        }
        out.finish().unwrap().into_inner()
    }

    #[test]
    fn a_provided_bundle_needs_bootstrap() {
        let good = zip_of(&[("bootstrap", b"#!/bin/sh\n")]);
        check(&good, "provided", "").unwrap();
        let bad = zip_of(&[("main.sh", b"#!/bin/sh\n")]);
        assert!(matches!(
            check(&bad, "provided", ""),
            Err(BundleError::Missing(_))
        ));
    }

    #[test]
    fn handler_files_are_found_by_runtime() {
        let py = zip_of(&[("app/main.py", b"def handler(e, c): return e\n")]);
        check(&py, "python3", "app/main.handler").unwrap();
        assert!(check(&py, "python3", "main.handler").is_err());
        let js = zip_of(&[("index.mjs", b"export const handler = async (e) => e;\n")]);
        check(&js, "nodejs", "index.handler").unwrap();
    }

    #[test]
    fn escaping_entries_are_refused() {
        for name in ["../evil", "a/../../evil", "/etc/passwd"] {
            let bundle = zip_of(&[("bootstrap", b"x"), (name, b"x")]);
            assert!(
                matches!(check(&bundle, "provided", ""), Err(BundleError::Escapes(_))),
                "{name} was accepted"
            );
        }
    }

    #[test]
    fn links_are_refused() {
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        out.start_file("bootstrap", zip::write::SimpleFileOptions::default())
            .unwrap();
        out.write_all(b"x").unwrap();
        out.add_symlink(
            "passwd",
            "/etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        let bundle = out.finish().unwrap().into_inner();
        assert!(matches!(
            check(&bundle, "provided", ""),
            Err(BundleError::Link(_))
        ));
    }

    #[test]
    fn garbage_is_not_a_zip() {
        assert!(matches!(
            check(b"not a zip at all", "provided", ""),
            Err(BundleError::NotZip(_))
        ));
    }

    /// Modules are compiled once at unpack, in the tree whose digest is recorded;
    /// one that does not compile fails nothing, and nothing of the bundle runs —
    /// not even a module named like the compiler.
    #[test]
    fn python_modules_are_compiled_at_unpack_without_running_the_bundle() {
        let cache = std::env::temp_dir().join(format!("mc-bundle-{}", uuid::Uuid::new_v4()));
        let marker = cache.join("ran");
        let hostile = format!(
            "open({:?}, 'w').write('ran')\n",
            marker.display().to_string()
        );
        let bundle = zip_of(&[
            (
                "app.py",
                b"def handler(event, context):\n    return event\n",
            ),
            ("lib/helper.py", b"VALUE = 1\n"),
            ("broken.py", b"def oops(:\n"),
            ("compileall.py", hostile.as_bytes()),
            ("py_compile.py", hostile.as_bytes()),
        ]);
        let hash = hash(&bundle);
        let python = crate::resolve_python();
        let dir = unpack(&bundle, &hash, &cache, Some(&python)).unwrap();
        let cached = |dir: &Path, module: &str| {
            std::fs::read_dir(dir.join("__pycache__"))
                .map(|entries| {
                    entries.flatten().any(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        name.starts_with(&format!("{module}.")) && name.ends_with(".pyc")
                    })
                })
                .unwrap_or(false)
        };
        assert!(cached(&dir, "app"), "app.py was compiled");
        assert!(
            cached(&dir.join("lib"), "helper"),
            "lib/helper.py was compiled"
        );
        assert!(
            !cached(&dir, "broken"),
            "a module that does not compile has no bytecode"
        );
        assert!(!marker.exists(), "no module of the bundle ran");
        assert!(is_intact(&cache, &hash), "the digest covers the bytecode");
        // The bytecode names the final place, not the staging dir it was made in.
        let pyc = std::fs::read_dir(dir.join("__pycache__"))
            .unwrap()
            .flatten()
            .find(|entry| entry.file_name().to_string_lossy().starts_with("app."))
            .unwrap()
            .path();
        let bytes = std::fs::read(pyc).unwrap();
        let final_path = dir.join("app.py").display().to_string();
        let holds = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(
            holds(final_path.as_bytes()),
            "the bytecode names {final_path}"
        );
        assert!(!holds(b".unpack-"), "nor the staging dir");
        std::fs::remove_dir_all(&cache).unwrap();
    }

    /// Parsing is the compiler's cost, and a hostile module can make it huge: the
    /// limit stops that module (compiled unlimited, this one takes ~1.4 GB and 3 s)
    /// and the others are still compiled.
    #[test]
    fn the_compiler_is_held_to_its_memory_limit() {
        let dir = std::env::temp_dir().join(format!("mc-compile-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("small.py"), b"VALUE = 1\n").unwrap();
        let huge = format!("a = [{}]\n", "1,".repeat(2_000_000));
        std::fs::write(dir.join("huge.py"), huge).unwrap();
        compile_python(&crate::resolve_python(), &dir, &dir, 64 * 1024 * 1024);
        let compiled: Vec<String> = std::fs::read_dir(dir.join("__pycache__"))
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            compiled.iter().any(|name| name.starts_with("small.")),
            "{compiled:?}"
        );
        assert!(
            !compiled.iter().any(|name| name.starts_with("huge.")),
            "{compiled:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_zip_bomb_stops_at_the_unpacked_limit() {
        // 300 MiB of zeros compresses to ~300 KiB: under the zipped limit, over the
        // unpacked one.
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        out.start_file("bootstrap", options).unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..300 {
            out.write_all(&zeros).unwrap();
        }
        let bundle = out.finish().unwrap().into_inner();
        assert!(bundle.len() < MAX_ZIPPED);
        assert!(matches!(
            check(&bundle, "provided", ""),
            Err(BundleError::UnpacksTooLarge)
        ));
    }

    #[test]
    fn unpacking_is_once_per_hash_and_keeps_bootstrap_executable() {
        use std::os::unix::fs::PermissionsExt as _;
        let cache = std::env::temp_dir().join(format!("mc-bundle-{}", uuid::Uuid::new_v4()));
        let bundle = zip_of(&[("bootstrap", b"#!/bin/sh\n"), ("lib/data.txt", b"hi")]);
        let hash = hash(&bundle);
        let dir = unpack(&bundle, &hash, &cache, None).unwrap();
        let mode = std::fs::metadata(dir.join("bootstrap"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o100, 0o100, "bootstrap is executable");
        assert_eq!(std::fs::read(dir.join("lib/data.txt")).unwrap(), b"hi");
        let data_mode = std::fs::metadata(dir.join("lib/data.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(data_mode & 0o777, 0o444, "code is read-only to everyone");
        assert!(is_intact(&cache, &hash));
        std::fs::write(dir.join("marker"), b"").unwrap();
        assert_eq!(unpack(&bundle, &hash, &cache, None).unwrap(), dir);
        assert!(
            dir.join("marker").exists(),
            "the second unpack reused the dir"
        );
        // A tree changed after unpacking is no longer intact: an added file, or a
        // rewritten one.
        assert!(!is_intact(&cache, &hash));
        std::fs::remove_file(dir.join("marker")).unwrap();
        assert!(is_intact(&cache, &hash));
        let data = dir.join("lib/data.txt");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&data, b"ho").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(!is_intact(&cache, &hash));
        discard(&cache, &hash);
        let dir = unpack(&bundle, &hash, &cache, None).unwrap();
        assert_eq!(std::fs::read(dir.join("lib/data.txt")).unwrap(), b"hi");
        assert!(is_intact(&cache, &hash));
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
