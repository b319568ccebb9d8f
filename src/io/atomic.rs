//! Replacing a file so that a reader sees the old content or the new one, never a part of either.
//!
//! [`write_atomic`] writes the bytes to a new temporary file in the target's directory, flushes it to
//! disk, renames it over the target and then flushes the directory, so the rename itself survives a
//! crash. The temporary file is created with `create_new` (`O_CREAT | O_EXCL`): it is never an
//! existing file, and a symlink planted under its name is neither followed nor replaced. Its name,
//! `.{file name}.{pid}-{sequence}.tmp`, is unique to the process and the call; if it is taken anyway
//! the next sequence number is tried. On every error the temporary file is removed.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// How many temporary names are tried before giving up.
const ATTEMPTS: u32 = 64;

/// Writes `bytes` to `path`, replacing any existing file atomically: a reader sees the old content
/// or the new one, never a part of either.
///
/// The bytes go to a new temporary file in the target's directory, `.{file name}.{pid}-{sequence}.tmp`,
/// created with `create_new` (`O_CREAT | O_EXCL`, so neither an existing file nor a planted symlink is
/// opened); it is flushed to disk, renamed over the target, and the directory is flushed so the rename
/// survives a crash. On every error the temporary file is removed.
///
/// # Errors
/// [`Error::Io`] naming `path` if it has no file name, if no temporary file can be created beside
/// it, or if writing, syncing or renaming fails; the temporary file is removed first and the
/// existing file (if any) is left as it was.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path names no file to write",
            ),
        ));
    };
    let dir = directory_of(path);
    let pid = std::process::id();
    write_atomic_via(path, bytes, |_| {
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{pid}-{seq}.tmp"));
        dir.join(tmp)
    })
}

/// [`write_atomic`] with the temporary names given by `candidate(attempt)`, `attempt` counting
/// from 0 (tests choose names they can plant files under).
fn write_atomic_via(
    path: &Path,
    bytes: &[u8],
    mut candidate: impl FnMut(u32) -> PathBuf,
) -> Result<()> {
    let (tmp, mut file) = create_unique(path, &mut candidate)?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    file.write_all(bytes).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    guard.disarm();
    sync_directory(&directory_of(path));
    Ok(())
}

/// Creates the first free candidate name, never opening an existing file or symlink.
fn create_unique(
    path: &Path,
    candidate: &mut impl FnMut(u32) -> PathBuf,
) -> Result<(PathBuf, File)> {
    for attempt in 0..ATTEMPTS {
        let tmp = candidate(attempt);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(path, e)),
        }
    }
    Err(io_error(
        path,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{ATTEMPTS} temporary file names beside it were all taken"),
        ),
    ))
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Flushes a directory's entries (so a rename in it is durable) where the platform allows; a
/// failure is ignored because the new content is already in place (some file systems refuse
/// `fsync` on a directory).
fn sync_directory(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Removes the temporary file unless disarmed, on every early return (and unwinding).
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fixq-atomic-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_content_and_leaves_nothing_else() {
        let d = scratch("replace");
        let p = d.join("w.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(entries(&d), vec!["w.bin"]);
        // Empty content is written too.
        write_atomic(&p, b"").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_or_symlink_under_the_temporary_name_is_not_touched() {
        let d = scratch("planted");
        let p = d.join("w.bin");
        let names = |i: u32| d.join(format!(".w.bin.test-{i}.tmp"));
        std::fs::write(names(0), b"someone else's").unwrap();
        let victim = d.join("victim");
        std::fs::write(&victim, b"do not follow").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&victim, names(1)).unwrap();
        #[cfg(not(unix))]
        std::fs::write(names(1), b"taken").unwrap();
        write_atomic_via(&p, b"new", names).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read(names(0)).unwrap(), b"someone else's");
        assert_eq!(std::fs::read(&victim).unwrap(), b"do not follow");
        #[cfg(unix)]
        assert!(
            std::fs::symlink_metadata(names(1))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // The third name was used and renamed away.
        assert!(!names(2).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_temporary_name_taken_is_an_io_error_naming_the_path() {
        let d = scratch("taken");
        let p = d.join("w.bin");
        let taken = d.join("taken");
        std::fs::write(&taken, b"x").unwrap();
        match write_atomic_via(&p, b"new", |_| taken.clone()) {
            Err(Error::Io { path, source }) => {
                assert_eq!(path, p.display().to_string());
                assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
                assert_eq!(
                    source.to_string(),
                    "64 temporary file names beside it were all taken"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!p.exists());
        assert_eq!(std::fs::read(&taken).unwrap(), b"x");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file_and_keeps_the_target() {
        let d = scratch("failed");
        // The target is a non-empty directory: the rename over it fails after the temporary file
        // was written and synced.
        let p = d.join("target");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"kept").unwrap();
        match write_atomic(&p, b"new") {
            Err(Error::Io { path, .. }) => assert_eq!(path, p.display().to_string()),
            other => panic!("{other:?}"),
        }
        assert_eq!(entries(&d), vec!["target"]);
        assert_eq!(std::fs::read(p.join("inside")).unwrap(), b"kept");
        // A missing directory fails before anything is created.
        let q = d.join("missing").join("w.bin");
        assert!(matches!(write_atomic(&q, b"new"), Err(Error::Io { .. })));
        assert_eq!(entries(&d), vec!["target"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        match write_atomic(Path::new("/"), b"x") {
            Err(Error::Io { path, source }) => {
                assert_eq!(path, "/");
                assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput);
            }
            other => panic!("{other:?}"),
        }
    }
}
