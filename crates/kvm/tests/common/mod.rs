//! What the tests that boot real guests share. They need `/dev/kvm` and
//! the right to open it (root, or the kvm group): without it they fail,
//! loudly, unless MIRAGE_NO_KVM=1 says to skip them.

use std::sync::{Arc, Mutex};

use mirage_kvm::Kvm;

/// `/dev/kvm`, or `None` (the test returns) when MIRAGE_NO_KVM=1 is set.
pub fn kvm() -> Option<Kvm> {
    match mirage_kvm::open() {
        Ok(kvm) => Some(kvm),
        Err(e) if std::env::var("MIRAGE_NO_KVM").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: no usable /dev/kvm ({e}), and MIRAGE_NO_KVM=1 says to skip");
            None
        }
        Err(e) => panic!(
            "this test boots a real guest and needs /dev/kvm and the right to open it: {e} \
             (set MIRAGE_NO_KVM=1 to skip the KVM tests on purpose)"
        ),
    }
}

/// Guest log lines, kept for assertions.
#[derive(Clone, Default)]
pub struct Lines(pub Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn sink(&self) -> impl FnMut(&str) + use<> {
        let lines = self.0.clone();
        move |line: &str| lines.lock().unwrap().push(line.to_string())
    }
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}
