//! The sidecar's state directory: its SVID and the revocation list, kept
//! across restarts.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::identity::Svid;

use super::api;

/// Where the sidecar keeps its SVID between restarts, so a restart does not
/// need a new join token.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// The SVID saved by an earlier run, if it is still valid.
    pub fn load(&self) -> Option<Svid> {
        let chain = std::fs::read(self.0.join("svid.pem")).ok()?;
        let key = std::fs::read(self.0.join("svid.key")).ok()?;
        let svid = Svid::from_pem(&chain, &key).ok()?;
        svid.is_valid_at(SystemTime::now()).then_some(svid)
    }

    /// The revocation list saved by an earlier run: a restarted sidecar
    /// keeps refusing what was revoked, even before its watch reconnects.
    pub fn load_revoked(&self) -> Option<api::RevocationList> {
        serde_json::from_slice(&std::fs::read(self.0.join("revoked.json")).ok()?).ok()
    }

    pub(super) fn save_revoked(&self, list: &api::RevocationList) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.0)?;
        let bytes = serde_json::to_vec(list).unwrap_or_default();
        write_private(&self.0.join("revoked.json"), &bytes)
    }

    pub(super) fn save(&self, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.0)?;
        write_private(&self.0.join("svid.key"), key_pem.as_bytes())?;
        write_private(&self.0.join("svid.pem"), chain_pem.as_bytes())
    }
}

/// Writes `path` through a temporary file and a rename, mode 0600.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
