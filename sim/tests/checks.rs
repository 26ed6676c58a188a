//! The shipped strategy regression checks hold (examples/*.check.toml), called from Rust the
//! way a user's own `cargo test` would.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_sim::check::check_file;

#[test]
fn shipped_pangu_checks_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".check.toml") {
            let o = check_file(&p).unwrap();
            assert!(o.passed(), "{}: {:?}", p.display(), o.failures);
            n += 1;
        }
    }
    assert_eq!(n, 3, "one check per PanGu-α model");
}
