//! The command implementations. Each returns the process exit code, or an
//! error that `main` prints; errors name the file and the problem.

pub mod ca;
pub mod control;
pub mod demo;
pub mod id;
pub mod policy;
pub mod proxy;
pub mod svid;

use std::path::Path;

use anyhow::Context;

pub(crate) fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
