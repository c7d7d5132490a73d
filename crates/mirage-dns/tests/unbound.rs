//! mirage-dns end to end against unbound: unbound serves a local zone on
//! 127.0.0.1 and ::1 port 5300 in a network namespace the test creates,
//! mirage-dns listens on 127.0.0.53:53 and [::1]:53 there, and the test's
//! own client asks both and compares. Needs root (namespaces, port 53, the
//! roles' privilege drop) and unbound (scripts/install-deps.sh); CI runs
//! as root.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use dns_wire::{Message, Rcode, Type};
use mirage_dns::plan::RoleIds;
use mirage_testkit::netns::in_netns;
use mirage_testkit::process::{Proto, wait_listening};
use mirage_testkit::procfs::{ProcStatus, kvm_fds, role_pid, roles_of};
use mirage_testkit::wait::wait_some;
use support::{UPSTREAM_PORT, ask_tcp, ask_udp, query, with_unbound};

in_each_sandbox!("unbound":
    it_answers_like_unbound_over_udp_and_tcp_and_its_roles_run_sandboxed,
    a_dead_upstream_is_skipped_for_the_next_over_ipv6,
    after_a_killed_engine_the_pair_restarts_on_the_same_listeners,
    forged_replies_before_the_real_one_are_refused_and_the_real_one_answers,
    a_truncated_upstream_answer_is_fetched_again_over_tcp,
    each_process_has_resident_only_the_segments_it_uses,
    the_faster_upstream_is_preferred_and_a_dead_one_left_behind,
);

/// The binary's layout by process (build.rs,
/// `mirage_kvm_build::link_by_process`, as mirage-dhcp's and mirage-ntp's):
/// once answering, no role has the supervisor's command-line and
/// configuration code resident, only the engine under kvm (the tender) has
/// the KVM tender's code resident, and no process keeps the guest image's
/// pages once its guest is built. Needs root and unbound (and /dev/kvm for
/// `kvm`).
fn each_process_has_resident_only_the_segments_it_uses(sandbox: &'static str) {
    let mut f = with_unbound("dnsl").in_sandbox(sandbox);
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    let daemon = f.start_dns(&["--listen", "127.0.0.53", "--upstream", &upstream]);
    f.answers_a_test();
    let pid = f.procs.pid(daemon);
    let mut procs = roles_of(pid);
    assert_eq!(procs.len(), 2, "{procs:?}");
    procs.push(("supervisor".into(), pid));
    let bin = std::fs::canonicalize(support::bin()).unwrap();
    mirage_testkit::layout::assert_resident_only_where_used(&bin, &procs, sandbox);
}

