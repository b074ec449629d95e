//! Release builds of `warden` place the code a sidecar runs together: the
//! linker lays out the functions listed in `src/link/sidecar.order` first,
//! in that order (lld's `--symbol-ordering-file`). The kernel maps a
//! binary's code in 64 KiB around each page a process touches; packed, an
//! idle sidecar keeps less of the binary resident. `benches/link-order.sh`
//! writes the file from a profile. A symbol the build no longer has is
//! skipped: a stale file costs memory, never correctness. Symbol names
//! depend on the compiler, so the file names the rustc it was written with
//! (`# rustc ...`, its first line) and a build with another one warns.
//!
//! Only for x86-64 Linux with no other linker configured, and only when a
//! probe shows the linker takes the option (rustc's own lld does since Rust
//! 1.90; GNU ld does not); `WARDEN_LINK_ORDER=off` turns it off.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/link/sidecar.order");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WARDEN_LINK_ORDER");
    if !order_file_applies() {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&dir).join("src/link/sidecar.order");
    let Ok(text) = std::fs::read_to_string(&order) else {
        return;
    };
    let args = [
        "-Xlinker".to_owned(),
        format!("--symbol-ordering-file={}", order.display()),
        "-Xlinker".to_owned(),
        "--no-warn-symbol-ordering".to_owned(),
    ];
    if !linker_accepts(&args) {
        println!(
            "cargo:warning=the linker does not take --symbol-ordering-file: src/link/sidecar.order not used (an idle sidecar keeps more of the binary resident)"
        );
        return;
    }
    for arg in &args {
        println!("cargo:rustc-link-arg-bin=warden={arg}");
    }
    let written_for = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("# "))
        .unwrap_or("an unnamed compiler");
    let rustc = rustc_version();
    if rustc.as_deref() != Some(written_for) {
        println!(
            "cargo:warning=src/link/sidecar.order was written for {written_for}, this is {}: run benches/link-order.sh (an idle sidecar keeps more of the binary resident until then)",
            rustc.as_deref().unwrap_or("an unknown rustc")
        );
    }
}

fn order_file_applies() -> bool {
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("WARDEN_LINK_ORDER") == "off" || var("PROFILE") != "release" {
        return false;
    }
    if var("TARGET") != "x86_64-unknown-linux-gnu" || env::var_os("RUSTC_LINKER").is_some() {
        return false;
    }
    // A linker chosen through RUSTFLAGS may not be lld.
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    !flags.split('\x1f').any(|flag| {
        flag.contains("linker") || flag.contains("-fuse-ld") || flag.contains("link-self-contained")
    })
}

fn rustc() -> PathBuf {
    env::var_os("RUSTC").map_or_else(|| PathBuf::from("rustc"), PathBuf::from)
}

fn rustc_version() -> Option<String> {
    let out = Command::new(rustc()).arg("-V").output().ok()?;
    let version = String::from_utf8(out.stdout).ok()?;
    Some(version.trim().to_owned())
}

/// Links an empty program with `args`, as the build will link `warden`.
fn linker_accepts(args: &[String]) -> bool {
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let source = out_dir.join("link_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let mut command = Command::new(rustc());
    command
        .arg(&source)
        .arg("-o")
        .arg(out_dir.join("link_probe"))
        .args(["--target", "x86_64-unknown-linux-gnu"]);
    for arg in args {
        command.arg(format!("-Clink-arg={arg}"));
    }
    command.output().is_ok_and(|out| out.status.success())
}
