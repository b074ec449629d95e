//! The `main` of the load benches that run their own async harness.

/// Runs `run` on a multi-thread runtime, except under `cargo test
/// --benches`, which passes `--list` or `--test`: then nothing runs.
pub fn main<E: From<std::io::Error>>(
    run: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), E> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    // Thousands of simulated sidecars hold a socket each: the soft limit
    // on open files up to the hard one (the servers raise theirs too).
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run)
}

/// The value of variable `name` parsed as `T`, or `default` when unset or
/// unparsable (the benches' knobs).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
