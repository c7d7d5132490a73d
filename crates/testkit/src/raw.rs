//! Hostile-server scaffolding: a raw packet server on one end of a veth
//! pair, for tests that must send what no real server would.
//!
//! A thread moves into the server's namespace, looks up the interface, opens
//! the packet socket the caller asks for (with the caller's kernel filter,
//! e.g. [`PacketSocket::open_server`]) and then, for each frame received:
//! `parse` turns it into the protocol's message (or drops it), every message
//! is recorded, and the *script* maps it to zero or more whole frames to
//! send back. Frames can also be injected unsolicited
//! ([`RawServer::inject`]) or flooded at a fixed rate ([`RawServer::flood`]).
//! Nothing here knows a protocol: message types, reply builders and scripts
//! stay in each service's tests.
//!
//! Nothing validates what is sent: that is the point. Everything runs inside
//! namespaces the test made, never on a real interface.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mirage_sdk::channel::wait_readable;
use mirage_sdk::netlink::Rtnl;
use mirage_sdk::packet::PacketSocket;

/// How often the server loop looks at its stop flag while idle.
const IDLE_POLL_MS: u64 = 20;
/// Receive buffer: the largest frame a veth delivers at its default MTU and
/// then some; longer frames arrive truncated, which parsers must handle.
const RECV_BUF: usize = 9216;
/// Bound on the server's start-up (namespace, lookup, socket).
const START_WITHIN: Duration = Duration::from_secs(10);
/// A scripted reply the device refuses (a veth whose peer's ring is full
/// under load refuses with ENOBUFS or ENETDOWN) is tried again this often,
/// 1 ms apart: a case's frames must all go out, in order.
const SEND_TRIES: u32 = 200;

