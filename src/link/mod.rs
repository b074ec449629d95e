//! `src/link/sidecar.order`, the list of functions release builds lay out
//! together (see `build.rs` and `benches/link-order.sh`), names each
//! function with its crate's hash. That hash changes with the crate's
//! dependencies, their versions and features, and the workspace's own
//! versions: after any such change the list names functions the binary no
//! longer has, nothing fails, and an idle sidecar just keeps more of the
//! binary resident (15 to 19.5 MiB instead of 11.5 once). So the list
//! records a digest of the files that decide those hashes, and a test fails
//! when they changed since it was written.

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// The files the digest covers, in this order; `benches/link-order.sh`
    /// writes the same digest (`cat` of them, `sha256sum`).
    const DIGESTED: [&str; 4] = [
        "Cargo.lock",
        "Cargo.toml",
        "proxy/Cargo.toml",
        "control/Cargo.toml",
    ];
    const PREFIX: &str = "# dependencies sha256:";

    #[test]
    fn the_link_order_was_written_for_these_dependencies() {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut hasher = Sha256::new();
        for file in DIGESTED {
            let text = std::fs::read(format!("{root}/{file}")).expect("a digested file");
            hasher.update(&text);
        }
        let now: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let order = include_str!("sidecar.order");
        let written = order
            .lines()
            .take_while(|line| line.starts_with('#'))
            .find_map(|line| line.strip_prefix(PREFIX))
            .and_then(|rest| rest.split_whitespace().next());
        assert_eq!(
            written,
            Some(now.as_str()),
            "src/link/sidecar.order was written for other dependencies (a change to \
             {DIGESTED:?} since): run `bash benches/link-order.sh` (needs valgrind; a release \
             build with the old list keeps more of the binary resident), then commit the list"
        );
    }
}