/// Upstream choice (docs/dns.md): first in the configuration a dead
/// upstream (a closed port: ICMP port unreachable), then a slow one (a
/// scripted server answering 192.0.2.99 after 600 ms), then unbound. The
/// first question fails on the dead one and is answered by the slow one;
/// from then on every question goes to unbound, which is never slower
/// than the 375 ms an unmeasured upstream counts as, and the dead and
/// slow ones get none. Needs root and unbound.
fn the_faster_upstream_is_preferred_and_a_dead_one_left_behind(sandbox: &'static str) {
    use mirage_testkit::dns::{DnsServer, Query, Reply};
    let mut f = with_unbound("dnsp").in_sandbox(sandbox);
    let slow: SocketAddr = "127.0.0.1:5302".parse().unwrap();
    let slow_server = DnsServer::start(
        f.ns.name(),
        slow,
        &[],
        Box::new(|q: &Query| {
            vec![
                Reply::message(&q.answer_a(300, "192.0.2.99".parse().unwrap()))
                    .after(Duration::from_millis(600)),
            ]
        }),
    );
    let unbound = format!("127.0.0.1:{UPSTREAM_PORT}");
    let config = format!(
        "upstreams = [\"127.0.0.1:5303\", \"{slow}\", \"{unbound}\"]\nattempt_ms = 2000\nattempts = 3\n"
    );
    f.start_dns_with(&config, &["--listen", "127.0.0.53"]);
    let ns = f.ns.name().to_owned();
    let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
    // One question at a time, in order: each answer ranks an upstream
    // before the next question is asked.
    let answers = in_netns(&ns, move || {
        let mut names = vec!["first.test".to_string(), "a.test".to_string()];
        names.extend((1..10).map(|i| format!("n{i}.test")));
        names
            .iter()
            .enumerate()
            .map(|(i, name)| ask_udp(ours, &query(1 + i as u16, name, Type::A, false)).expect("an answer"))
            .collect::<Vec<_>>()
    });
    let data = |m: &Message| format!("{:?}", m.answers.first().map(|r| &r.data));
    assert_eq!(
        data(&answers[0]),
        "Some(A(192.0.2.99))",
        "the slow upstream answers the first: {answers:?}"
    );
    assert_eq!(
        data(&answers[1]),
        "Some(A(192.0.2.10))",
        "then unbound: {answers:?}"
    );
    for m in &answers[2..] {
        assert_eq!(m.rcode(), Rcode::NXDOMAIN, "unbound's answer: {m:?}");
    }
    assert_eq!(slow_server.seen().len(), 1, "the slow upstream was asked once");
    let v = wait_some(
        Duration::from_secs(5),
        "unbound's 10 answers in status",
        || f.status().filter(|v| v["upstream_state"][2]["answers"] == 10),
        || format!("{:?}\n{}", f.status(), f.log()),
    );
    let u = &v["upstream_state"];
    assert_eq!(u[0]["state"], "failing", "{u}");
    assert_eq!(
        (&u[0]["failures"], &u[0]["answers"]),
        (&1.into(), &0.into()),
        "{u}"
    );
    assert_eq!(u[1]["state"], "up", "{u}");
    assert!(u[1]["rtt_ms"].as_f64().unwrap() >= 500.0, "{u}");
    assert_eq!(u[2]["state"], "up", "{u}");
    assert!(u[2]["rtt_ms"].as_f64().unwrap() < 375.0, "{u}");
    assert_eq!(
        (&u[0]["preferred"], &u[1]["preferred"], &u[2]["preferred"]),
        (&false.into(), &false.into(), &true.into()),
        "{u}"
    );
    let metrics = std::fs::read_to_string(f.dir.join("run/metrics.prom")).unwrap();
    assert!(
        metrics.contains(&format!(
            "mirage_dns_upstream_preferred{{upstream=\"{unbound}\"}} 1"
        )),
        "{metrics}"
    );
}

/// What must agree between unbound's answer and ours: the rcode and the
/// records, without their TTLs (ours count down while cached) and without
/// the AA bit (a cached answer is not authoritative); the id is each
/// query's own.
fn comparable(m: &Message) -> (Rcode, Vec<String>, Vec<String>) {
    let records = |rs: &[dns_wire::Record]| {
        let mut v: Vec<String> = rs
            .iter()
            .map(|r| format!("{:?} {:?}", r.name, r.data).to_ascii_lowercase())
            .collect();
        v.sort();
        v
    };
    (m.rcode(), records(&m.answers), records(&m.authorities))
}

/// The CAP_NET_BIND_SERVICE bit in /proc's capability masks.
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

