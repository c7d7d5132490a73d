//! The hostile-server suite: our daemon against a DHCP server that lies,
//! truncates, loops, floods and impersonates (support/hostile.rs). Each case
//! asserts three things (docs/hostile.md has the table):
//! - no role crashed: the role pids are the ones seen at start, and
//!   `engine_restarts`, `frames_refused` and `intents_refused` are 0 (the
//!   engine never asked for anything the actuator or network role refused);
//! - the host is exactly as expected: addresses, routes and resolv.conf;
//! - the defence was the right one: a counter in status.json and/or the
//!   supervisor's "engine dropped a frame: REASON" log line, counted.
//!
//! Most cases send the hostile frames and then a good reply in the same
//! burst, so that the case ends bound to the honest lease quickly, proving
//! the junk left no trace. Every case runs under `--sandbox seccomp`,
//! `--sandbox kvm` (the engine as a guest; needs /dev/kvm) and
//! `--sandbox none`; the cases of one mode run in parallel (each has its own
//! namespaces). `MIRAGE_HOSTILE_CASE=substring` runs only matching cases.
//! Needs root (network namespaces, raw sockets); CI runs as root.

mod support;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use dhcp_engine::wire::dhcp::{Message, MessageType, Op};
use dhcp_engine::wire::frame::{DHCP_CLIENT_PORT, build_udp_frame};
use mirage_ipc::Route;
use mirage_testkit::procfs::cpu_ticks;
use serde_json::Value;
use support::hostile::{Ctx, HostileServer, Seen, encode, surgery, with_raw_options};
use support::{CLIENT_IF, Net};

const BOUND_WITHIN: Duration = Duration::from_secs(20);
/// Cases of one sandbox mode running at once (the modes run side by side).
const PARALLEL: usize = 4;

/// The kernel's receive backlog is per CPU and shared by every namespace:
/// while a flood test fills it, a frame of another case can be dropped
/// before any socket sees it, and that case's exact drop count fails. The
/// floods hold this for writing, every case for reading.
static QUIET_LINK: RwLock<()> = RwLock::new(());
/// A second, rogue server on the same link.
const ROGUE_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x66, 0x02];
const ROGUE_HOST: u8 = 2;
const RESOLV_BEFORE: &str = "# before the client ran\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Seccomp,
    /// The engine as a KVM guest (needs /dev/kvm: `mirage_testkit::kvm`).
    Kvm,
    NoSandbox,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Seccomp => "seccomp",
            Mode::Kvm => "kvm",
            Mode::NoSandbox => "none",
        }
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

// ---- one run: namespaces, hostile server, daemon --------------------------

struct Run {
    // Declared first: the server stops before the namespaces go.
    server: HostileServer,
    net: Net,
    daemon: usize,
    roles: Vec<(String, u32)>,
    mode: Mode,
}

impl Run {
    /// Namespaces, the server with `script`, then the daemon with fast
    /// timings (no ACD, 200 ms first retransmission) plus `extra` flags.
    fn start(
        mode: Mode,
        extra: &[&str],
        script: impl FnMut(&Ctx, &Seen) -> Vec<Vec<u8>> + Send + 'static,
    ) -> Run {
        let net = Net::new();
        std::fs::write(net.path("resolv.conf"), RESOLV_BEFORE).unwrap();
        let server = HostileServer::start(&net, script);
        let mut run = Run {
            server,
            net,
            daemon: 0,
            roles: Vec::new(),
            mode,
        };
        run.start_daemon(extra);
        run
    }

