//! Files a node or the market keeps across restarts (a key share, the coordinator's state):
//! replaced whole, so that a crash leaves the old content or the new, never a torn mix.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `contents`: written to `path` with the extension `tmp` (mode 0600 on
/// Unix, since such files may hold secrets), synced to disk, then renamed over `path`.
pub fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = cohortex_types::private_file::private_options()
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