fn it_answers_like_unbound_over_udp_and_tcp_and_its_roles_run_sandboxed(sandbox: &'static str) {
    let mut f = with_unbound("dnsu").in_sandbox(sandbox);
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    let daemon = f.start_dns(&[
        "--listen",
        "127.0.0.53",
        "--listen",
        "::1",
        "--upstream",
        &upstream,
    ]);
    let ns = f.ns.name().to_owned();
    let asked = in_netns(&ns, move || {
        let unbound: SocketAddr = format!("127.0.0.1:{UPSTREAM_PORT}").parse().unwrap();
        let ours: [SocketAddr; 2] = ["127.0.0.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()];
        let cases = [
            ("a.test", Type::A, Rcode::NOERROR, 1),
            ("A.Test", Type::AAAA, Rcode::NOERROR, 1),
            // unbound answers local data as it is: the CNAME alone.
            ("alias.test", Type::A, Rcode::NOERROR, 1),
            ("nx.test", Type::A, Rcode::NXDOMAIN, 0),
        ];
        let mut asked = 0;
        for (i, (name, qtype, rcode, answers)) in cases.into_iter().enumerate() {
            for edns in [false, true] {
                let id = 0x100 + i as u16 * 2 + u16::from(edns);
                let q = query(id, name, qtype, edns);
                let want = ask_udp(unbound, &q).expect("unbound answers");
                assert_eq!(
                    (want.rcode(), want.answers.len()),
                    (rcode, answers),
                    "unbound: {name}"
                );
                for server in ours {
                    let got =
                        ask_udp(server, &q).unwrap_or_else(|| panic!("no answer from {server} for {name}"));
                    asked += 1;
                    assert_eq!(got.header.id, id);
                    assert!(got.header.response && got.header.recursion_available);
                    assert!(
                        got.questions[0].eq_exact(&want.questions[0]),
                        "the question as asked"
                    );
                    assert_eq!(
                        comparable(&got),
                        comparable(&want),
                        "{name} {qtype:?} via {server}"
                    );
                    assert_eq!(got.edns.is_some(), edns, "EDNS only to a client that sent it");
                    if let Some(e) = &got.edns {
                        assert_eq!(e.udp_payload_size, 1232);
                    }
                }
            }
        }
        // TCP, three queries pipelined on one connection.
        let qs = vec![
            query(7, "a.test", Type::A, false),
            query(8, "a.test", Type::AAAA, false),
            query(9, "nx.test", Type::A, false),
        ];
        let mut answers = ask_tcp(ours[0], &qs);
        answers.sort_by_key(|m| m.header.id);
        let ids: Vec<u16> = answers.iter().map(|m| m.header.id).collect();
        assert_eq!(ids, [7, 8, 9]);
        for (q, got) in qs.iter().zip(&answers) {
            let want = ask_udp(unbound, q).unwrap();
            assert_eq!(comparable(got), comparable(&want), "over TCP");
        }
        asked + 3
    });

    let v = wait_some(
        Duration::from_secs(10),
        "the counters of every query published",
        || {
            f.status().filter(|v| {
                let served = v["engine"]["answered"].as_u64().unwrap_or(0)
                    + v["engine"]["cache_hits"].as_u64().unwrap_or(0);
                served >= asked && v["network"]["answers"].as_u64() >= Some(asked)
            })
        },
        || format!("{:?}\n{}", f.status(), f.log()),
    );
    assert_eq!(v["refused"], serde_json::json!({}), "{v}");
    assert_eq!(v["network"]["refused"], serde_json::json!({}), "{v}");
    assert_eq!(v["engine"]["servfail"], 0, "{v}");
    // Each question was asked of both listeners (and over TCP again):
    // after the first, the cache answers (unbound's TTL is 300 s).
    let (hits, relayed) = (
        v["engine"]["cache_hits"].as_u64().unwrap(),
        v["engine"]["answered"].as_u64().unwrap(),
    );
    assert!(hits > 0, "{v}");
    assert_eq!(hits + relayed, asked, "{v}");
    let misses = v["engine"]["cache_misses"].as_u64().unwrap();
    let rate = v["engine"]["cache_hit_rate"].as_f64().unwrap();
    assert!((rate - hits as f64 / (hits + misses) as f64).abs() < 0.001, "{v}");
    assert_eq!(v["network"]["tcp_queries"], 3, "{v}");
    f.assert_sandbox(&v, sandbox);
    let metrics = std::fs::read_to_string(f.dir.join("run/metrics.prom")).unwrap();
    assert!(
        metrics.contains("mirage_dns_queries_total{transport=\"tcp\"} 3"),
        "{metrics}"
    );

    // The roles: their own ids, no capability at all, their filters.
    let pid = f.procs.pid(daemon);
    let names: Vec<String> = roles_of(pid).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["engine", "network"]);
    let ids = RoleIds::DEFAULT;
    for (role, id) in [("engine", ids.engine.uid), ("network", ids.network.uid)] {
        let st = ProcStatus::read(role_pid(pid, role));
        assert_eq!(st.uids(), [id; 4], "{role}");
        assert_eq!(st.gids(), [id; 4], "{role}");
        assert_eq!(st.seccomp(), 2, "{role} runs under its filter");
        assert!(st.no_new_privs(), "{role}");
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
            assert_eq!(st.caps(set), 0, "{role} {set}");
        }
        // A tender holds its VM and vCPU, no other role any KVM descriptor.
        assert_eq!(
            kvm_fds(role_pid(pid, role)),
            support::want_kvm_fds(role, sandbox),
            "{role}"
        );
    }
    // The supervisor keeps the device for the engines it starts.
    let want: &[&str] = if sandbox == "kvm" { &["/dev/kvm"] } else { &[] };
    assert_eq!(kvm_fds(pid), want, "the supervisor");
    // The supervisor bound port 53 and kept nothing that binds it again.
    let sup = ProcStatus::read(pid);
    assert_eq!(sup.seccomp(), 2, "the supervisor runs under its filter");
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(sup.caps(set) & CAP_NET_BIND_SERVICE, 0, "supervisor {set}");
    }

    // `status --json` reads what was published; SIGTERM ends it cleanly.
    let out = std::process::Command::new(support::bin())
        .args(["status", "--json", "--run-dir"])
        .arg(f.dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["upstreams"], serde_json::json!([upstream]));
    f.procs.signal(daemon, "TERM");
    let exit = f
        .procs
        .wait_exit(daemon, Duration::from_secs(10))
        .expect("stops on SIGTERM");
    // An orderly stop: exit status 0, and no role calls it an error (the
    // network role once logged the engine's channel closing).
    let log = f.log();
    assert!(exit.success(), "{exit:?}: {log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "ERROR lines on a SIGTERM stop: {errors:?}\n{log}"
    );
    assert!(log.contains("stopping"), "{log}");
}

