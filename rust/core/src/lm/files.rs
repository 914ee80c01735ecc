//! Reading and replacing model files safely: regular files only, atomic replacement.

use std::fs::File;
use std::path::Path;

use crate::{Error, Result};

/// Opens `path` for reading if it is a regular file: a FIFO would block (or be consumed),
/// a device or directory is never a model.
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    if path.as_os_str().is_empty() {
        return Err(Error::value("path", "must name a file, got an empty path"));
    }
    let kind = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .file_type();
    if !kind.is_file() {
        return Err(Error::io(path, not_regular(kind)));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // Checked again on the open file, in case the path was swapped in between.
    let kind = file.metadata().map_err(|e| Error::io(path, e))?.file_type();
    if !kind.is_file() {
        return Err(Error::io(path, not_regular(kind)));
    }
    Ok(file)
}

fn not_regular(kind: std::fs::FileType) -> std::io::Error {
    let what = if kind.is_dir() {
        "a directory"
    } else if is_fifo(&kind) {
        "a FIFO"
    } else {
        "a device or other special file"
    };
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("is {what}, not a regular file"),
    )
}

#[cfg(unix)]
fn is_fifo(kind: &std::fs::FileType) -> bool {
    std::os::unix::fs::FileTypeExt::is_fifo(kind)
}

#[cfg(not(unix))]
fn is_fifo(_: &std::fs::FileType) -> bool {
    false
}

/// The file a save to `path` replaces: `path` itself, or for a symbolic link the file it
/// points to (so the link stays a link and its target gets the new content); anything but a
/// regular file or a new name is refused (renaming over a device or a FIFO would replace it).
fn save_target(path: &Path, depth: usize) -> Result<std::path::PathBuf> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(Error::io(path, e)),
        Ok(meta) => meta,
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        if depth == 40 {
            return Err(Error::io(
                path,
                std::io::Error::other("too many symbolic links"),
            ));
        }
        let link = std::fs::read_link(path).map_err(|e| Error::io(path, e))?;
        // A relative link is relative to the link's directory; `join` keeps an absolute one.
        let target = path.parent().unwrap_or(Path::new("")).join(link);
        return save_target(&target, depth + 1);
    }
    if !kind.is_file() {
        return Err(Error::io(path, not_regular(kind)));
    }
    Ok(path.to_path_buf())
}

/// Writes through a temporary file in the same directory, renamed over `path` (or the file a
/// symbolic link at `path` points to) once complete, so a failed write never leaves a
/// truncated file behind. The temporary file is `tempfile`'s: a fresh random name opened
/// with O_EXCL, so concurrent saves to one path never share it and a link planted under the
/// name is never followed; it is removed if anything fails.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let path = &save_target(path, 0)?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::value("path", format!("must name a file, got {path:?}")))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // tempfile's default is 0600; a saved model gets what File::create gives (0666 & ~umask).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let result = builder.tempfile_in(dir).and_then(|mut tmp| {
        write(tmp.as_file_mut())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map(drop).map_err(|e| e.error)
    });
    result.map_err(|e| Error::io(path, e))
}
