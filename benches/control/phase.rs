//! One timed phase of the control bench: jobs run at a set concurrency,
//! their latencies and errors, and where the machine's CPU went meanwhile
//! (the control plane, the simulated sidecars, the database).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Server;

/// Where the machine's CPU time went, read at one instant.
#[derive(Clone, Copy)]
pub(super) struct CpuSplit {
    pub(super) control: Duration,
    pub(super) sidecars: Duration,
    pub(super) database: Option<Duration>,
    pub(super) machine: (u64, u64),
}

impl CpuSplit {
    fn since(self, before: CpuSplit) -> CpuSplit {
        CpuSplit {
            control: self.control.saturating_sub(before.control),
            sidecars: self.sidecars.saturating_sub(before.sidecars),
            database: self
                .database
                .zip(before.database)
                .map(|(a, b)| a.saturating_sub(b)),
            machine: (
                self.machine.0.saturating_sub(before.machine.0),
                self.machine.1.saturating_sub(before.machine.1),
            ),
        }
    }
}

/// Latencies in microseconds, sorted; and the errors.
pub(super) struct Phase {
    wall: Duration,
    latencies_us: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
    cpu: CpuSplit,
}

impl Phase {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[rank.min(self.latencies_us.len() - 1)] as f64 / 1000.0
    }

    /// Printed and as JSON; `raw` is the CA's raw signing rate of the same
    /// run.
    pub(super) fn report(&self, name: &str, n: usize, raw: f64) -> serde_json::Value {
        let ok = self.latencies_us.len();
        let rate = ok as f64 / self.wall.as_secs_f64();
        let each = |d: Duration| d.as_secs_f64() * 1e6 / ok.max(1) as f64;
        let cpu_us = each(self.cpu.control);
        println!(
            "  {name:<9} {ok}/{n} in {:.2}s = {rate:.0}/s   p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms   control-plane CPU {cpu_us:.0} µs each   errors {}{}",
            self.wall.as_secs_f64(),
            self.percentile_ms(50.0),
            self.percentile_ms(99.0),
            self.percentile_ms(100.0),
            self.errors,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        // What the whole machine spent on each: with every core busy and
        // the same CPU per operation, the rate could not pass `ceiling`.
        let sidecars_us = each(self.cpu.sidecars);
        let database_us = self.cpu.database.map(each);
        let total_us = cpu_us + sidecars_us + database_us.unwrap_or(0.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (busy, total) = self.cpu.machine;
        let busy = busy as f64 / total.max(1) as f64;
        let ceiling = cores as f64 * 1e6 / total_us.max(f64::MIN_POSITIVE);
        println!(
            "  {:<9} {:.2}x the raw signing rate; CPU each: control plane {cpu_us:.0} µs + simulated sidecars {sidecars_us:.0} µs{} = {total_us:.0} µs; {cores} cores {:.0}% busy, at most {ceiling:.0}/s = {:.2}x with every core busy",
            "",
            rate / raw.max(f64::MIN_POSITIVE),
            database_us
                .map(|d| format!(" + database {d:.0} µs"))
                .unwrap_or_default(),
            busy * 100.0,
            ceiling / raw.max(f64::MIN_POSITIVE),
        );
        json!({
            "ok": ok, "requested": n, "seconds": self.wall.as_secs_f64(), "per_second": rate,
            "p50_ms": self.percentile_ms(50.0), "p99_ms": self.percentile_ms(99.0),
            "max_ms": self.percentile_ms(100.0), "errors": self.errors,
            "control_plane_cpu_us_each": cpu_us,
            "vs_raw_signing": rate / raw.max(f64::MIN_POSITIVE),
            "simulated_sidecars_cpu_us_each": sidecars_us,
            "database_cpu_us_each": database_us,
            "machine_busy": busy,
            "ceiling_per_second": ceiling,
        })
    }
}

/// Runs `jobs` at `concurrency`, timing each; results in job order.
pub(super) async fn run_phase<T, R, F, Fut>(
    server: &Server,
    jobs: Vec<T>,
    concurrency: usize,
    f: F,
) -> (Phase, Vec<Option<R>>)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, String>> + Send,
{
    let n = jobs.len();
    let f = Arc::new(f);
    let mut indexed: Vec<(usize, T)> = jobs.into_iter().enumerate().collect();
    indexed.reverse();
    let queue = Arc::new(std::sync::Mutex::new(indexed));
    let cpu0 = server.cpu_split();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (queue, f) = (queue.clone(), f.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let next = queue.lock().expect("queue").pop();
                let Some((i, job)) = next else { break };
                let t = Instant::now();
                let result = f(job).await;
                out.push((i, t.elapsed(), result));
            }
            out
        }));
    }
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let mut latencies = Vec::with_capacity(n);
    let (mut errors, mut first_error) = (0, None);
    for w in workers {
        for (i, elapsed, result) in w.await.expect("worker") {
            match result {
                Ok(r) => {
                    latencies.push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
                    results[i] = Some(r);
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let wall = started.elapsed();
    let cpu = server.cpu_split().since(cpu0);
    latencies.sort_unstable();
    (
        Phase {
            wall,
            latencies_us: latencies,
            errors,
            first_error,
            cpu,
        },
        results,
    )
}