fn a_dead_upstream_is_skipped_for_the_next_over_ipv6(sandbox: &'static str) {
    let mut f = with_unbound("dnsd").in_sandbox(sandbox);
    // 127.0.0.2 is on lo but nothing listens there: ICMP port unreachable,
    // so the next upstream is asked at once, over IPv6 (an AF_INET6
    // socket under the network role's filter).
    let good = format!("[::1]:{UPSTREAM_PORT}");
    f.start_dns(&[
        "--listen",
        "127.0.0.53",
        "--upstream",
        "127.0.0.2:5300",
        "--upstream",
        &good,
    ]);
    let ns = f.ns.name().to_owned();
    in_netns(&ns, || {
        let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
        let got = ask_udp(ours, &query(1, "a.test", Type::A, true)).expect("an answer");
        assert_eq!((got.rcode(), got.answers.len()), (Rcode::NOERROR, 1));
    });
    let v = wait_some(
        Duration::from_secs(10),
        "the failed attempt counted",
        || {
            f.status()
                .filter(|v| v["engine"]["upstream_failures"].as_u64() >= Some(1))
        },
        || f.log(),
    );
    assert_eq!(v["engine"]["answered"], 1, "{v}");
    assert_eq!(v["engine"]["servfail"], 0, "{v}");
}