    fn start_daemon(&mut self, extra: &[&str]) {
        let mut args = vec![
            "--sandbox",
            self.mode.arg(),
            "--no-acd",
            "--first-retransmit-ms",
            "200",
        ];
        args.extend_from_slice(extra);
        self.daemon = self.net.start_client(&args);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut roles = self.net.role_pids(self.daemon);
            if roles.len() == 3 {
                roles.sort();
                self.roles = roles;
                return;
            }
            assert!(Instant::now() < deadline, "roles not up: {roles:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Run::start`] with a configuration file of `toml` (given with
    /// `--config`), for settings that have no flag.
    fn start_with_config(
        mode: Mode,
        toml: &str,
        script: impl FnMut(&Ctx, &Seen) -> Vec<Vec<u8>> + Send + 'static,
    ) -> Run {
        let net = Net::new();
        std::fs::write(net.path("resolv.conf"), RESOLV_BEFORE).unwrap();
        let config = net.path("config.toml");
        std::fs::write(&config, toml).unwrap();
        let server = HostileServer::start(&net, script);
        let mut run = Run {
            server,
            net,
            daemon: 0,
            roles: Vec::new(),
            mode,
        };
        run.start_daemon(&["--config", config.to_str().unwrap()]);
        run
    }

    fn ctx(&self) -> Ctx {
        self.server.ctx().clone()
    }

    fn host(&self, h: u8) -> String {
        format!("{}.{h}", self.net.subnet)
    }

    fn status(&self) -> Value {
        self.net.status().expect("status.json")
    }

    fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap()
    }

    fn wait_bound(&self) -> Value {
        self.net.wait_state("bound", BOUND_WITHIN)
    }

    /// Wait until status.json satisfies `pred`.
    fn wait_status(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.net.status()
                && pred(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not reached within {timeout:?}: {:?}",
                self.net.status()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Supervisor log lines for frames the engine dropped for `reason`
    /// (`BadDhcp`, `NotForUs`, `Refused(AddressMulticast)`...).
    fn drops(&self, reason: &str) -> usize {
        let needle = format!("engine dropped a frame: {reason}");
        self.net
            .client_log()
            .lines()
            .filter(|l| l.ends_with(&needle))
            .count()
    }

    /// Exactly `n` drops for `reason`, with what the server sent when not.
    fn assert_drops(&self, reason: &str, n: usize) {
        assert_eq!(
            self.drops(reason),
            n,
            "server sent {} frames, errors {:?}; log:\n{}",
            self.server.sent(),
            self.server.send_errors(),
            self.net.client_log()
        );
    }

    fn wait_drops(&self, reason: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.drops(reason) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} drops for {reason} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// No role crashed or was restarted, nothing was refused downstream of
    /// the engine (it never asked for an out-of-policy intent or frame), and
    /// no role logged a panic.
    fn assert_healthy(&self) -> Value {
        let st = self.status();
        assert_eq!(st["sandbox"], self.mode.arg());
        assert_eq!(st["engine_restarts"], 0, "{st}");
        assert_eq!(st["frames_refused"], 0, "{st}");
        assert_eq!(st["intents_refused"], 0, "{st}");
        let mut roles = self.net.role_pids(self.daemon);
        roles.sort();
        assert_eq!(roles, self.roles, "a role died or was replaced");
        let log = self.net.client_log();
        assert!(!log.contains("panicked"), "a role panicked:\n{log}");
        assert_eq!(
            self.server.send_errors(),
            Vec::<String>::new(),
            "the server's frames did not all go out"
        );
        st
    }

    /// Routes in the client namespace as "dst" or "dst via gw", sorted.
    fn routes(&self) -> Vec<String> {
        let out = self.net.in_client(&["ip", "-j", "-4", "route", "show"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut r: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| match r["gateway"].as_str() {
                Some(gw) => format!("{} via {gw}", r["dst"].as_str().unwrap()),
                None => r["dst"].as_str().unwrap().to_string(),
            })
            .collect();
        r.sort();
        r
    }

    fn resolv(&self) -> String {
        support::read(&self.net.path("resolv.conf"))
    }

    fn link_mtu(&self) -> (u64, u64) {
        let out = self.net.in_client(&["ip", "-d", "-j", "link", "show", CLIENT_IF]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v[0]["mtu"].as_u64().unwrap(), v[0]["max_mtu"].as_u64().unwrap())
    }

    /// resolv.conf as the actuator writes it.
    fn resolv_text(&self, search: Option<&str>, servers: &[String]) -> String {
        let mut s = format!("# Generated by mirage-dhcp for {CLIENT_IF}; changes are overwritten.\n");
        if let Some(d) = search {
            s += &format!("search {d}\n");
        }
        for ns in servers {
            s += &format!("nameserver {ns}\n");
        }
        s
    }

    /// The honest lease, exactly: .77/24, default via .1, DNS .1, MTU as
    /// before, and nothing else.
    fn assert_standard_host(&self) {
        self.assert_host(&OFFERED, &[&format!("default via {}", self.net.server_ip)]);
        assert_eq!(
            self.resolv(),
            self.resolv_text(None, std::slice::from_ref(&self.net.server_ip))
        );
        assert_eq!(self.link_mtu().0, 1500);
    }

    /// Address `.host`/24 and exactly `routes` besides the prefix route.
    fn assert_host(&self, host: &u8, routes: &[&str]) {
        assert_eq!(self.net.client_addrs(), vec![format!("{}/24", self.host(*host))]);
        let mut want: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
        want.push(format!("{}.0/24", self.net.subnet));
        want.sort();
        assert_eq!(self.routes(), want);
    }

    fn assert_untouched_host(&self) {
        assert_eq!(self.net.client_addrs(), Vec::<String>::new());
        assert_eq!(self.routes(), Vec::<String>::new());
        assert_eq!(self.resolv(), RESOLV_BEFORE);
        assert_eq!(self.link_mtu().0, 1500);
    }
}

const OFFERED: u8 = support::hostile::OFFERED_HOST;

// ---- case shapes -------------------------------------------------------------

type Junk = fn(&Ctx, &Seen) -> Vec<Vec<u8>>;
type Bend = fn(&Ctx, &mut Message);

/// `junk` in answer to the first DISCOVER, followed by the honest OFFER in
/// the same burst. The engine must drop each junk frame for `reason` and
/// then bind the honest lease as if nothing had happened.
fn dropped_before_offer(mode: Mode, junk: Junk, reason: &str) {
    let run = Run::start(mode, &[], move |ctx, req| {
        let mut out = Vec::new();
        if req.kind == MessageType::Discover && req.nth == 0 {
            out = junk(ctx, req);
        }
        out.extend(ctx.standard(req));
        out
    });
    let st = run.wait_bound();
    let n = {
        // What the script sent for the first DISCOVER besides the offer.
        let first = run
            .server
            .seen()
            .into_iter()
            .find(|s| s.kind == MessageType::Discover)
            .unwrap();
        junk(&run.ctx(), &first).len()
    };
    assert!(n > 0);
    run.assert_healthy();
    run.assert_drops(reason, n);
    assert_eq!(st["counters"]["frames_dropped"], n as u64, "{st}");
    assert_eq!(st["counters"]["offers"], 1);
    assert_eq!(st["counters"]["leases_refused"], 0);
    run.assert_standard_host();
}

/// `junk` in answer to the selecting REQUEST, before the honest ACK.
fn dropped_before_ack(mode: Mode, junk: Junk, reason: &str, n: usize) -> Run {
    let run = Run::start(mode, &[], move |ctx, req| {
        let mut out = Vec::new();
        if req.is_selecting_request() && req.nth == 0 {
            out = junk(ctx, req);
        }
        out.extend(ctx.standard(req));
        out
    });
    run.wait_bound();
    // Drops after the bind are logged, not published (counters go out with
    // state changes): wait for the log lines.
    run.wait_drops(reason, n, Duration::from_secs(5));
    let st = run.assert_healthy();
    run.assert_drops(reason, n);
    assert_eq!(st["counters"]["acks"], 1, "{st}");
    run.assert_standard_host();
    run
}

/// A bent OFFER, then the honest one: the bent lease is refused by policy
/// (`refusal`, counted in `leases_refused`), the honest one bound.
fn refused_offer(mode: Mode, bend: Bend, refusal: &str) {
    let run = Run::start(mode, &[], move |ctx, req| {
        let mut out = Vec::new();
        if req.kind == MessageType::Discover && req.nth == 0 {
            let mut m = ctx.offer(req);
            bend(ctx, &mut m);
            out.push(ctx.frame(req, &m));
        }
        out.extend(ctx.standard(req));
        out
    });
    let st = run.wait_bound();
    run.assert_healthy();
    assert_eq!(
        run.drops(&format!("Refused({refusal})")),
        1,
        "log:\n{}",
        run.net.client_log()
    );
    assert_eq!(st["counters"]["leases_refused"], 1, "{st}");
    assert_eq!(st["counters"]["offers"], 2, "{st}");
    assert_eq!(st["counters"]["frames_dropped"], 1, "{st}");
    run.assert_standard_host();
}

/// OFFER and ACK both bent: the lease is taken, sanitised. Returns the run
/// bound, checked healthy, with nothing dropped or refused.
fn accepted(mode: Mode, bend: Bend) -> (Run, Value) {
    let run = Run::start(mode, &[], move |ctx, req| match req.kind {
        MessageType::Discover | MessageType::Request => {
            let mut m = if req.kind == MessageType::Discover {
                ctx.offer(req)
            } else {
                ctx.ack(req)
            };
            bend(ctx, &mut m);
            vec![ctx.frame(req, &m)]
        }
        _ => Vec::new(),
    });
    let st = run.wait_bound();
    run.assert_healthy();
    assert_eq!(st["counters"]["frames_dropped"], 0, "{st}");
    assert_eq!(st["counters"]["leases_refused"], 0, "{st}");
    (run, st)
}

/// Raw option bytes for an OFFER/ACK in answer to `req`: `raw(ctx, type)`
/// gives the option area; the honest header goes in front.
fn raw_reply(ctx: &Ctx, req: &Seen, options: &[u8]) -> Vec<u8> {
    let base = ctx.offer(req);
    ctx.frame_payload(req, &with_raw_options(&base, options))
}

/// 53, 54, 51 and 1 as a raw option prefix.
fn raw_basics(ctx: &Ctx, kind: u8) -> Vec<u8> {
    let mut o = vec![53, 1, kind, 54, 4];
    o.extend_from_slice(&ctx.server_ip.octets());
    o.extend_from_slice(&[51, 4, 0, 0, 2, 88, 1, 4, 255, 255, 255, 0]);
    o
}

fn offer_frame(ctx: &Ctx, req: &Seen) -> Vec<u8> {
    ctx.frame(req, &ctx.offer(req))
}

/// The same frame with its IPv4 header checksum recomputed after surgery.
fn fix_ip_checksum(f: &mut [u8]) {
    f[24] = 0;
    f[25] = 0;
    let sum: u32 = f[14..34]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    f[24..26].copy_from_slice(&(!(folded as u16)).to_be_bytes());
}

fn other_option(m: &mut Message, code: u8, value: Vec<u8>) {
    m.options.other.push((code, value));
}

/// Option 119 wire form of `labels` (one name), root label added.
fn name_wire(labels: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for l in labels {
        v.push(l.len() as u8);
        v.extend_from_slice(l);
    }
    v.push(0);
    v
}

/// A lease short enough to renew within the case: 8 s, T1 2 s, T2 6 s.
fn short_lease(m: &mut Message) {
    if m.options.message_type != Some(MessageType::Nak) {
        m.options.lease_time = Some(8);
        m.options.renewal_time = Some(2);
        m.options.rebinding_time = Some(6);
    }
}

// ---- the cases ----------------------------------------------------------------

// Framing and truncation: dropped before the DHCP parser or by it.

fn truncated_ip_packet(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut f = offer_frame(ctx, req);
            f.truncate(200);
            vec![f]
        },
        "BadFrame",
    );
}

fn truncated_udp_header(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut f = offer_frame(ctx, req);
            // Ethernet + IPv4 + 4 bytes of UDP header, lengths consistent.
            f.truncate(14 + 20 + 4);
            f[16..18].copy_from_slice(&24u16.to_be_bytes());
            fix_ip_checksum(&mut f);
            vec![f]
        },
        "BadFrame",
    );
}

fn truncated_bootp_header(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| vec![ctx.frame_payload(req, &encode(&ctx.offer(req))[..100])],
        "BadDhcp",
    );
}

fn truncated_options_without_end(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let p = encode(&ctx.offer(req));
            vec![
                ctx.frame_payload(req, &p[..260]),
                ctx.frame_payload(req, &p[..241]),
            ]
        },
        "BadDhcp",
    );
}

fn option_length_past_end(mode: Mode) {
    // CVE-2016-1503 shape: option 12 claims 200 bytes, 3 follow.
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut o = raw_basics(ctx, 2);
            o.extend_from_slice(&[12, 200, b'a', b'b', b'c']);
            vec![raw_reply(ctx, req, &o)]
        },
        "BadDhcp",
    );
}

fn option_code_without_length(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut o = raw_basics(ctx, 2);
            o.push(12);
            vec![raw_reply(ctx, req, &o)]
        },
        "BadDhcp",
    );
}

fn overloaded_file_option_past_end(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut o = raw_basics(ctx, 2);
            o.extend_from_slice(&[52, 1, 1, 255]);
            let mut p = with_raw_options(&ctx.offer(req), &o);
            // `file` (offset 108, 128 bytes): option 15 claiming 200 bytes.
            p[108] = 15;
            p[109] = 200;
            vec![ctx.frame_payload(req, &p)]
        },
        "BadDhcp",
    );
}

fn overloaded_sname_without_end(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut o = raw_basics(ctx, 2);
            // sname stays all PAD: no END in an overloaded field.
            o.extend_from_slice(&[52, 1, 2, 255]);
            vec![raw_reply(ctx, req, &o)]
        },
        "BadDhcp",
    );
}

