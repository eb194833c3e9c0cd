//! Files a node or the market keeps across restarts (a key share, the coordinator's state):
//! replaced whole, so that a crash leaves the old content or the new, never a torn mix.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `contents`: written to `path` with the extension `tmp` (mode 0600 on
/// Unix, since such files may hold secrets), synced to disk, renamed over `path`, and the
/// rename synced too (the folder), so that once this returns the new content survives a
/// power loss.
pub fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = cohortex_types::private_file::private_options()
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    sync_folder_of(path)
}

/// Syncs the folder that holds `path`, so that a file created or renamed in it is on disk
/// (Unix; elsewhere a no-op).
pub fn sync_folder_of(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::File::open(folder)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