fn after_a_killed_engine_the_pair_restarts_on_the_same_listeners(sandbox: &'static str) {
    let mut f = with_unbound("dnsr").in_sandbox(sandbox);
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    // No --listen: the default, 127.0.0.53:53.
    let daemon = f.start_dns(&["--upstream", &upstream]);
    let ns = f.ns.name().to_owned();
    let ask = move |id: u16| {
        in_netns(&ns, move || {
            let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
            ask_udp(ours, &query(id, "a.test", Type::A, false))
        })
    };
    assert_eq!(ask(1).expect("an answer").answers.len(), 1);
    let pid = f.procs.pid(daemon);
    let (engine, network) = (role_pid(pid, "engine"), role_pid(pid, "network"));
    std::process::Command::new("kill")
        .args(["-KILL", &engine.to_string()])
        .status()
        .unwrap();
    // Both roles of the linked pair are new processes; the listeners are
    // the same sockets (the supervisor kept them), so the same address
    // answers, and the status says the pair restarted.
    wait_some(
        Duration::from_secs(20),
        "a new engine and network role",
        || {
            let roles = roles_of(pid);
            (roles.len() == 2 && roles.iter().all(|&(_, p)| p != engine && p != network)).then_some(())
        },
        || f.log(),
    );
    let a = ask(2).expect("an answer after the restart");
    assert_eq!((a.header.id, a.answers.len()), (2, 1));
    let v = wait_some(
        Duration::from_secs(10),
        "the restart published",
        || f.status().filter(|v| v["engine_restarts"].as_u64() >= Some(1)),
        || f.log(),
    );
    assert_eq!(v["engine_restarts"], 1, "{v}");
    assert_eq!(v["sandbox"], sandbox, "{v}");
    // Started again in the same sandbox: a guest again under kvm.
    for role in ["engine", "network"] {
        let p = role_pid(pid, role);
        assert_eq!(ProcStatus::read(p).seccomp(), 2, "{role}");
        assert_eq!(kvm_fds(p), support::want_kvm_fds(role, sandbox), "{role}");
    }
}

/// A hostile upstream on 127.0.0.1:5301 in namespace `ns`: each query is
/// answered three times, first with another id, then with the question in
/// lower case (the 0x20 check), then rightly with 192.0.2.99. Serves until
/// `stop` is set.
fn forging_upstream(
    ns: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    use dns_wire::{Class, Name, RData, Record};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        mirage_testkit::netns::enter(&ns).unwrap();
        let s = std::net::UdpSocket::bind("127.0.0.1:5301").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 4096];
        let mut served = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            let Ok(q) = Message::parse(&buf[..n]) else {
                continue;
            };
            let mut r = q.clone();
            r.header.response = true;
            r.header.recursion_available = true;
            r.answers = vec![Record {
                name: q.questions[0].name.clone(),
                class: Class::IN,
                ttl: 60,
                data: RData::A(std::net::Ipv4Addr::new(192, 0, 2, 99)),
            }];
            let mut wrong_id = r.clone();
            wrong_id.header.id ^= 0x5a5a;
            let mut lower = r.clone();
            let labels: Vec<Vec<u8>> = q.questions[0]
                .name
                .labels()
                .map(|l| l.to_ascii_lowercase())
                .collect();
            lower.questions[0].name = Name::from_labels(labels.iter().map(Vec::as_slice)).unwrap();
            for m in [wrong_id, lower, r] {
                s.send_to(&m.to_bytes().unwrap(), from).unwrap();
            }
            served += 1;
        }
        served
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the forging upstream is up");
    t
}

fn forged_replies_before_the_real_one_are_refused_and_the_real_one_answers(sandbox: &'static str) {
    let mut f = with_unbound("dnsf").in_sandbox(sandbox);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upstream = forging_upstream(f.ns.name().to_owned(), stop.clone());
    f.start_dns(&["--upstream", "127.0.0.1:5301"]);
    let ns = f.ns.name().to_owned();
    let got = in_netns(&ns, || {
        let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
        // Twenty letters: all drawn lower case by 0x20 one time in 2^20.
        ask_udp(ours, &query(0x77, "abcdefghijklmnopqrst.test", Type::A, false))
    })
    .expect("an answer");
    assert_eq!(
        (got.header.id, got.rcode(), got.answers.len()),
        (0x77, Rcode::NOERROR, 1)
    );
    assert_eq!(
        got.answers[0].data,
        dns_wire::RData::A(std::net::Ipv4Addr::new(192, 0, 2, 99))
    );
    let v = wait_some(
        Duration::from_secs(10),
        "both forgeries counted",
        || {
            f.status().filter(|v| {
                v["refused"]["mismatched-reply"].as_u64() >= Some(2)
                    && v["engine"]["answered"].as_u64() >= Some(1)
            })
        },
        || format!("{:?}\n{}", f.status(), f.log()),
    );
    assert_eq!(v["refused"]["mismatched-reply"], 2, "{v}");
    assert_eq!(v["engine"]["answered"], 1, "{v}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        upstream.join().unwrap(),
        1,
        "one upstream query for one client query"
    );
}