fn bad_magic_cookie(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut p = encode(&ctx.offer(req));
            p[236] ^= 0xff;
            vec![ctx.frame_payload(req, &p)]
        },
        "BadDhcp",
    );
}

fn message_type_of_two_bytes(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut o = raw_basics(ctx, 2);
            o[1] = 2;
            o.insert(3, 2);
            o.push(255);
            vec![raw_reply(ctx, req, &o)]
        },
        "BadDhcp",
    );
}

fn mtu_option_of_three_bytes(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut o = raw_basics(ctx, 2);
            o.extend_from_slice(&[26, 3, 5, 220, 0, 255]);
            vec![raw_reply(ctx, req, &o)]
        },
        "BadDhcp",
    );
}

fn bad_udp_checksum(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut f = offer_frame(ctx, req);
            surgery::break_udp_checksum(&mut f);
            vec![f]
        },
        "BadChecksum",
    );
}

fn bad_ip_header_checksum(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut f = offer_frame(ctx, req);
            surgery::break_ip_checksum(&mut f);
            vec![f]
        },
        "BadChecksum",
    );
}

/// A fragment never reaches the engine: the kernel filter drops it.
fn ip_fragment_is_filtered_in_the_kernel(mode: Mode) {
    let run = Run::start(mode, &[], |ctx, req| {
        let mut out = Vec::new();
        if req.kind == MessageType::Discover && req.nth == 0 {
            let mut f = offer_frame(ctx, req);
            surgery::set_more_fragments(&mut f);
            out.push(f);
        }
        out.extend(ctx.standard(req));
        out
    });
    let st = run.wait_bound();
    run.assert_healthy();
    // Only the honest OFFER and ACK were received.
    assert_eq!(st["counters"]["frames_received"], 2, "{st}");
    assert_eq!(st["counters"]["frames_dropped"], 0, "{st}");
    run.assert_standard_host();
}

// Matching (RFC 2131 4.1, RFC 6842): replies to someone else.

fn wrong_xid(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut m = ctx.offer(req);
            m.xid ^= 0x8000_0001;
            vec![ctx.frame(req, &m)]
        },
        "NotForUs",
    );
}

fn wrong_chaddr(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut m = ctx.offer(req);
            m.chaddr[5] ^= 0x01;
            vec![ctx.frame(req, &m)]
        },
        "NotForUs",
    );
}

fn mismatched_client_id(mode: Mode) {
    // RFC 6842 section 3: a reply carrying another client identifier is
    // for another client sharing our chaddr.
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut m = ctx.offer(req);
            m.options.client_id = Some(vec![1, 2, 0, 0, 0, 0, 9]);
            vec![ctx.frame(req, &m)]
        },
        "NotForUs",
    );
}

fn bootrequest_op(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut m = ctx.offer(req);
            m.op = Op::Request;
            vec![ctx.frame(req, &m)]
        },
        "NotForUs",
    );
}

fn source_port_not_67(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let p = encode(&ctx.offer(req));
            let (mac, dst) = ctx.destination(req, false);
            vec![build_udp_frame(
                ctx.server_mac,
                mac,
                ctx.server_ip,
                dst,
                1067,
                DHCP_CLIENT_PORT,
                &p,
            )]
        },
        "NotForUs",
    );
}

fn unicast_to_another_mac(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut f = offer_frame(ctx, req);
            surgery::set_destination_mac(&mut f, [0x02, 0, 0, 0, 0x42, 0x42]);
            vec![f]
        },
        "NotForUs",
    );
}

fn bootp_reply_without_message_type(mode: Mode) {
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut m = ctx.offer(req);
            m.options.message_type = None;
            vec![ctx.frame(req, &m)]
        },
        "Unexpected",
    );
}

fn nak_while_selecting(mode: Mode) {
    dropped_before_offer(mode, |ctx, req| vec![ctx.frame(req, &ctx.nak(req))], "Unexpected");
}

fn rapid_commit_ack_to_discover(mode: Mode) {
    // RFC 4039 needs the client to ask for it (we do not): an ACK in
    // SELECTING is not a reply to anything.
    dropped_before_offer(
        mode,
        |ctx, req| {
            let mut m = ctx.ack(req);
            m.options.rapid_commit = true;
            vec![ctx.frame(req, &m)]
        },
        "Unexpected",
    );
}

// Addresses a lease must never carry (policy: Lease::check).

fn yiaddr_unspecified(mode: Mode) {
    refused_offer(mode, |_, m| m.yiaddr = ip("0.0.0.0"), "AddressUnspecified");
}

fn yiaddr_limited_broadcast(mode: Mode) {
    refused_offer(mode, |_, m| m.yiaddr = ip("255.255.255.255"), "AddressBroadcast");
}

fn yiaddr_multicast(mode: Mode) {
    refused_offer(mode, |_, m| m.yiaddr = ip("224.0.0.251"), "AddressMulticast");
}

fn yiaddr_loopback(mode: Mode) {
    refused_offer(mode, |_, m| m.yiaddr = ip("127.0.0.1"), "AddressLoopback");
}

fn yiaddr_class_e(mode: Mode) {
    refused_offer(mode, |_, m| m.yiaddr = ip("240.1.2.3"), "AddressReserved");
}

fn yiaddr_link_local(mode: Mode) {
    refused_offer(mode, |_, m| m.yiaddr = ip("169.254.10.10"), "AddressLinkLocal");
}

fn yiaddr_network_address(mode: Mode) {
    refused_offer(
        mode,
        |ctx, m| m.yiaddr = ctx.addr(0),
        "AddressIsNetworkOrBroadcast",
    );
}

fn yiaddr_subnet_broadcast(mode: Mode) {
    refused_offer(
        mode,
        |ctx, m| m.yiaddr = ctx.addr(255),
        "AddressIsNetworkOrBroadcast",
    );
}

fn subnet_mask_not_contiguous(mode: Mode) {
    refused_offer(
        mode,
        |_, m| m.options.subnet_mask = Some(ip("255.0.255.0")),
        "BadPrefixLength",
    );
}

fn server_id_broadcast(mode: Mode) {
    refused_offer(
        mode,
        |_, m| m.options.server_id = Some(ip("255.255.255.255")),
        "BadServerId",
    );
}

fn server_id_loopback(mode: Mode) {
    refused_offer(
        mode,
        |_, m| m.options.server_id = Some(ip("127.0.0.1")),
        "BadServerId",
    );
}

fn classless_route_prefix_over_32(mode: Mode) {
    refused_offer(
        mode,
        |ctx, m| {
            let mut v = vec![33, 10, 1, 2, 3, 4];
            v.extend_from_slice(&ctx.server_ip.octets());
            other_option(m, 121, v);
        },
        "BadRoute",
    );
}

fn classless_route_bits_past_prefix(mode: Mode) {
    // 10.255.0.0/9: bits set past the 9-bit prefix (RFC 3442 section 3).
    refused_offer(
        mode,
        |ctx, m| {
            let mut v = vec![9, 10, 255];
            v.extend_from_slice(&ctx.server_ip.octets());
            other_option(m, 121, v);
        },
        "BadRoute",
    );
}

fn classless_route_to_loopback(mode: Mode) {
    // A well-formed route the policy refuses costs the route, not the lease.
    let (run, st) = accepted(mode, |ctx, m| {
        m.options.classless_routes = Some(Ok(vec![
            Route {
                destination: ip("127.0.0.0"),
                prefix_len: 8,
                gateway: ctx.server_ip,
            },
            Route {
                destination: ip("0.0.0.0"),
                prefix_len: 0,
                gateway: ctx.server_ip,
            },
        ]))
    });
    // One from the OFFER, one from the ACK.
    assert_eq!(st["counters"]["routes_dropped"], 2, "{st}");
    run.assert_standard_host();
}

fn lease_time_zero(mode: Mode) {
    refused_offer(mode, |_, m| m.options.lease_time = Some(0), "BadLeaseTimes");
}

fn lease_time_missing(mode: Mode) {
    refused_offer(mode, |_, m| m.options.lease_time = None, "BadLeaseTimes");
}

/// A server that only ever offers a multicast address: every offer refused,
/// the host never touched, the client still looking (status.json is
/// published on state changes, so the log lines are what counts here).
fn only_bad_offers_touch_nothing(mode: Mode) {
    let run = Run::start(mode, &[], |ctx, req| {
        let mut m = ctx.offer(req);
        m.yiaddr = ip("239.1.2.3");
        match req.kind {
            MessageType::Discover => vec![ctx.frame(req, &m)],
            _ => Vec::new(),
        }
    });
    run.wait_drops("Refused(AddressMulticast)", 3, Duration::from_secs(15));
    let st = run.assert_healthy();
    assert_eq!(st["state"], "selecting");
    assert_eq!(run.server.count(MessageType::Request), 0);
    run.assert_untouched_host();
}

