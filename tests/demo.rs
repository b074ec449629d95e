//! `warden demo`: the demo mesh behaves as printed, and every sidecar it
//! starts dies with it, whether the demo ends on SIGTERM or is SIGKILLed.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::eventually_blocking;

#[test]
fn the_demo_mesh_runs_on_its_control_plane_and_exits_0() {
    let out = support::warden(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "control plane for trust domain demo.warden.local",
        "=> 200",
        "=> 403",
        "revoked",
        "=> 502",
        "All as expected.",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}

/// Processes whose parent is `pid` (from /proc), alive (not zombies).
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, state)) = parent_and_state(child)
            && ppid == pid
            && state != 'Z'
        {
            found.push(child);
        }
    }
    found
}

/// `(ppid, state)` from /proc/PID/stat; `None` once the process is gone.
fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

fn alive(pid: u32) -> bool {
    parent_and_state(pid).is_some_and(|(_, state)| state != 'Z')
}

/// Kills those of its processes still alive when dropped: none is left
/// behind, whatever the verdict.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for p in self.0.iter().filter(|p| alive(**p)) {
            if let Some(pid) = rustix::process::Pid::from_raw(*p as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Starts `warden demo --keep`, waits until the mesh is up, signals the
/// demo with `signal`, and checks that each of its sidecars is gone soon.
fn sidecars_die_with_the_demo(signal: rustix::process::Signal) {
    let mut demo = Command::new(support::warden_bin())
        .args(["demo", "--keep"])
        .env("WARDEN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn warden demo");
    let stdout = demo.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut up = false;
    for line in lines.by_ref() {
        let line = line.expect("demo stdout");
        if line.starts_with("The mesh keeps running") {
            up = true;
            break;
        }
    }
    assert!(up, "the demo ended before its mesh was up");
    let sidecars = children_of(demo.id());
    assert_eq!(
        sidecars.len(),
        3,
        "expected three sidecar processes: {sidecars:?}"
    );

    let pid = rustix::process::Pid::from_raw(demo.id() as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal the demo");
    let status = demo.wait().expect("wait for the demo");
    // Bounded: the sidecars drain (at most their drain timeout) and exit.
    let _reaper = Reaper(sidecars.clone());
    eventually_blocking(
        format_args!("the sidecars to die with the demo ({status})"),
        Duration::from_secs(10),
        || {
            let left: Vec<u32> = sidecars.iter().copied().filter(|p| alive(*p)).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?} still alive"))
            }
        },
    );
    drop(lines);
}

#[test]
fn a_sigterm_to_the_demo_stops_every_sidecar() {
    sidecars_die_with_the_demo(rustix::process::Signal::TERM);
}

#[test]
fn a_sigkill_to_the_demo_stops_every_sidecar() {
    sidecars_die_with_the_demo(rustix::process::Signal::KILL);
}