fn a_truncated_upstream_answer_is_fetched_again_over_tcp(sandbox: &'static str) {
    let mut f = with_unbound("dnst").in_sandbox(sandbox);
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    f.start_dns(&["--upstream", &upstream]);
    let ns = f.ns.name().to_owned();
    let (over_udp, over_tcp) = in_netns(&ns, || {
        let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
        // unbound truncates 100 A records at our 1232 octets; we ask again
        // over TCP and answer a TCP client in full...
        let tcp = ask_tcp(ours, &[query(1, "many.test", Type::A, false)]).remove(0);
        // ...and a UDP client with EDNS 1232 gets TC (it is too large for
        // it), from the cache this time.
        let udp = ask_udp(ours, &query(2, "many.test", Type::A, true)).expect("an answer");
        (udp, tcp)
    });
    assert_eq!((over_tcp.header.id, over_tcp.header.truncated), (1, false));
    assert_eq!(over_tcp.answers.len(), 100);
    assert_eq!((over_udp.header.id, over_udp.header.truncated), (2, true));
    assert!(over_udp.answers.is_empty());
    let v = wait_some(
        Duration::from_secs(10),
        "the TCP retry counted",
        || {
            f.status().filter(|v| {
                v["engine"]["tcp_retries"].as_u64() >= Some(1)
                    && v["network"]["tcp_upstream_queries"].as_u64() >= Some(1)
            })
        },
        || format!("{:?}\n{}", f.status(), f.log()),
    );
    assert_eq!(v["engine"]["tcp_retries"], 1, "{v}");
    assert_eq!(v["engine"]["cache_hits"], 1, "{v}");
    assert_eq!(v["network"]["upstream_errors"], 0, "{v}");
    assert_eq!(v["network"]["refused"], serde_json::json!({}), "{v}");
}

/// A SIGTERM stop of `daemon`: exit status 0 and no ERROR line.
fn stop_cleanly(f: &mut support::Fixture, daemon: usize) {
    f.procs.signal(daemon, "TERM");
    let exit = f
        .procs
        .wait_exit(daemon, Duration::from_secs(10))
        .expect("stops on SIGTERM");
    let log = f.log();
    assert!(exit.success(), "{exit:?}: {log}");
    assert!(!log.contains(" ERROR "), "{log}");
}

/// `one_cpu` (docs/architecture.md, "Roles on one CPU"): by default the
/// supervisor and both roles may run on one CPU only, the same for all,
/// and one the test's own process may use; with `one_cpu = false` they
/// keep the whole set they were started with. Needs root and unbound, and
/// a machine (or cgroup) with more than one CPU, which CI has.
#[test]
fn the_roles_share_one_cpu_unless_told_otherwise() {
    let cpus = |pid: u32| -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in /proc/PID/status");
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let ours = cpus(std::process::id());
    assert!(
        ours.contains('-') || ours.contains(','),
        "this test needs more than one CPU; it may use {ours}"
    );
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    for (config, one) in [("", true), ("one_cpu = false\n", false)] {
        let mut f = with_unbound("dnsc");
        let daemon = f.start_dns_with(config, &["--listen", "127.0.0.53", "--upstream", &upstream]);
        let pid = f.procs.pid(daemon);
        let mut procs = roles_of(pid);
        assert_eq!(procs.len(), 2, "{procs:?}");
        procs.push(("supervisor".into(), pid));
        let sets: Vec<String> = procs.iter().map(|(_, p)| cpus(*p)).collect();
        if one {
            assert!(sets.iter().all(|s| *s == sets[0]), "{procs:?}: {sets:?}");
            let cpu: usize = sets[0]
                .parse()
                .unwrap_or_else(|_| panic!("one CPU, not {}", sets[0]));
            let allowed = mirage_testkit::procfs::cpu_list(&ours);
            assert!(allowed.contains(&cpu), "CPU {cpu} is not in {ours}");
            assert!(
                f.log().contains(&format!("the roles run on CPU {cpu}")),
                "{}",
                f.log()
            );
        } else {
            assert!(
                sets.iter().all(|s| *s == ours),
                "{procs:?}: {sets:?}, ours {ours}"
            );
        }
        stop_cleanly(&mut f, daemon);
    }
}