/// Send `frame`, trying again while the device refuses it for a moment.
fn send_reliably(sock: &PacketSocket, frame: &[u8]) -> io::Result<()> {
    let mut tries = 1;
    loop {
        match sock.send(frame) {
            Ok(()) => return Ok(()),
            Err(_) if tries < SEND_TRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The server's link, as its `ctx` builder sees it.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
}

/// Where the server runs and how it opens its socket.
pub struct Spec<O> {
    /// Namespace name (`/run/netns/<ns>`).
    pub ns: String,
    /// The interface to serve on, in `ns`.
    pub ifname: String,
    /// Opens the socket on the interface index, in `ns` (the kernel filter
    /// is the caller's: which frames the server ever sees).
    pub open: O,
}

/// The running server. `C` is what scripts build replies from (addresses,
/// MAC), `M` one received message. Stops and joins its thread on drop.
pub struct RawServer<C, M> {
    ctx: C,
    sock: Arc<PacketSocket>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<M>>>,
    sent: Arc<AtomicU64>,
    /// Scripted replies that could not be sent at all.
    send_errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl<C, M> RawServer<C, M>
where
    C: Clone + Send + 'static,
    M: Clone + Send + 'static,
{
    /// Start serving. `ctx` builds the script's context from the link;
    /// `parse` turns a received frame into a message given those recorded
    /// before it (`None`: not for this server, ignored); `script` answers
    /// each message with whole frames. Returns once the socket is open, so
    /// no frame sent afterwards can be missed.
    pub fn start<O, X, P, S>(spec: Spec<O>, ctx: X, mut parse: P, mut script: S) -> Self
    where
        O: FnOnce(u32) -> io::Result<PacketSocket> + Send + 'static,
        X: FnOnce(Link) -> Result<C, String> + Send + 'static,
        P: FnMut(&[u8], &[M]) -> Option<M> + Send + 'static,
        S: FnMut(&C, &M) -> Vec<Vec<u8>> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::<M>::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let send_errors = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(C, Arc<PacketSocket>), String>>();
        let (stop2, seen2, sent2, errors2) = (stop.clone(), seen.clone(), sent.clone(), send_errors.clone());
        let Spec { ns, ifname, open } = spec;
        let thread = std::thread::spawn(move || {
            // setns affects this thread only: the socket and the interface
            // lookup happen in the server namespace.
            let opened = (|| -> Result<(C, Arc<PacketSocket>), String> {
                crate::netns::enter(&ns).map_err(|e| format!("setns {ns}: {e}"))?;
                let mut rtnl = Rtnl::open().map_err(|e| format!("rtnetlink: {e}"))?;
                let link = rtnl.link_by_name(&ifname).map_err(|e| format!("{ifname}: {e}"))?;
                let sock = open(link.index).map_err(|e| format!("socket: {e}"))?;
                let ctx = ctx(Link {
                    index: link.index,
                    mac: link.mac.ok_or("no MAC")?,
                })?;
                Ok((ctx, Arc::new(sock)))
            })();
            let (ctx, sock) = match opened {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(v.clone()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; RECV_BUF];
            while !stop2.load(Ordering::Relaxed) {
                match wait_readable(&[sock.as_fd()], Some(IDLE_POLL_MS)) {
                    Ok(r) if r[0] => {}
                    Ok(_) => continue,
                    Err(_) => break,
                }
                let Ok(r) = sock.recv(&mut buf) else { continue };
                let msg = {
                    let mut all = seen2.lock().unwrap();
                    let Some(m) = parse(&buf[..r.len.min(buf.len())], &all) else {
                        continue;
                    };
                    all.push(m.clone());
                    m
                };
                for frame in script(&ctx, &msg) {
                    match send_reliably(&sock, &frame) {
                        Ok(()) => {
                            sent2.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors2.lock().unwrap().push(e.to_string()),
                    }
                }
            }
        });
        let (ctx, sock) = ready_rx
            .recv_timeout(START_WITHIN)
            .expect("raw server did not start")
            .unwrap_or_else(|e| panic!("raw server: {e}"));
        RawServer {
            ctx,
            sock,
            stop,
            seen,
            sent,
            send_errors,
            thread: Some(thread),
        }
    }

    pub fn ctx(&self) -> &C {
        &self.ctx
    }

    /// Send frames now, unsolicited (replays, forged messages...).
    pub fn inject(&self, frames: &[Vec<u8>]) {
        for f in frames {
            send_reliably(&self.sock, f).expect("inject");
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every message so far, in arrival order.
    pub fn seen(&self) -> Vec<M> {
        self.seen.lock().unwrap().clone()
    }

    /// Messages so far that `pred` matches.
    pub fn count_where(&self, pred: impl Fn(&M) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|m| pred(m)).count()
    }

    /// Scripted replies the device refused even after retries: a case
    /// whose frames did not all go out proves nothing (tests assert this
    /// is empty).
    pub fn send_errors(&self) -> Vec<String> {
        self.send_errors.lock().unwrap().clone()
    }

    /// Frames the server has sent (replies, injections, floods).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Wait for a message matching `pred` (panics after `timeout`).
    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&M) -> bool) -> M {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.seen.lock().unwrap().iter().find(|s| pred(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no client message {what} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send `make(i)` at `per_sec` frames per second for `duration`, from
    /// the calling thread (in batches every 10 ms, so the rate holds without
    /// a timer per frame). Returns how many frames went out; send errors
    /// (a full device queue) are counted as not sent.
    pub fn flood(&self, per_sec: u64, duration: Duration, mut make: impl FnMut(u64) -> Vec<u8>) -> u64 {
        const TICK: Duration = Duration::from_millis(10);
        let start = Instant::now();
        let mut due = 0u64;
        let mut sent = 0u64;
        let mut i = 0u64;
        while start.elapsed() < duration {
            // Frames owed by now, at the asked rate.
            let target = start.elapsed().as_millis() as u64 * per_sec / 1000;
            while due < target {
                if self.sock.send(&make(i)).is_ok() {
                    sent += 1;
                }
                i += 1;
                due += 1;
            }
            std::thread::sleep(TICK);
        }
        self.sent.fetch_add(sent, Ordering::Relaxed);
        sent
    }
}

impl<C, M> Drop for RawServer<C, M> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The loop wakes every IDLE_POLL_MS; a panicking script has
            // already reported itself.
            let _ = t.join();
        }
    }
}
