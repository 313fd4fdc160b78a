//! Where the `kadalu-server` and `kadalu-mount` executables under test are.
//!
//! `cargo test -p kadalu-e2e` does not build other packages' binaries, and a
//! stale binary silently tests old code. So unless `KADALU_BIN_DIR` names a
//! directory of prebuilt binaries (CI artifacts, a release build), the harness
//! runs `cargo build --workspace --bins` once per test process, with the same profile as
//! the test binary itself, and uses its output. The whole workspace, not the three
//! packages: building a subset resolves other dependency features than
//! `cargo build --workspace` does, and would compile redb, tonic and the rest a second
//! time (a CI run once ran out of disk on that).
//! Cargo releases its build lock before running tests, so this nested build
//! only waits if some other build is running, and is a no-op when up to date.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Directory holding both executables.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KADALU_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let profile_dir = profile_dir();
        build_into(&profile_dir);
        profile_dir
    })
}

pub fn server_bin() -> PathBuf {
    existing(bin_dir().join("kadalu-server"))
}

pub fn mount_bin() -> PathBuf {
    existing(bin_dir().join("kadalu-mount"))
}

pub fn csi_bin() -> PathBuf {
    existing(bin_dir().join("kadalu-csi"))
}

fn existing(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "{} not found (set KADALU_BIN_DIR or let the harness build it)",
        path.display()
    );
    path
}

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>`),
/// which respects `CARGO_TARGET_DIR` and `--release` without re-deriving them.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent dir");
    if deps.file_name().is_some_and(|n| n == "deps") {
        return deps.parent().expect("deps has a parent").to_path_buf();
    }
    // Not run by cargo from target/<profile>/deps: fall back to the workspace default.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debug")
        .to_path_buf()
}

fn build_into(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--workspace", "--bins"]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .expect("run cargo build for the binaries under test");
    assert!(status.success(), "`cargo build --workspace --bins` failed");
}
