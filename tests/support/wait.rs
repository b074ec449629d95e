//! Waiting for something to become true: one bounded poll for the tests
//! (and, through `poll`, the load benches). On timeout it says what it
//! waited for and what it saw last, rather than just "timed out".

use std::fmt::Display;
use std::time::Duration;

/// How long [`eventually`] leaves between two looks.
pub const STEP: Duration = Duration::from_millis(50);

/// What one look found: `Some`, `Ok` or `true` is done; `None`, `Err` or
/// `false` is "not yet", an `Err` carrying what was seen instead.
pub trait Attempt {
    type Value;
    fn into_result(self) -> Result<Self::Value, String>;
}

impl<T> Attempt for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".to_owned())
    }
}

impl<T, E: Display> Attempt for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

impl Attempt for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".to_owned())
        }
    }
}

/// Looks with `f` every `every` until it is done, for at most `limit` (the
/// last look may start at the deadline); the value, or the last observation.
pub async fn poll<A: Attempt>(
    limit: Duration,
    every: Duration,
    mut f: impl AsyncFnMut() -> A,
) -> Result<A::Value, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match f().await.into_result() {
            Ok(value) => return Ok(value),
            Err(seen) if tokio::time::Instant::now() >= deadline => return Err(seen),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Looks with `f` every [`STEP`] until it is done; panics naming `what`
/// and the last observation after `limit`.
pub async fn eventually<A: Attempt>(
    what: impl Display,
    limit: Duration,
    f: impl AsyncFnMut() -> A,
) -> A::Value {
    eventually_every(what, limit, STEP, f).await
}

/// As [`eventually`], looking every `every` (a slow measurement, or a
/// paused clock stepped in large strides).
pub async fn eventually_every<A: Attempt>(
    what: impl Display,
    limit: Duration,
    every: Duration,
    f: impl AsyncFnMut() -> A,
) -> A::Value {
    match poll(limit, every, f).await {
        Ok(value) => value,
        Err(seen) => panic!("not within {limit:?}: {what}; last seen: {seen}"),
    }
}

/// As [`eventually`], for code outside a runtime: sleeps the thread.
pub fn eventually_blocking<A: Attempt>(
    what: impl Display,
    limit: Duration,
    mut f: impl FnMut() -> A,
) -> A::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match f().into_result() {
            Ok(value) => return value,
            Err(seen) if std::time::Instant::now() >= deadline => {
                panic!("not within {limit:?}: {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(STEP),
        }
    }
}
