//! Process-wide settings the servers make at start.

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does at start: a control plane holds a watch connection per sidecar and
/// a sidecar a connection per peer and app connection, and the common soft
/// default (1024) is soon reached, after which connections are refused.
/// A hard limit of "unlimited" is taken as the kernel's `fs.nr_open`. Not
/// raising it is logged, not fatal.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let most = limit.maximum.or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|n| n.trim().parse().ok())
    });
    let (Some(current), Some(most)) = (limit.current, most) else {
        return;
    };
    if current >= most {
        return;
    }
    let raised = Rlimit {
        current: Some(most),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = current, to = most, "open files limit raised"),
        Err(e) => {
            tracing::warn!(soft = current, hard = most, error = %e, "cannot raise the open files limit");
        }
    }
}
