//! The Workload API's unix socket: created with the configured mode,
//! replacing only a stale socket, and removed at shutdown if it is still
//! ours.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::sidecar::SidecarError;

/// A bound socket and the guard that removes its file.
pub struct BoundSocket {
    listener: UnixListener,
    guard: RemoveOnDrop,
}

impl BoundSocket {
    pub fn into_parts(self) -> (UnixListener, RemoveOnDrop) {
        (self.listener, self.guard)
    }
}

/// Removes the socket file when dropped, unless another process has put
/// its own there meanwhile (another inode).
pub struct RemoveOnDrop {
    path: PathBuf,
    inode: (u64, u64),
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.inode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn error(path: &Path, what: impl std::fmt::Display) -> SidecarError {
    SidecarError::WorkloadApi(format!("{}: {what}", path.display()))
}

/// Binds `path` with permission bits `mode`. A socket file left by an
/// earlier run is replaced; one that a live process answers on, or any
/// other kind of file, is not.
pub fn bind(path: &Path, mode: u32) -> Result<BoundSocket, SidecarError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Stale only when nobody listens; a socket we may not even
            // connect to (EACCES) is someone else's, and stays.
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(error(path, "another process serves this socket")),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    return Err(error(
                        path,
                        format!("a socket that is not ours to replace: {e}"),
                    ));
                }
            }
            std::fs::remove_file(path)
                .map_err(|e| error(path, format!("cannot remove the stale socket: {e}")))?;
        }
        Ok(_) => return Err(error(path, "exists and is not a socket; not replacing it")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(path, e)),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| error(path, format!("cannot listen: {e}")))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| error(path, e))?;
    let guard = RemoveOnDrop {
        path: path.to_owned(),
        inode: (meta.dev(), meta.ino()),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| error(path, format!("cannot set mode {mode:o}: {e}")))?;
    Ok(BoundSocket { listener, guard })
}