// Accepted, sanitised.

fn router_outside_the_subnet_without_121(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| m.options.routers = vec![ip("192.0.2.1")]);
    // No on-link router: no default route rather than a guess.
    assert_eq!(st["lease"]["routes"], serde_json::json!([]));
    run.assert_host(&OFFERED, &[]);
}

fn classless_routes_replace_option_3(mode: Mode) {
    // RFC 3442: with 121 present, option 3 is ignored.
    let (run, _) = accepted(mode, |ctx, m| {
        m.options.classless_routes = Some(Ok(vec![Route {
            destination: ip("198.51.100.0"),
            prefix_len: 24,
            gateway: ctx.server_ip,
        }]))
    });
    run.assert_host(&OFFERED, &[&format!("198.51.100.0/24 via {}", run.net.server_ip)]);
}

fn classless_route_via_off_link_gateway(mode: Mode) {
    let (run, _) = accepted(mode, |ctx, m| {
        m.options.classless_routes = Some(Ok(vec![
            Route {
                destination: ip("0.0.0.0"),
                prefix_len: 0,
                gateway: ip("192.0.2.1"),
            },
            Route {
                destination: ip("198.51.100.0"),
                prefix_len: 24,
                gateway: ctx.server_ip,
            },
        ]))
    });
    run.assert_host(&OFFERED, &[&format!("198.51.100.0/24 via {}", run.net.server_ip)]);
}

fn lease_infinite(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| m.options.lease_time = Some(u32::MAX));
    assert_eq!(st["lease"]["lease_secs"], u64::from(u32::MAX));
    // The kernel's "forever", not a wrapped or truncated lifetime.
    assert_eq!(run.net.client_addr_json()["valid_life_time"], u64::from(u32::MAX));
    run.assert_standard_host();
}

fn t1_after_t2_after_lease(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| {
        m.options.lease_time = Some(600);
        m.options.renewal_time = Some(900);
        m.options.rebinding_time = Some(700);
    });
    // Recomputed as RFC 2131 4.4.5 defaults: 300 and 525.
    let renew = st["lease"]["renew_in_secs"].as_u64().unwrap();
    let rebind = st["lease"]["rebind_in_secs"].as_u64().unwrap();
    assert!((280..=300).contains(&renew), "{st}");
    assert!((505..=525).contains(&rebind), "{st}");
    run.assert_standard_host();
}

fn missing_server_identifier(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| m.options.server_id = None);
    assert_eq!(st["lease"]["server_id"], run.net.server_ip.as_str());
    run.assert_standard_host();
}

fn mtu_zero(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| m.options.mtu = Some(0));
    assert_eq!(st["lease"]["mtu"], Value::Null);
    run.assert_standard_host();
}

fn mtu_67(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| m.options.mtu = Some(67));
    assert_eq!(st["lease"]["mtu"], Value::Null);
    run.assert_standard_host();
}

fn mtu_65535(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| m.options.mtu = Some(65535));
    assert_eq!(st["lease"]["mtu"], 65535);
    // Clamped to what the device takes (veth: 65535).
    let (mtu, max) = run.link_mtu();
    assert_eq!(mtu, max.min(65535));
}

fn a_hundred_dns_servers(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| {
        let mut servers = vec![ip("0.0.0.0"), ip("127.0.0.1")];
        servers.extend((1..=98).map(|i| Ipv4Addr::new(10, 9, 0, i)));
        m.options.dns_servers = servers;
    });
    let want: Vec<String> = (1..=8).map(|i| format!("10.9.0.{i}")).collect();
    assert_eq!(st["lease"]["dns_servers"], serde_json::json!(want));
    assert_eq!(run.resolv(), run.resolv_text(None, &want));
}

fn three_hundred_options(mode: Mode) {
    let (run, _) = accepted(mode, |_, m| {
        for i in 0..300u32 {
            other_option(m, 224 + (i % 31) as u8, vec![i as u8]);
        }
    });
    run.assert_standard_host();
}

fn rfc3396_split_option(mode: Mode) {
    // Option 6 in three pieces, cut inside addresses (RFC 3396 allows it).
    let run = Run::start(mode, &[], |ctx, req| {
        let kind = match req.kind {
            MessageType::Discover => 2,
            MessageType::Request => 5,
            _ => return Vec::new(),
        };
        let mut o = raw_basics(ctx, kind);
        o.extend_from_slice(&[3, 4]);
        o.extend_from_slice(&ctx.server_ip.octets());
        o.extend_from_slice(&[6, 3, 10, 9, 9, 6, 2, 1, 10, 6, 3, 9, 9, 2, 255]);
        vec![raw_reply(ctx, req, &o)]
    });
    run.wait_bound();
    run.assert_healthy();
    assert_eq!(
        run.resolv(),
        run.resolv_text(None, &["10.9.9.1".into(), "10.9.9.2".into()])
    );
    run.assert_host(&OFFERED, &[&format!("default via {}", run.net.server_ip)]);
}

fn overload_into_file_and_sname(mode: Mode) {
    let run = Run::start(mode, &[], |ctx, req| {
        let kind = match req.kind {
            MessageType::Discover => 2,
            MessageType::Request => 5,
            _ => return Vec::new(),
        };
        let mut o = vec![53, 1, kind, 54, 4];
        o.extend_from_slice(&ctx.server_ip.octets());
        o.extend_from_slice(&[52, 1, 3, 255]);
        let mut p = with_raw_options(&ctx.offer(req), &o);
        // file: lease, mask, router; sname: DNS server (RFC 2131 4.1 order).
        let mut file = vec![51, 4, 0, 0, 2, 88, 1, 4, 255, 255, 255, 0, 3, 4];
        file.extend_from_slice(&ctx.server_ip.octets());
        file.push(255);
        p[108..108 + file.len()].copy_from_slice(&file);
        p[44..51].copy_from_slice(&[6, 4, 10, 9, 9, 9, 255]);
        vec![ctx.frame_payload(req, &p)]
    });
    run.wait_bound();
    run.assert_healthy();
    assert_eq!(run.resolv(), run.resolv_text(None, &["10.9.9.9".into()]));
    run.assert_host(&OFFERED, &[&format!("default via {}", run.net.server_ip)]);
}

// Names: nothing but plain DNS names reaches resolv.conf or status.

fn domain_with_shell_metacharacters(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| {
        m.options.domain_name = Some("x.example; rm -rf / #`id`$(reboot)|&>".into())
    });
    assert_eq!(st["lease"]["domain_name"], Value::Null);
    run.assert_standard_host();
}

fn domain_with_newline_injection(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| {
        m.options.domain_name = Some("corp.example\nnameserver 6.6.6.6\noptions ndots:15".into())
    });
    assert_eq!(st["lease"]["domain_name"], Value::Null);
    run.assert_standard_host();
}

fn hostname_with_quotes(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| m.options.hostname = Some("\"h'`x`\"\\\n;".into()));
    assert_eq!(st["lease"]["hostname"], Value::Null);
    run.assert_standard_host();
}

fn valid_names_pass_next_to_bad_ones(mode: Mode) {
    // A good search name among injected ones: only the good one is kept.
    let (run, st) = accepted(mode, |_, m| {
        let mut v = name_wire(&[b"good", b"example"]);
        v.extend(name_wire(&[b"bad\nnameserver 6.6.6.6"]));
        v.extend(name_wire(&[b"a;b", b"example"]));
        v.extend(name_wire(&[b"x y"]));
        v.extend(name_wire(&[b"$(id)"]));
        other_option(m, 119, v);
        m.options.domain_name = Some("corp.example".into());
        m.options.hostname = Some("node-1".into());
    });
    assert_eq!(st["lease"]["search"], serde_json::json!(["good.example"]));
    assert_eq!(st["lease"]["domain_name"], "corp.example");
    assert_eq!(st["lease"]["hostname"], "node-1");
    assert_eq!(
        run.resolv(),
        run.resolv_text(Some("good.example"), std::slice::from_ref(&run.net.server_ip))
    );
    assert!(!run.resolv().contains("6.6.6.6"));
}

/// A malformed 119 gives no search list at all; the lease is kept.
fn search_list_dropped(mode: Mode, bend: Bend) {
    let (run, st) = accepted(mode, bend);
    assert_eq!(st["lease"]["search"], serde_json::json!([]));
    run.assert_standard_host();
}

fn search_compression_pointer_to_itself(mode: Mode) {
    search_list_dropped(mode, |_, m| other_option(m, 119, vec![0xc0, 0x00]));
}

