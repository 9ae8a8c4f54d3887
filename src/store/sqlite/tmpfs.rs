//! Test helper shared by the store's own tests and the black-box storage-fault tests
//! (`tests/it/storage_faults.rs` includes this file by path): a small tmpfs to fill up.

use std::path::Path;

/// A tmpfs of `size` mounted on a fresh directory, unmounted (lazily) on drop.
pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` (the test is skipped, with a message) where this process may not mount, except
    /// under CI, which must run the test (as root).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs (this test needs root), and under CI it must run"
            );
            eprintln!("skipped: cannot mount a tmpfs here (this test needs root)");
            return None;
        }
        Some(Tmpfs(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}
