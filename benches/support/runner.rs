//! The `main` of the load benches that run their own async harness.

/// Runs `run` on a multi-thread runtime, except under `cargo test
/// --benches`, which passes `--list` or `--test`: then nothing runs.
pub fn main<E: From<std::io::Error>>(
    run: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), E> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    // Thousands of simulated sidecars hold a socket each, as the servers
    // they call do.
    warden_proxy::process::raise_open_files_limit();
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
