//! The tender's hypercall handling without KVM, for the fuzz targets
//! (`fuzz/fuzz_targets/kvm_hypercall.rs`): the guest's registers and
//! memory are the input, and the checks are the tender's promises: a
//! hypercall never panics, never writes a page the guest could not write
//! itself, and never hands the host more than a message's cap.

use mirage_engine::codec::MAX_MESSAGE_LEN;
use mirage_engine::{Host, Instant, Received, Route};
use mirage_kvm_abi::{IMAGE_BASE, PAGE_SIZE};

use crate::VmError;
use crate::elf::{Image, Segment};
use crate::hypercall::{self, Args, Outcome};
use crate::layout::Layout;

/// The smallest guest: one code page and one data page at the image's
/// base, 2 MiB of memory, a 64 KiB stack.
pub const MEMORY: usize = 2 << 20;

const CODE: [u8; 16] = [0x90; 16];

fn layout() -> Layout {
    let image = Image {
        entry: IMAGE_BASE,
        segments: vec![
            Segment {
                vaddr: IMAGE_BASE,
                memsz: CODE.len() as u64,
                data: &CODE,
                write: false,
                exec: true,
            },
            Segment {
                vaddr: IMAGE_BASE + PAGE_SIZE,
                memsz: PAGE_SIZE,
                data: &[],
                write: true,
                exec: false,
            },
        ],
    };
    Layout::new(&image, MEMORY, 64 << 10).expect("the fuzzing layout fits")
}

/// A host that replays queued messages (then says the channel closed)
/// and counts what it was sent.
#[derive(Default)]
pub struct ScriptedHost {
    pub inbox: Vec<Vec<u8>>,
    pub sent: Vec<(Route, usize)>,
}

impl Host for ScriptedHost {
    type Error = String;
    fn now(&mut self) -> Instant {
        Instant(1)
    }
    fn recv(&mut self, _: Instant, buf: &mut [u8]) -> Result<Received, String> {
        let Some(m) = self.inbox.pop() else {
            return Ok(Received::Closed);
        };
        // A channel never delivers more than the buffer: it cuts the
        // message, as a SOCK_SEQPACKET receive does.
        let n = m.len().min(buf.len());
        buf[..n].copy_from_slice(&m[..n]);
        Ok(Received::Message(n))
    }
    fn send(&mut self, to: Route, m: &[u8]) -> Result<(), String> {
        assert!(
            m.len() <= MAX_MESSAGE_LEN,
            "a message over the cap reached the host"
        );
        self.sent.push((to, m.len()));
        Ok(())
    }
}

/// One hypercall with these registers over guest memory that starts as
/// `fill` (repeated), then the check that only guest-writable pages
/// changed. `Ok(true)`: the guest resumes; `Ok(false)`: it exited.
pub fn hypercall(
    port: u16,
    rdi: u64,
    rsi: u64,
    r8: u64,
    fill: &[u8],
    host: &mut ScriptedHost,
) -> Result<bool, VmError> {
    let layout = layout();
    let mut mem = vec![0u8; MEMORY];
    if !fill.is_empty() {
        for (b, f) in mem.iter_mut().zip(fill.iter().cycle()) {
            *b = *f;
        }
    }
    let before = mem.clone();
    let args = Args { port, rdi, rsi, r8 };
    let result = hypercall::dispatch(args, &layout, &mut mem, host, &mut |line: &str| {
        assert!(
            line.len() <= 4 * mirage_kvm_abi::LOG_MAX,
            "a log line over its cut"
        );
    });
    for (page, (now, then)) in mem
        .chunks(PAGE_SIZE as usize)
        .zip(before.chunks(PAGE_SIZE as usize))
        .enumerate()
    {
        if now != then {
            let addr = page as u64 * PAGE_SIZE;
            assert!(
                layout.guest_may(addr, PAGE_SIZE, true),
                "hypercall {port:#x} wrote page {addr:#x}, which the guest may not write"
            );
        }
    }
    match result? {
        Outcome::Resume { .. } => Ok(true),
        Outcome::Exit(_) => Ok(false),
    }
}