fn search_compression_pointer_forward(mode: Mode) {
    // "abc" then a pointer forward to "def" that points back at "abc".
    search_list_dropped(mode, |_, m| {
        other_option(
            m,
            119,
            vec![3, b'a', b'b', b'c', 0xc0, 6, 3, b'd', b'e', b'f', 0xc0, 0],
        )
    });
}

fn search_name_over_255_bytes(mode: Mode) {
    search_list_dropped(mode, |_, m| {
        let label = [b'a'; 63];
        other_option(m, 119, name_wire(&[&label, &label, &label, &label, &label]));
    });
}

fn search_label_of_64_bytes(mode: Mode) {
    search_list_dropped(mode, |_, m| {
        let mut v = vec![64];
        v.extend_from_slice(&[b'a'; 64]);
        v.push(0);
        other_option(m, 119, v);
    });
}

// The state machine.

fn ack_for_another_address(mode: Mode) {
    // We asked for .77 (option 50); an ACK for .99 does not answer that.
    dropped_before_ack(
        mode,
        |ctx, req| {
            let mut m = ctx.ack(req);
            m.yiaddr = ctx.addr(99);
            vec![ctx.frame(req, &m)]
        },
        "Unexpected",
        1,
    );
}

fn ack_from_another_server_while_requesting(mode: Mode) {
    dropped_before_ack(
        mode,
        |ctx, req| {
            let mut m = ctx.ack(req);
            m.options.server_id = Some(ctx.addr(ROGUE_HOST));
            vec![ctx.frame_as(ROGUE_MAC, ctx.addr(ROGUE_HOST), req, &m)]
        },
        "Unexpected",
        1,
    );
}

fn nak_from_a_second_server_while_requesting(mode: Mode) {
    // RFC 2131 4.4.1: only the selected server may refuse our REQUEST.
    let run = dropped_before_ack(
        mode,
        |ctx, req| {
            let mut m = ctx.nak(req);
            m.options.server_id = Some(ctx.addr(ROGUE_HOST));
            vec![ctx.frame_as(ROGUE_MAC, ctx.addr(ROGUE_HOST), req, &m)]
        },
        "NotForUs",
        1,
    );
    assert_eq!(run.counter("naks"), 0);
}

fn duplicate_acks(mode: Mode) {
    dropped_before_ack(
        mode,
        |ctx, req| {
            let f = ctx.frame(req, &ctx.ack(req));
            // The honest ACK follows: two duplicates arrive after it.
            vec![f.clone(), f]
        },
        "Unexpected",
        2,
    );
}

fn nak_from_a_new_server_while_rebooting(mode: Mode) {
    // RFC 2131 3.2 / field notes 12: in INIT-REBOOT any server's NAK counts.
    let mut run = Run::start(mode, &[], |ctx, req| {
        if req.is_init_reboot_request() {
            let mut m = ctx.nak(req);
            m.options.server_id = Some(ctx.addr(ROGUE_HOST));
            return vec![ctx.frame_as(ROGUE_MAC, ctx.addr(ROGUE_HOST), req, &m)];
        }
        match req.kind {
            // The second acquisition gets another address.
            MessageType::Discover if req.nth > 0 => {
                let mut m = ctx.offer(req);
                m.yiaddr = ctx.addr(88);
                vec![ctx.frame(req, &m)]
            }
            _ => ctx.standard(req),
        }
    });
    run.wait_bound();
    run.assert_standard_host();
    run.net.signal(run.daemon, "TERM");
    assert!(run.net.wait_exit(run.daemon, Duration::from_secs(5)).is_some());
    // The address stays over a restart; the new daemon verifies it.
    assert_eq!(run.net.client_addrs(), vec![format!("{}/24", run.host(OFFERED))]);
    std::fs::remove_file(run.net.path("run/status.json")).unwrap();
    run.start_daemon(&[]);
    let st = run.wait_status("bound after the NAK", BOUND_WITHIN, |s| {
        s["state"] == "bound" && s["counters"]["naks"] == 1
    });
    run.assert_healthy();
    assert_eq!(st["lease"]["address"], run.host(88).as_str());
    assert_eq!(
        run.net
            .client_log()
            .matches(&format!("removing {}/24", run.host(OFFERED)))
            .count(),
        1
    );
    run.assert_host(&88, &[&format!("default via {}", run.net.server_ip)]);
}

/// Renewal cases: a short lease, `at_renewal` answers the first RENEWING
/// REQUEST (then the server is honest again).
fn with_renewal(mode: Mode, at_renewal: fn(&Ctx, &Seen, &[u8]) -> Vec<Vec<u8>>) -> Run {
    let mut first_ack: Option<Vec<u8>> = None;
    let mut renewed = false;
    // The default 20 s lease floor would put T1 at 10 s: 6 s keeps it at 3 s.
    let run = Run::start(mode, &["--min-lease-secs", "6"], move |ctx, req| {
        let mut m = match req.kind {
            MessageType::Discover => ctx.offer(req),
            MessageType::Request => ctx.ack(req),
            _ => return Vec::new(),
        };
        short_lease(&mut m);
        let f = ctx.frame(req, &m);
        if req.is_selecting_request() && first_ack.is_none() {
            first_ack = Some(f.clone());
        }
        let mut out = Vec::new();
        if req.is_renewal() && !renewed {
            renewed = true;
            out = at_renewal(ctx, req, first_ack.as_deref().unwrap_or_default());
        }
        out.push(f);
        out
    });
    run.wait_bound();
    run.wait_status("a renewal", Duration::from_secs(15), |s| {
        s["state"] == "bound" && s["counters"]["renewals"].as_u64() >= Some(1)
    });
    run
}

fn replayed_ack_during_renewal(mode: Mode) {
    // Every RENEWING transmission has a fresh xid: the old ACK is stale.
    let run = with_renewal(mode, |_, _, first_ack| vec![first_ack.to_vec()]);
    run.assert_healthy();
    assert_eq!(run.drops("NotForUs"), 1, "log:\n{}", run.net.client_log());
    run.assert_host(&OFFERED, &[&format!("default via {}", run.net.server_ip)]);
}

fn nak_from_another_server_while_renewing(mode: Mode) {
    let run = with_renewal(mode, |ctx, req, _| {
        let mut m = ctx.nak(req);
        m.options.server_id = Some(ctx.addr(ROGUE_HOST));
        vec![ctx.frame_as(ROGUE_MAC, ctx.addr(ROGUE_HOST), req, &m)]
    });
    run.assert_healthy();
    assert_eq!(run.counter("naks"), 0);
    assert_eq!(run.drops("NotForUs"), 1, "log:\n{}", run.net.client_log());
    run.assert_host(&OFFERED, &[&format!("default via {}", run.net.server_ip)]);
}

fn forcerenew_without_authentication(mode: Mode) {
    // RFC 3203 / RFC 6704: without authentication FORCERENEW is ignored
    // (CVE-2020-13529).
    let run = Run::start(mode, &[], |ctx, req| ctx.standard(req));
    run.wait_bound();
    let ctx = run.ctx();
    let request = run.server.wait_for(Duration::from_secs(1), "REQUEST", |s| {
        s.kind == MessageType::Request
    });
    let mut m = ctx.reply(&request, MessageType::ForceRenew);
    m.xid = 0x1234_5678;
    m.yiaddr = ip("0.0.0.0");
    m.ciaddr = ctx.offered();
    m.options.lease_time = None;
    let f = build_udp_frame(
        ctx.server_mac,
        request.src_mac,
        ctx.server_ip,
        ctx.offered(),
        67,
        DHCP_CLIENT_PORT,
        &encode(&m),
    );
    let requests_before = run.server.count(MessageType::Request);
    let injected_at = Instant::now();
    run.server.inject(&[f]);
    run.wait_drops("Unexpected", 1, Duration::from_secs(5));
    // Anything the engine did in answer follows the drop within
    // milliseconds; give it a generous moment, then check it did nothing.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(run.server.count(MessageType::Request), requests_before);
    assert!(run.server.seen().iter().all(|s| s.at < injected_at));
    let st = run.assert_healthy();
    assert_eq!(st["state"], "bound");
    assert_eq!(st["counters"]["renewals"], 0);
    run.assert_standard_host();
}

// Issue 9: resolv.conf through a long search line, TunnelVision
// (CVE-2024-3661), and the policy gaps.

