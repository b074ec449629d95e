//! Release builds of `warden` place the code a sidecar runs together: the
//! linker lays out the functions listed in `src/link/sidecar.order` first,
//! in that order (lld's `--symbol-ordering-file`). The kernel maps a
//! binary's code in 64 KiB around each page a process touches; packed, an
//! idle sidecar keeps less of the binary resident. `benches/link-order.sh`
//! writes the file from a profile. A symbol the build no longer has is
//! skipped: a stale file costs memory, never correctness.
//!
//! Only where rustc links with its own lld (x86-64 Linux, since Rust 1.90)
//! and no other linker is configured; `WARDEN_LINK_ORDER=off` turns it off.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=src/link/sidecar.order");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WARDEN_LINK_ORDER");
    if order_file_applies() {
        let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        let order = Path::new(&dir).join("src/link/sidecar.order");
        if order.is_file() {
            println!(
                "cargo:rustc-link-arg-bin=warden=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bin=warden=-Wl,--no-warn-symbol-ordering");
        }
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