#[test]
fn under_a_hard_descriptor_limit_of_1024_the_network_role_fits_its_limits() {
    let mut f = with_unbound("dnsl");
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    // What many container runtimes give: the defaults want 1106.
    let daemon = f.spawn_dns(
        &["prlimit", "--nofile=1024:1024", "--"],
        &["--listen", "127.0.0.53", "--upstream", &upstream],
    );
    let ns = f.ns.name().to_owned();
    wait_listening(&f.ns, Proto::Udp, 53, Duration::from_secs(20));
    let got = in_netns(&ns, || {
        let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
        ask_udp(ours, &query(1, "a.test", Type::A, false))
    });
    assert_eq!(got.expect("an answer").answers.len(), 1, "{}", f.log());
    let log = f.log();
    assert!(
        log.contains("limits.upstream_sockets lowered from 1024 to 946, limits.tcp_clients from 64 to 60"),
        "{log}"
    );
    // The network role runs with the whole limit, once: no restart.
    let pid = f.procs.pid(daemon);
    let network = role_pid(pid, "network");
    let limits = std::fs::read_to_string(format!("/proc/{network}/limits")).unwrap();
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(
        nofile.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1024", "1024"],
        "{nofile}"
    );
    assert!(!log.contains("restarting"), "{log}");
    stop_cleanly(&mut f, daemon);
}

#[test]
fn a_descriptor_limit_below_the_minimum_stops_the_service_at_start() {
    let mut f = with_unbound("dnsm");
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    let daemon = f.spawn_dns(
        &["prlimit", "--nofile=30:30", "--"],
        &["--listen", "127.0.0.53", "--upstream", &upstream],
    );
    let exit = f
        .procs
        .wait_exit(daemon, Duration::from_secs(20))
        .expect("stops at start");
    let log = f.log();
    assert!(!exit.success(), "{log}");
    assert!(
        log.contains("the descriptor limit (RLIMIT_NOFILE, hard) is 30: the network role needs at least 38"),
        "{log}"
    );
    assert!(!log.contains("restarting") && !log.contains("[network]"), "{log}");
}

#[test]
fn an_unwritable_runtime_directory_stops_the_service_at_start() {
    let mut f = with_unbound("dnsw");
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    // Someone else's directory: the supervisor, which keeps no
    // CAP_DAC_OVERRIDE, cannot write it even as root.
    let run = f.dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
    let daemon = f.spawn_dns(&[], &["--listen", "127.0.0.53", "--upstream", &upstream]);
    let exit = f
        .procs
        .wait_exit(daemon, Duration::from_secs(20))
        .expect("stops at start");
    let log = f.log();
    assert!(!exit.success(), "{log}");
    let want = format!(
        "runtime directory {}: writing metrics.prom: Permission denied",
        run.display()
    );
    assert!(log.contains(&want), "{log}");
    assert!(!log.contains("listening on"), "{log}");
}