/// Five option 119 names of 202 bytes, then "nameserver" and "6.6.6.6":
/// rendered in one line, "nameserver 6.6.6.6" starts at byte 1024 of it,
/// where dnsmasq's 1024-byte read cuts the line.
fn injection_search_names() -> Vec<String> {
    let l63 = "a".repeat(63);
    let mut names: Vec<String> = (0..4)
        .map(|i| format!("{l63}.{l63}.{l63}.{i}{}", "b".repeat(9)))
        .collect();
    names.push(format!("{l63}.{l63}.{l63}.c{}", "d".repeat(11)));
    names.push("nameserver".into());
    names.push("6.6.6.6".into());
    assert_eq!(
        format!("search {}", names.join(" ")).find("nameserver 6.6.6.6"),
        Some(1024)
    );
    names
}

fn search_line_injection_at_byte_1024(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| {
        let mut v = Vec::new();
        for n in injection_search_names() {
            let labels: Vec<&[u8]> = n.split('.').map(|l| l.as_bytes()).collect();
            v.extend(name_wire(&labels));
        }
        other_option(m, 119, v);
    });
    let names = injection_search_names();
    // The engine keeps every valid name; the actuator writes what resolvers
    // read safely and says what it left out.
    assert_eq!(st["lease"]["search"], serde_json::json!(names));
    assert_eq!(st["lease"]["search_dropped"], serde_json::json!(names[1..6]));
    let text = run.resolv();
    assert_eq!(
        text,
        run.resolv_text(
            Some(&format!("{} 6.6.6.6", names[0])),
            std::slice::from_ref(&run.net.server_ip)
        )
    );
    assert!(text.lines().all(|l| l.len() < 255), "{text}");
    assert!(!text.contains("nameserver 6.6.6.6"));
    assert!(
        run.net.client_log().contains("left out 5 search domain(s)"),
        "{}",
        run.net.client_log()
    );
    run.assert_host(&OFFERED, &[&format!("default via {}", run.net.server_ip)]);
}

fn route(d: &str, p: u8, g: Ipv4Addr) -> Route {
    Route {
        destination: ip(d),
        prefix_len: p,
        gateway: g,
    }
}

/// Option 121 with a VPN-beating 0/1 + 128/1, a corporate /12 and the
/// default route.
fn tunnelvision_routes(ctx: &Ctx, m: &mut Message) {
    let gw = ctx.server_ip;
    m.options.classless_routes = Some(Ok(vec![
        route("0.0.0.0", 1, gw),
        route("128.0.0.0", 1, gw),
        route("172.16.0.0", 12, gw),
        route("0.0.0.0", 0, gw),
    ]));
}

fn tunnelvision_routes_dropped(mode: Mode) {
    let (run, st) = accepted(mode, tunnelvision_routes);
    let gw = &run.net.server_ip;
    // Two from the OFFER, two from the ACK; the lease is kept.
    assert_eq!(st["counters"]["routes_dropped"], 4, "{st}");
    run.assert_host(
        &OFFERED,
        &[&format!("default via {gw}"), &format!("172.16.0.0/12 via {gw}")],
    );
    assert!(
        run.net
            .client_log()
            .contains("the lease policy dropped 2 route(s)"),
        "{}",
        run.net.client_log()
    );
}

/// Bound like [`accepted`], with a configuration file.
fn accepted_with_config(mode: Mode, toml: &str, bend: Bend) -> (Run, Value) {
    let run = Run::start_with_config(mode, toml, move |ctx, req| match req.kind {
        MessageType::Discover | MessageType::Request => {
            let mut m = if req.kind == MessageType::Discover {
                ctx.offer(req)
            } else {
                ctx.ack(req)
            };
            bend(ctx, &mut m);
            vec![ctx.frame(req, &m)]
        }
        _ => Vec::new(),
    });
    let st = run.wait_bound();
    run.assert_healthy();
    assert_eq!(st["counters"]["leases_refused"], 0, "{st}");
    (run, st)
}

fn short_routes_installed_when_allowed(mode: Mode) {
    // min_route_prefix_len = 0: 0.0.0.0/1 is an ordinary route (it used to
    // be refused as "0/8", and the whole lease with it).
    let (run, st) = accepted_with_config(mode, "[limits]\nmin_route_prefix_len = 0\n", tunnelvision_routes);
    let gw = &run.net.server_ip;
    assert_eq!(st["counters"]["routes_dropped"], 0, "{st}");
    run.assert_host(
        &OFFERED,
        &[
            &format!("0.0.0.0/1 via {gw}"),
            &format!("128.0.0.0/1 via {gw}"),
            &format!("172.16.0.0/12 via {gw}"),
            &format!("default via {gw}"),
        ],
    );
}

fn classless_routes_ignored_when_configured(mode: Mode) {
    let (run, st) = accepted_with_config(mode, "[limits]\nignore_classless_routes = true\n", |ctx, m| {
        m.options.routers = vec![ctx.server_ip];
        m.options.classless_routes = Some(Ok(vec![
            route("198.51.100.0", 24, ctx.server_ip),
            route("172.16.0.0", 12, ctx.server_ip),
        ]));
    });
    assert_eq!(st["counters"]["routes_dropped"], 0, "{st}");
    // Option 3's default route, as if 121 had not been sent.
    run.assert_standard_host();
}

fn routes_in_their_own_table(mode: Mode) {
    let (run, _) = accepted_with_config(mode, "route_table = 100\n", |ctx, m| {
        m.options.classless_routes = Some(Ok(vec![
            route("172.16.0.0", 12, ctx.server_ip),
            route("0.0.0.0", 0, ctx.server_ip),
        ]));
    });
    let gw = &run.net.server_ip;
    // The main table keeps only the kernel's prefix route.
    run.assert_host(&OFFERED, &[]);
    let out = run
        .net
        .in_client(&["ip", "-j", "-4", "route", "show", "table", "100"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut table: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} via {}",
                r["dst"].as_str().unwrap(),
                r["gateway"].as_str().unwrap()
            )
        })
        .collect();
    table.sort();
    assert_eq!(
        table,
        vec![format!("172.16.0.0/12 via {gw}"), format!("default via {gw}")]
    );
}

fn subnet_mask_of_two_bits(mode: Mode) {
    // 10.x.y.77/2: the kernel's prefix route 0.0.0.0/2 beats a VPN's 0/1.
    refused_offer(
        mode,
        |_, m| m.options.subnet_mask = Some(ip("192.0.0.0")),
        "SubnetTooLarge",
    );
}

fn classless_routes_to_multicast_class_e_and_broadcast(mode: Mode) {
    let (run, st) = accepted(mode, |ctx, m| {
        let gw = ctx.server_ip;
        m.options.classless_routes = Some(Ok(vec![
            route("224.0.0.0", 4, gw),
            route("240.0.0.0", 4, gw),
            route("255.255.255.255", 32, gw),
            route("0.0.0.0", 0, gw),
        ]));
    });
    assert_eq!(st["counters"]["routes_dropped"], 6, "{st}");
    run.assert_standard_host();
}

fn on_link_default_route_makes_no_gateway_on_link(mode: Mode) {
    let (run, st) = accepted(mode, |_, m| {
        m.options.classless_routes = Some(Ok(vec![
            route("0.0.0.0", 0, ip("0.0.0.0")),
            route("198.51.100.0", 24, ip("203.0.113.1")),
        ]));
    });
    assert_eq!(st["counters"]["routes_dropped"], 2, "{st}");
    // The on-link default route itself is kept (proxy-ARP networks).
    run.assert_host(&OFFERED, &["default"]);
}

fn server_id_is_our_address(mode: Mode) {
    refused_offer(
        mode,
        |ctx, m| m.options.server_id = Some(ctx.offered()),
        "AddressIsServer",
    );
}

fn gateway_is_our_address(mode: Mode) {
    refused_offer(
        mode,
        |ctx, m| m.options.classless_routes = Some(Ok(vec![route("0.0.0.0", 0, ctx.offered())])),
        "AddressIsGateway",
    );
}

// Timing and hostile timings (issue 9 items 1 and 10).

