//! A scratch directory per test (configs, leases, logs, state and run
//! directories of the daemon under test), removed on drop. It is meant to
//! be the last field of a test's fixture, so that logs printed on failure
//! by the fields before it are still there to print.

use std::path::{Path, PathBuf};

/// A fresh, empty directory under the system temp dir; removed on drop.
#[derive(Debug)]
pub struct TestDir(PathBuf);

impl TestDir {
    /// `<tmp>/<prefix>-<id>`, emptied if a crashed run left it behind.
    pub fn new(prefix: &str, id: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TestDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_fresh_and_goes_on_drop() {
        let id = format!("{}", std::process::id());
        let first = TestDir::new("testkit-dir", &id);
        std::fs::write(first.join("left-over"), b"x").unwrap();
        let path = first.path().to_owned();
        std::mem::forget(first);
        let second = TestDir::new("testkit-dir", &id);
        assert!(!second.join("left-over").exists(), "not emptied");
        drop(second);
        assert!(!path.exists());
    }
}
