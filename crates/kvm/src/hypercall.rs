//! One hypercall, from the guest's registers to the host and back. Pure
//! over the guest's memory and the [`Host`], so that it is tested (and can
//! be fuzzed) without KVM. Every guest pointer is checked against the
//! memory map ([`Layout::guest_may`]) before a byte is copied: the guest
//! can name only pages it could touch itself.

use mirage_engine::codec::MAX_MESSAGE_LEN;
use mirage_engine::{Host, Instant, Received, Route};
use mirage_kvm_abi as abi;

use crate::VmError;
use crate::layout::Layout;

/// The registers a hypercall reads.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Args {
    pub port: u16,
    pub rdi: u64,
    pub rsi: u64,
    pub r8: u64,
}

/// What the guest gets back, or that it asked to stop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Resume { rax: u64, rdx: Option<u64> },
    Exit(u64),
}

/// Where guest log lines go.
pub type LogSink<'a> = &'a mut dyn FnMut(&str);

pub(crate) fn dispatch<H: Host>(
    args: Args,
    layout: &Layout,
    mem: &mut [u8],
    host: &mut H,
    log: LogSink<'_>,
) -> Result<Outcome, VmError> {
    let resume = |rax| Ok(Outcome::Resume { rax, rdx: None });
    match args.port {
        abi::PORT_RECV => {
            let buf = guest_slice_mut(layout, mem, "recv", args.rdi, args.rsi)?;
            let got = host
                .recv(Instant(args.r8), buf)
                .map_err(|e| VmError::Host(e.to_string()))?;
            let rax = match got {
                // The host never reports more than the buffer; a broken one
                // must not make the guest read past it.
                Received::Message(n) if n as u64 <= args.rsi => n as u64,
                Received::Message(n) => {
                    return Err(VmError::Host(format!("a {n}-byte message for a smaller buffer")));
                }
                Received::Timeout => abi::RECV_TIMEOUT,
                Received::Closed => abi::RECV_CLOSED,
            };
            Ok(Outcome::Resume {
                rax,
                rdx: Some(host.now().millis()),
            })
        }
        abi::PORT_SEND => {
            let to = match args.rdi {
                abi::ROUTE_SUPERVISOR => Route::Supervisor,
                abi::ROUTE_PEER => Route::Peer,
                other => {
                    return Err(VmError::BadArgument {
                        call: "send",
                        value: other,
                    });
                }
            };
            if args.r8 > MAX_MESSAGE_LEN as u64 {
                return Err(VmError::Oversized { len: args.r8 });
            }
            let bytes = guest_slice(layout, mem, "send", args.rsi, args.r8)?;
            host.send(to, bytes).map_err(|e| VmError::Host(e.to_string()))?;
            resume(abi::SEND_OK)
        }
        abi::PORT_LOG => {
            let len = args.rsi.min(abi::LOG_MAX as u64);
            let bytes = guest_slice(layout, mem, "log", args.rdi, len)?;
            log(&String::from_utf8_lossy(bytes));
            resume(0)
        }
        abi::PORT_SEED => {
            let buf = guest_slice_mut(layout, mem, "seed", args.rdi, abi::SEED_LEN as u64)?;
            fill_random(buf).map_err(|e| VmError::Host(format!("getrandom: {e}")))?;
            resume(0)
        }
        abi::PORT_EXIT => Ok(Outcome::Exit(args.rdi)),
        port => Err(VmError::UnknownPort { port }),
    }
}

fn guest_slice<'m>(
    layout: &Layout,
    mem: &'m [u8],
    call: &'static str,
    addr: u64,
    len: u64,
) -> Result<&'m [u8], VmError> {
    if !layout.guest_may(addr, len, false) {
        return Err(VmError::BadPointer { call, addr, len });
    }
    // In bounds: guest_may checked `addr + len <= memory == mem.len()`.
    Ok(&mem[addr as usize..(addr + len) as usize])
}

fn guest_slice_mut<'m>(
    layout: &Layout,
    mem: &'m mut [u8],
    call: &'static str,
    addr: u64,
    len: u64,
) -> Result<&'m mut [u8], VmError> {
    if !layout.guest_may(addr, len, true) {
        return Err(VmError::BadPointer { call, addr, len });
    }
    Ok(&mut mem[addr as usize..(addr + len) as usize])
}

fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is valid for writes of its length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{parse, tests::image};
    use std::collections::VecDeque;

    /// A host with queued messages and a record of what was sent.
    #[derive(Default)]
    struct FakeHost {
        inbox: VecDeque<Vec<u8>>,
        sent: Vec<(Route, Vec<u8>)>,
    }

    impl Host for FakeHost {
        type Error = String;
        fn now(&mut self) -> Instant {
            Instant(1234)
        }
        fn recv(&mut self, _: Instant, buf: &mut [u8]) -> Result<Received, String> {
            match self.inbox.pop_front() {
                None => Ok(Received::Closed),
                Some(m) if m.len() > buf.len() => Err("oversize".into()),
                Some(m) => {
                    buf[..m.len()].copy_from_slice(&m);
                    Ok(Received::Message(m.len()))
                }
            }
        }
        fn send(&mut self, to: Route, m: &[u8]) -> Result<(), String> {
            self.sent.push((to, m.to_vec()));
            Ok(())
        }
    }

    fn setup() -> (Layout, Vec<u8>) {
        let elf = image(
            0x10_0000,
            &[(5, 0x10_0000, &[0x90; 10], 10), (6, 0x10_1000, &[], 0x1000)],
        );
        let layout = Layout::new(&parse(&elf).unwrap(), 2 << 20, 64 << 10).unwrap();
        let mem = vec![0u8; layout.memory as usize];
        (layout, mem)
    }

    fn call(
        port: u16,
        rdi: u64,
        rsi: u64,
        r8: u64,
        l: &Layout,
        mem: &mut [u8],
        host: &mut FakeHost,
    ) -> Result<Outcome, VmError> {
        let mut lines = Vec::new();
        let r = dispatch(Args { port, rdi, rsi, r8 }, l, mem, host, &mut |s: &str| {
            lines.push(s.to_string())
        });
        assert!(lines.len() <= 1);
        r
    }

    #[test]
    fn messages_go_through_guest_memory_both_ways() {
        let (l, mut mem) = setup();
        let mut host = FakeHost::default();
        host.inbox.push_back(b"hello".to_vec());
        let buf = l.heap.0;
        let got = call(abi::PORT_RECV, buf, 64, u64::MAX, &l, &mut mem, &mut host).unwrap();
        assert_eq!(
            got,
            Outcome::Resume {
                rax: 5,
                rdx: Some(1234)
            }
        );
        assert_eq!(&mem[buf as usize..buf as usize + 5], b"hello");
        let got = call(abi::PORT_SEND, abi::ROUTE_PEER, buf, 5, &l, &mut mem, &mut host).unwrap();
        assert_eq!(
            got,
            Outcome::Resume {
                rax: abi::SEND_OK,
                rdx: None
            }
        );
        assert_eq!(host.sent, vec![(Route::Peer, b"hello".to_vec())]);
        let got = call(abi::PORT_RECV, buf, 64, 0, &l, &mut mem, &mut host).unwrap();
        assert_eq!(
            got,
            Outcome::Resume {
                rax: abi::RECV_CLOSED,
                rdx: Some(1234)
            }
        );
        assert_eq!(
            call(abi::PORT_EXIT, 3, 0, 0, &l, &mut mem, &mut host).unwrap(),
            Outcome::Exit(3)
        );
    }

    #[test]
    fn pointers_outside_the_guests_own_pages_are_refused_before_any_copy() {
        let (l, mut mem) = setup();
        let mut host = FakeHost::default();
        host.inbox.push_back(vec![0xaa; 8]);
        let end = l.memory;
        let bad = [
            (abi::PORT_SEND, 0, end - 8, 16),     // straddles the end
            (abi::PORT_SEND, 0, u64::MAX - 4, 8), // wraps around
            (abi::PORT_SEND, 0, 0x1000, 8),       // the tender's tables
            (abi::PORT_LOG, 0x4000, 8, 0),        // the page tables
            (abi::PORT_RECV, 0x10_0000, 8, 0),    // into code
            (abi::PORT_RECV, 0x1000, 8, 0),       // into the GDT
            (abi::PORT_SEED, 0x10_0000, 0, 0),    // into code
            (abi::PORT_SEED, end - 16, 0, 0),     // 32 bytes past the end
        ];
        for (port, rdi, rsi, r8) in bad {
            let err = call(port, rdi, rsi, r8, &l, &mut mem, &mut host).unwrap_err();
            assert!(matches!(err, VmError::BadPointer { .. }), "{port:#x}: {err}");
        }
        assert!(host.sent.is_empty());
        assert_eq!(host.inbox.len(), 1, "no message consumed for a refused buffer");
        assert!(mem[0x10_0000..0x10_0008].iter().all(|&b| b == 0));
    }

    #[test]
    fn oversized_messages_unknown_ports_and_routes_end_the_guest() {
        let (l, mut mem) = setup();
        let mut host = FakeHost::default();
        let big = MAX_MESSAGE_LEN as u64 + 1;
        let err = call(abi::PORT_SEND, 0, l.heap.0, big, &l, &mut mem, &mut host).unwrap_err();
        assert!(matches!(err, VmError::Oversized { len } if len == big), "{err}");
        let err = call(abi::PORT_SEND, 7, l.heap.0, 1, &l, &mut mem, &mut host).unwrap_err();
        assert!(matches!(err, VmError::BadArgument { value: 7, .. }), "{err}");
        let err = call(0x80, 0, 0, 0, &l, &mut mem, &mut host).unwrap_err();
        assert!(matches!(err, VmError::UnknownPort { port: 0x80 }), "{err}");
    }

    #[test]
    fn log_lines_are_cut_and_seeds_are_random() {
        let (l, mut mem) = setup();
        let mut host = FakeHost::default();
        let at = l.heap.0 as usize;
        mem[at..at + 2000].fill(b'x');
        let mut lines = Vec::new();
        let args = Args {
            port: abi::PORT_LOG,
            rdi: at as u64,
            rsi: 2000,
            r8: 0,
        };
        dispatch(args, &l, &mut mem, &mut host, &mut |s: &str| {
            lines.push(s.to_string())
        })
        .unwrap();
        assert_eq!(lines, vec!["x".repeat(abi::LOG_MAX)]);
        call(abi::PORT_SEED, at as u64, 0, 0, &l, &mut mem, &mut host).unwrap();
        let first = mem[at..at + 32].to_vec();
        call(abi::PORT_SEED, at as u64, 0, 0, &l, &mut mem, &mut host).unwrap();
        assert_ne!(first, mem[at..at + 32], "two seeds alike");
        assert_eq!(mem[at + 32], b'x', "seed wrote past its 32 bytes");
    }
}