/// Lines in the client log that match `needle`.
fn log_count(run: &Run, needle: &str) -> usize {
    run.net
        .client_log()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Regression: a 1 s lease gave T1 = T2 = 0 and a renewal after every ACK
/// (2,000 REQUESTs/s, 800 binds/s with a lease write each, 30,000 log lines
/// in 8 s). With the 20 s floor the lease is used as 20 s: nothing renews
/// for 10 s, so over 5 s the server sees the acquisition and nothing else.
fn one_second_lease(mode: Mode) {
    let run = Run::start(mode, &[], |ctx, req| {
        let mut m = match req.kind {
            MessageType::Discover => ctx.offer(req),
            MessageType::Request => ctx.ack(req),
            _ => return Vec::new(),
        };
        m.options.lease_time = Some(1);
        vec![ctx.frame(req, &m)]
    });
    let st = run.wait_bound();
    assert_eq!(st["lease"]["lease_secs"], 20, "{st}");
    let lines_before = run.net.client_log().lines().count();
    std::thread::sleep(Duration::from_secs(5));
    let st = run.assert_healthy();
    assert_eq!(st["state"], "bound");
    // DISCOVER and the selecting REQUEST (the 200 ms retransmission may
    // have doubled one of them before the first reply).
    let seen = run.server.seen().len();
    assert!(seen <= 4, "the server received {seen} messages");
    assert_eq!(st["counters"]["renewals"], 0, "{st}");
    assert_eq!(log_count(&run, "applying "), 1);
    let lines = run.net.client_log().lines().count() - lines_before;
    assert!(lines <= 10, "{lines} log lines in 5 s:\n{}", run.net.client_log());
    run.assert_standard_host();
}

/// Regression: a server that NAKs every renewal flapped the address ~150
/// times a second. With a 4 s floor (T1 = 2 s) and the NAK back-off
/// surviving binds (0, 1, 2, 4 s...), 8 s hold at most 4 removals, each
/// costing a few frames and log lines.
fn nak_every_renewal(mode: Mode) {
    const WINDOW: Duration = Duration::from_secs(8);
    let run = Run::start(mode, &["--min-lease-secs", "4"], |ctx, req| {
        let mut m = match req.kind {
            MessageType::Discover => ctx.offer(req),
            MessageType::Request if req.is_renewal() => ctx.nak(req),
            MessageType::Request => ctx.ack(req),
            _ => return Vec::new(),
        };
        m.options.lease_time = Some(1);
        vec![ctx.frame(req, &m)]
    });
    run.wait_bound();
    let seen_before = run.server.seen().len();
    let lines_before = run.net.client_log().lines().count();
    let applies_before = log_count(&run, "applying ");
    std::thread::sleep(WINDOW);
    let st = run.assert_healthy();
    let naks = st["counters"]["naks"].as_u64().unwrap();
    // T1 = 2 s after each bind: at most one NAK per 2 s, fewer with the
    // back-off.
    let most = WINDOW.as_secs() / 2;
    assert!((1..=most).contains(&naks), "{naks} NAKs: {st}");
    let removals = log_count(&run, "removing ");
    assert!(removals as u64 <= most, "{removals} removals");
    let binds = log_count(&run, "applying ") - applies_before;
    assert!(binds as u64 <= most + 1, "{binds} binds");
    // Per cycle: the renewal, a DISCOVER and a REQUEST (doubled at most by
    // the 200 ms retransmission).
    let seen = run.server.seen().len() - seen_before;
    assert!(
        seen as u64 <= 5 * (most + 1),
        "the server received {seen} messages"
    );
    let lines = run.net.client_log().lines().count() - lines_before;
    eprintln!(
        "nak_every_renewal ({}): in {WINDOW:?} {naks} NAKs, {removals} removals, {binds} binds, \
         {seen} client messages, {lines} log lines",
        mode.arg()
    );
    assert!(
        lines as u64 <= 15 * (most + 1),
        "{lines} log lines in {WINDOW:?}:\n{}",
        run.net.client_log()
    );
}

/// Regression: a NAK copying our server's identifier was honoured while
/// RENEWING. Two forgeries arrive before the honest ACK: option 54 and the
/// source IP copied from another MAC, and option 54 copied from our
/// server's MAC but another source address. Both are dropped as NotForUs.
fn forged_nak_copying_the_server_id_while_renewing(mode: Mode) {
    let run = with_renewal(mode, |ctx, req, _| {
        let m = ctx.nak(req);
        vec![
            ctx.frame_as(ROGUE_MAC, ctx.server_ip, req, &m),
            ctx.frame_as(ctx.server_mac, ctx.addr(ROGUE_HOST), req, &m),
        ]
    });
    run.assert_healthy();
    assert_eq!(run.counter("naks"), 0);
    assert_eq!(run.drops("NotForUs"), 2, "log:\n{}", run.net.client_log());
    assert_eq!(log_count(&run, "removing "), 0);
    run.assert_host(&OFFERED, &[&format!("default via {}", run.net.server_ip)]);
}

// ---- the table ----------------------------------------------------------------

type Case = (&'static str, fn(Mode));

const CASES: &[Case] = &[
    ("truncated_ip_packet", truncated_ip_packet),
    ("truncated_udp_header", truncated_udp_header),
    ("truncated_bootp_header", truncated_bootp_header),
    ("truncated_options_without_end", truncated_options_without_end),
    ("option_length_past_end", option_length_past_end),
    ("option_code_without_length", option_code_without_length),
    ("overloaded_file_option_past_end", overloaded_file_option_past_end),
    ("overloaded_sname_without_end", overloaded_sname_without_end),
    ("bad_magic_cookie", bad_magic_cookie),
    ("message_type_of_two_bytes", message_type_of_two_bytes),
    ("mtu_option_of_three_bytes", mtu_option_of_three_bytes),
    ("bad_udp_checksum", bad_udp_checksum),
    ("bad_ip_header_checksum", bad_ip_header_checksum),
    (
        "ip_fragment_is_filtered_in_the_kernel",
        ip_fragment_is_filtered_in_the_kernel,
    ),
    ("wrong_xid", wrong_xid),
    ("wrong_chaddr", wrong_chaddr),
    ("mismatched_client_id", mismatched_client_id),
    ("bootrequest_op", bootrequest_op),
    ("source_port_not_67", source_port_not_67),
    ("unicast_to_another_mac", unicast_to_another_mac),
    (
        "bootp_reply_without_message_type",
        bootp_reply_without_message_type,
    ),
    ("nak_while_selecting", nak_while_selecting),
    ("rapid_commit_ack_to_discover", rapid_commit_ack_to_discover),
    ("yiaddr_unspecified", yiaddr_unspecified),
    ("yiaddr_limited_broadcast", yiaddr_limited_broadcast),
    ("yiaddr_multicast", yiaddr_multicast),
    ("yiaddr_loopback", yiaddr_loopback),
    ("yiaddr_class_e", yiaddr_class_e),
    ("yiaddr_link_local", yiaddr_link_local),
    ("yiaddr_network_address", yiaddr_network_address),
    ("yiaddr_subnet_broadcast", yiaddr_subnet_broadcast),
    ("subnet_mask_not_contiguous", subnet_mask_not_contiguous),
    ("server_id_broadcast", server_id_broadcast),
    ("server_id_loopback", server_id_loopback),
    ("classless_route_prefix_over_32", classless_route_prefix_over_32),
    (
        "classless_route_bits_past_prefix",
        classless_route_bits_past_prefix,
    ),
    ("classless_route_to_loopback", classless_route_to_loopback),
    ("lease_time_zero", lease_time_zero),
    ("lease_time_missing", lease_time_missing),
    ("only_bad_offers_touch_nothing", only_bad_offers_touch_nothing),
    (
        "router_outside_the_subnet_without_121",
        router_outside_the_subnet_without_121,
    ),
    (
        "classless_routes_replace_option_3",
        classless_routes_replace_option_3,
    ),
    (
        "classless_route_via_off_link_gateway",
        classless_route_via_off_link_gateway,
    ),
    ("lease_infinite", lease_infinite),
    ("t1_after_t2_after_lease", t1_after_t2_after_lease),
    ("missing_server_identifier", missing_server_identifier),
    ("mtu_zero", mtu_zero),
    ("mtu_67", mtu_67),
    ("mtu_65535", mtu_65535),
    ("a_hundred_dns_servers", a_hundred_dns_servers),
    ("three_hundred_options", three_hundred_options),
    ("rfc3396_split_option", rfc3396_split_option),
    ("overload_into_file_and_sname", overload_into_file_and_sname),
    (
        "domain_with_shell_metacharacters",
        domain_with_shell_metacharacters,
    ),
    ("domain_with_newline_injection", domain_with_newline_injection),
    ("hostname_with_quotes", hostname_with_quotes),
    (
        "valid_names_pass_next_to_bad_ones",
        valid_names_pass_next_to_bad_ones,
    ),
    (
        "search_compression_pointer_to_itself",
        search_compression_pointer_to_itself,
    ),
    (
        "search_compression_pointer_forward",
        search_compression_pointer_forward,
    ),
    ("search_name_over_255_bytes", search_name_over_255_bytes),
    ("search_label_of_64_bytes", search_label_of_64_bytes),
    ("ack_for_another_address", ack_for_another_address),
    (
        "ack_from_another_server_while_requesting",
        ack_from_another_server_while_requesting,
    ),
    (
        "nak_from_a_second_server_while_requesting",
        nak_from_a_second_server_while_requesting,
    ),
    ("duplicate_acks", duplicate_acks),
    (
        "nak_from_a_new_server_while_rebooting",
        nak_from_a_new_server_while_rebooting,
    ),
    ("replayed_ack_during_renewal", replayed_ack_during_renewal),
    (
        "nak_from_another_server_while_renewing",
        nak_from_another_server_while_renewing,
    ),
    (
        "forcerenew_without_authentication",
        forcerenew_without_authentication,
    ),
    (
        "search_line_injection_at_byte_1024",
        search_line_injection_at_byte_1024,
    ),
    ("tunnelvision_routes_dropped", tunnelvision_routes_dropped),
    (
        "short_routes_installed_when_allowed",
        short_routes_installed_when_allowed,
    ),
    (
        "classless_routes_ignored_when_configured",
        classless_routes_ignored_when_configured,
    ),
    ("routes_in_their_own_table", routes_in_their_own_table),
    ("subnet_mask_of_two_bits", subnet_mask_of_two_bits),
    (
        "classless_routes_to_multicast_class_e_and_broadcast",
        classless_routes_to_multicast_class_e_and_broadcast,
    ),
    (
        "on_link_default_route_makes_no_gateway_on_link",
        on_link_default_route_makes_no_gateway_on_link,
    ),
    ("server_id_is_our_address", server_id_is_our_address),
    ("gateway_is_our_address", gateway_is_our_address),
    ("one_second_lease", one_second_lease),
    ("nak_every_renewal", nak_every_renewal),
    (
        "forged_nak_copying_the_server_id_while_renewing",
        forged_nak_copying_the_server_id_while_renewing,
    ),
];

/// Run every case (or those matching MIRAGE_HOSTILE_CASE) for `mode`,
/// PARALLEL at a time, each on its own thread so that one failure does not
/// hide the others; fail with the list of failed cases.
fn run_cases(mode: Mode) {
    let filter = std::env::var("MIRAGE_HOSTILE_CASE").ok();
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    assert!(
        !cases.is_empty(),
        "no case matches MIRAGE_HOSTILE_CASE={filter:?}"
    );
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::<String>::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&&(name, case)) = cases.get(i) else { break };
                    let t = Instant::now();
                    let result = std::thread::Builder::new()
                        .name(format!("{name}/{}", mode.arg()))
                        .spawn(move || {
                            let _quiet = QUIET_LINK.read().unwrap_or_else(|e| e.into_inner());
                            case(mode)
                        })
                        .unwrap()
                        .join();
                    match result {
                        Ok(()) => eprintln!("ok   {name} ({}) {:?}", mode.arg(), t.elapsed()),
                        Err(_) => {
                            eprintln!("FAIL {name} ({})", mode.arg());
                            failed.lock().unwrap().push(name.to_string());
                        }
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    eprintln!(
        "{} hostile cases ({}) in {:?}",
        cases.len(),
        mode.arg(),
        started.elapsed()
    );
    assert!(failed.is_empty(), "failed cases ({}): {failed:?}", mode.arg());
}

#[test]
fn hostile_cases_under_seccomp() {
    run_cases(Mode::Seccomp);
}

#[test]
fn hostile_cases_under_kvm() {
    if mirage_testkit::kvm::usable("hostile::hostile_cases_under_kvm") {
        run_cases(Mode::Kvm);
    }
}

#[test]
fn hostile_cases_without_sandbox() {
    run_cases(Mode::NoSandbox);
}

#[test]
fn the_case_table_has_unique_names_and_at_least_forty_cases() {
    let names: std::collections::HashSet<&str> = CASES.iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), CASES.len());
    assert!(CASES.len() >= 40);
}