#[test]
fn a_role_that_fails_before_its_sandbox_exits_with_the_setup_status() {
    // The status the runtime reads to stop restarting a role that fails
    // at setup the same way twice in a row.
    let out = std::process::Command::new(support::bin())
        .args(["role", "no-such-role"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(mirage_sdk::role::EXIT_SETUP_FAILED),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no role named"),
        "{out:?}"
    );
}

/// `auto` (the default) where the configured KVM device does not exist:
/// the engine runs under seccomp and status.json says why; `--sandbox
/// kvm` with the same device fails at start, naming it, and so does a
/// guest memory too small for the cache, naming the key. Needs root and
/// unbound, not KVM.
#[test]
fn auto_falls_back_to_seccomp_where_kvm_is_unusable() {
    let mut f = with_unbound("dnsa");
    let missing = f.dir.join("no-such-kvm");
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    let refused = |f: &mut support::Fixture, config: &str, sandbox: &str, log: &str| {
        let path = f.dir.join(&format!("{log}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut cmd = f.ns.command(support::bin().to_str().unwrap());
        cmd.args([
            "run",
            "--listen",
            "127.0.0.53",
            "--upstream",
            &upstream,
            "--sandbox",
            sandbox,
        ])
        .arg("--config")
        .arg(&path)
        .arg("--run-dir")
        .arg(f.dir.join("run"));
        let log = f.dir.join(log);
        let daemon = f.procs.spawn_logged(cmd, &log);
        let exit = f
            .procs
            .wait_exit(daemon, Duration::from_secs(10))
            .expect("a refused start did not exit");
        assert!(!exit.success());
        assert!(f.status().is_none(), "a refused start published a status");
        mirage_testkit::cmd::read_lossy(&log)
    };
    let device = format!("kvm_device = \"{}\"\n", missing.display());
    let log = refused(&mut f, &device, "kvm", "refused.log");
    assert!(
        log.contains("--sandbox kvm: KVM is unusable here") && log.contains(&missing.display().to_string()),
        "{log}"
    );
    // 8 MiB of cache needs at least 12 MiB of guest memory, whatever the
    // sandbox turns out to be.
    let small = "kvm_memory_mib = 11\n[cache]\nbytes = 8388608\n";
    let log = refused(&mut f, small, "seccomp", "small.log");
    assert!(
        log.contains("kvm_memory_mib: 11 MiB of guest memory is too little")
            && log.contains("at least 12 MiB"),
        "{log}"
    );

    f.start_dns_with(&device, &["--listen", "127.0.0.53", "--upstream", &upstream]);
    let v = f.answers_a_test();
    assert_eq!(v["sandbox"], "seccomp", "{v}");
    let reason = v["sandbox_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("--sandbox auto: kvm unusable") && reason.contains(&missing.display().to_string()),
        "{reason}"
    );
    assert!(
        f.log().contains("sandbox seccomp: --sandbox auto: kvm unusable"),
        "{}",
        f.log()
    );
    let out = std::process::Command::new(support::bin())
        .args(["status", "--run-dir"])
        .arg(f.dir.join("run"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("sandbox") && l.contains("seccomp (--sandbox auto: kvm unusable")),
        "{text}"
    );
}

/// `auto` with a usable device: the engine is a guest, and its memory is
/// sized for the configured cache (32 MiB of cache: 68 MiB, twice the
/// cache and the default 4 MiB), which the tender maps whole. Needs root,
/// unbound and /dev/kvm (`mirage_testkit::kvm`).
#[test]
fn auto_runs_the_engine_as_a_guest_sized_for_its_cache_where_kvm_works() {
    if !mirage_testkit::kvm::usable(
        "unbound::auto_runs_the_engine_as_a_guest_sized_for_its_cache_where_kvm_works",
    ) {
        return;
    }
    let mut f = with_unbound("dnsk");
    let upstream = format!("127.0.0.1:{UPSTREAM_PORT}");
    let daemon = f.start_dns_with(
        "[cache]\nbytes = 33554432\n",
        &["--listen", "127.0.0.53", "--upstream", &upstream],
    );
    let v = f.answers_a_test();
    assert_eq!(v["sandbox"], "kvm", "{v}");
    let reason = v["sandbox_reason"].as_str().unwrap();
    assert!(reason.starts_with("--sandbox auto: /dev/kvm opens"), "{reason}");
    assert_eq!(v["guest_memory_mib"], 68, "{v}");
    let engine = role_pid(f.procs.pid(daemon), "engine");
    let maps = std::fs::read_to_string(format!("/proc/{engine}/maps")).unwrap();
    let sized = maps.lines().any(|l| {
        let range = l.split_whitespace().next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let len = u64::from_str_radix(hi, 16).unwrap() - u64::from_str_radix(lo, 16).unwrap();
        len == 68 << 20
    });
    assert!(sized, "no 68 MiB mapping in the tender:\n{maps}");
}