// ---- the flood ----------------------------------------------------------------

fn clock_ticks_per_sec() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// 10 000 junk frames per second at the client across a renewal: frames that
/// pass the kernel filter and cost the engine a parse (wrong xid, bad
/// options, bad checksums, garbage). The lease must still renew, the roles
/// survive, and the client's CPU stay bounded.
fn flood_during_renewal(mode: Mode) {
    let _flooding = QUIET_LINK.write().unwrap_or_else(|e| e.into_inner());
    const RATE: u64 = 10_000;
    const FLOOD: Duration = Duration::from_secs(4);
    // A floor of 6 s leaves T1 = 3 s (the default 20 s would raise it to 10 s).
    let run = Run::start(mode, &["--min-lease-secs", "6"], |ctx, req| {
        let mut m = match req.kind {
            MessageType::Discover => ctx.offer(req),
            MessageType::Request => ctx.ack(req),
            _ => return Vec::new(),
        };
        // 30 s lease, T1 3 s: the renewal falls inside the flood.
        m.options.lease_time = Some(30);
        m.options.renewal_time = Some(3);
        m.options.rebinding_time = Some(20);
        vec![ctx.frame(req, &m)]
    });
    run.wait_bound();
    let ctx = run.ctx();
    let discover = run.server.wait_for(Duration::from_secs(1), "DISCOVER", |s| {
        s.kind == MessageType::Discover
    });
    let client_mac = discover.src_mac;
    // Templates, cycled.
    let honest = {
        let mut m = ctx.ack(&discover);
        m.yiaddr = ctx.offered();
        m
    };
    let to_client = |payload: &[u8]| {
        build_udp_frame(
            ctx.server_mac,
            client_mac,
            ctx.server_ip,
            ctx.offered(),
            67,
            DHCP_CLIENT_PORT,
            payload,
        )
    };
    let mut templates = Vec::new();
    for i in 0..16u32 {
        let mut m = honest.clone();
        m.xid = 0x5eed_0000 + i;
        templates.push(to_client(&encode(&m)));
    }
    let mut bad = encode(&honest);
    bad.truncate(250);
    templates.push(to_client(&bad));
    let mut csum = templates[0].clone();
    surgery::break_udp_checksum(&mut csum);
    templates.push(csum);
    templates.push(to_client(&[0xa5; 300]));

    let pids: Vec<u32> = std::iter::once(run.net.child_pid(run.daemon))
        .chain(run.roles.iter().map(|(_, p)| *p))
        .collect();
    let cpu_before: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let started = Instant::now();
    let sent = run
        .server
        .flood(RATE, FLOOD, |i| templates[(i as usize) % templates.len()].clone());
    let wall = started.elapsed();
    let cpu_after: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let st = run.status();
    let cores = (cpu_after - cpu_before) as f64 / clock_ticks_per_sec() as f64 / wall.as_secs_f64();
    let rate = sent as f64 / wall.as_secs_f64();
    eprintln!(
        "flood ({}): {sent} frames in {wall:?} ({rate:.0}/s); client CPU {:.3} cores \
         (supervisor + 3 roles); renewals {}",
        mode.arg(),
        cores,
        st["counters"]["renewals"]
    );
    // The flood's own precondition: at least half the rate went out. The
    // sender shares the machine with the client (two cores here, and under
    // kvm the tender's exits), so its pace varies with the load; what is
    // tested is the client under thousands of junk frames a second.
    assert!(
        rate > RATE as f64 * 0.5,
        "the flood did not reach half its rate: {rate:.0}/s"
    );
    // The renewal: its REQUEST goes out during the flood, but the server's
    // ACK may be one of the frames the kernel drops from the client's full
    // socket buffer (that is the flood). The client then asks again at T2
    // (RFC 2131 section 4.4.5: retransmissions in RENEWING wait at least
    // 60 s, capped by T2 = 20 s here), as REBINDING. Either way the lease
    // must be extended before it lapses (30 s), whenever the ACK gets in.
    let renewed = run.wait_status("the lease extended", Duration::from_secs(25), |v| {
        let extended =
            v["counters"]["renewals"].as_u64() >= Some(1) || v["counters"]["rebinds"].as_u64() >= Some(1);
        extended && v["state"] == "bound"
    });
    assert_eq!(renewed["counters"]["expiries"], 0, "{renewed}");
    // Bounded: the four processes together leave most of the machine to the
    // rest of the host (measured 0.3-0.8 of a core; the figure is printed
    // above). A spinning role would take a whole core on its own.
    // Under kvm each frame costs the tender two guest exits (its receive
    // and the engine's refusal), about 28 us each on kvm_pvm: measured 1.52
    // cores there, so its bound is higher, still under the two cores a
    // spinning role and a busy tender would take.
    let bound = if mode == Mode::Kvm { 1.9 } else { 1.5 };
    assert!(cores < bound, "client CPU {cores:.3} cores during the flood");
    run.assert_healthy();
    assert!(run.drops("NotForUs") > 0);
    run.assert_standard_host();
}

#[test]
fn flood_during_renewal_under_seccomp() {
    flood_during_renewal(Mode::Seccomp);
}

#[test]
fn flood_during_renewal_under_kvm() {
    if mirage_testkit::kvm::usable("hostile::flood_during_renewal_under_kvm") {
        flood_during_renewal(Mode::Kvm);
    }
}

#[test]
fn flood_during_renewal_without_sandbox() {
    flood_during_renewal(Mode::NoSandbox);
}
