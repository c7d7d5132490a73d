//! rtnetlink client tests against the real kernel, each in a network
//! namespace of its own (see `mirage_testkit::netns::run_in_netns`). Need
//! root; CI runs as root.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::IntoRawFd;
use std::time::Duration;

use mirage_ipc::Route;
use mirage_sdk::netlink::{FOREVER, LinkEvent, LinkMonitor, Rtnl};
use mirage_testkit::cmd::ip;
use mirage_testkit::netns::{run_in_netns, veth_pair};
use mirage_testkit::wait::{eventually, wait_readable};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressAttribute;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

const BOUND: Duration = Duration::from_secs(30);
/// RTMGRP_IPV4_IFADDR: IPv4 address notifications.
const RTMGRP_IPV4_IFADDR: u32 = 0x10;

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or_else(|| panic!("no errno in {e:?}"))
}

/// A veth link `name` (peer `<name>p`), both ends up; returns its index.
/// (veth rather than dummy: not every kernel ships the dummy driver.)
fn link_up(rtnl: &mut Rtnl, name: &str) -> u32 {
    let peer = format!("{name}p");
    veth_pair(name, &peer);
    let index = rtnl.link_by_name(name).unwrap().index;
    rtnl.set_link_up(index).unwrap();
    let peer_index = rtnl.link_by_name(&peer).unwrap().index;
    rtnl.set_link_up(peer_index).unwrap();
    index
}

/// (valid, preferred) lifetimes `ip -j` shows for `addr` on `dev`.
fn ip_lifetimes(dev: &str, addr: &str) -> Option<(u64, u64)> {
    let out = ip(&["-j", "-4", "addr", "show", "dev", dev]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json.as_array()?.iter().find_map(|link| {
        link["addr_info"].as_array()?.iter().find_map(|a| {
            (a["local"] == addr).then(|| {
                (
                    a["valid_life_time"].as_u64().unwrap(),
                    a["preferred_life_time"].as_u64().unwrap(),
                )
            })
        })
    })
}

/// Every IPv4 address notification queued on `sock`: (is_delete, address).
fn address_notifications(sock: &Socket) -> Vec<(bool, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let mut slice = &mut buf[..];
        let n = match sock.recv(&mut slice, libc::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
            // ENOBUFS would mean lost notifications: the test could not prove anything.
            Err(e) => panic!("address watcher failed: {e}"),
        };
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n]).unwrap();
            off += (msg.header.length as usize).next_multiple_of(4);
            let (delete, attrs) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => (false, m.attributes),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => (true, m.attributes),
                _ => continue,
            };
            for attr in attrs {
                if let AddressAttribute::Local(std::net::IpAddr::V4(a)) = attr {
                    out.push((delete, a));
                }
            }
        }
    }
}

#[test]
fn address_lifetimes_and_replace_never_deletes() {
    run_in_netns(BOUND, || {
        let mut rtnl = Rtnl::open().unwrap();
        let index = link_up(&mut rtnl, "veth0");
        // The watcher subscribes before the first change, so it sees all of them.
        let mut watcher = Socket::new(NETLINK_ROUTE).unwrap();
        watcher.bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR)).unwrap();

        let addr = Ipv4Addr::new(10, 0, 0, 5);
        let bcast = Some(Ipv4Addr::new(10, 0, 0, 255));
        rtnl.replace_address(index, addr, 24, bcast, 600, 300).unwrap();
        let (valid, preferred) = ip_lifetimes("veth0", "10.0.0.5").expect("address visible to ip");
        assert!((595..=600).contains(&valid), "valid_life_time {valid}");
        assert!(
            (295..=300).contains(&preferred),
            "preferred_life_time {preferred}"
        );

        // Renewals: new lifetimes, same address, over and over.
        for round in 1..=5u32 {
            let valid = 1000 + round * 100;
            rtnl.replace_address(index, addr, 24, bcast, valid, valid / 2)
                .unwrap();
            let got = rtnl.addresses(index).unwrap();
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!((got[0].addr, got[0].prefix_len), (addr, 24));
            assert!(
                got[0].valid_secs <= valid && got[0].valid_secs + 5 >= valid,
                "{got:?}"
            );
            assert!(got[0].preferred_secs <= valid / 2 && got[0].preferred_secs + 5 >= valid / 2);
        }
        rtnl.replace_address(index, addr, 24, bcast, FOREVER, FOREVER)
            .unwrap();
        assert_eq!(
            ip_lifetimes("veth0", "10.0.0.5"),
            Some((u64::from(FOREVER), u64::from(FOREVER)))
        );
        assert_eq!(rtnl.addresses(index).unwrap()[0].valid_secs, FOREVER);

        let seen = address_notifications(&watcher);
        let news = seen.iter().filter(|&&(del, a)| !del && a == addr).count();
        assert!(news >= 7, "expected a notification per change, got {seen:?}");
        assert!(
            !seen.iter().any(|&(del, _)| del),
            "address was deleted during replace: {seen:?}"
        );

        // The kernel's own rules: no zero valid lifetime, preferred <= valid.
        let e = rtnl.replace_address(index, addr, 24, None, 100, 200).unwrap_err();
        assert_eq!(errno(&e), libc::EINVAL);
        let e = rtnl.replace_address(index, addr, 33, None, 100, 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);

        rtnl.delete_address(index, addr, 24).unwrap();
        assert!(rtnl.addresses(index).unwrap().is_empty());
        assert_eq!(ip_lifetimes("veth0", "10.0.0.5"), None);
        let e = rtnl.delete_address(index, addr, 24).unwrap_err();
        assert_eq!(errno(&e), libc::EADDRNOTAVAIL);
        let seen = address_notifications(&watcher);
        assert_eq!(
            seen,
            vec![(true, addr)],
            "exactly one deletion, from delete_address"
        );
    });
}

#[test]
fn google_cloud_routes_in_order_and_only_ours() {
    run_in_netns(BOUND, || {
        let mut rtnl = Rtnl::open().unwrap();
        let index = link_up(&mut rtnl, "eth0");
        let addr = Ipv4Addr::new(10, 128, 0, 5);
        let gw = Ipv4Addr::new(10, 128, 0, 1);
        rtnl.replace_address(index, addr, 32, None, 3600, 3600).unwrap();
        let host = Route {
            destination: gw,
            prefix_len: 32,
            gateway: Ipv4Addr::UNSPECIFIED,
        };
        let default = Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: gw,
        };
        // Default route first: the /32 leaves the gateway off-link.
        let e = rtnl.replace_route(index, default, Some(addr), 100).unwrap_err();
        assert_eq!(errno(&e), libc::ENETUNREACH, "{e}");
        // Host route to the gateway first, then the default route (field note 1).
        rtnl.replace_route(index, host, Some(addr), 100).unwrap();
        rtnl.replace_route(index, default, Some(addr), 100).unwrap();
        let routes = rtnl.routes(index).unwrap();
        assert!(routes.contains(&host) && routes.contains(&default), "{routes:?}");

        let shown = ip(&["-j", "-4", "route", "show", "dev", "eth0"]);
        let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
        let by_dst = |dst: &str| {
            json.as_array()
                .unwrap()
                .iter()
                .find(|r| r["dst"] == dst)
                .cloned()
                .unwrap()
        };
        let host_json = by_dst("10.128.0.1");
        assert_eq!(host_json["protocol"], "dhcp");
        assert_eq!(host_json["scope"], "link");
        assert_eq!(host_json["metric"], 100);
        assert_eq!(host_json["prefsrc"], "10.128.0.5");
        let default_json = by_dst("default");
        assert_eq!(default_json["gateway"], "10.128.0.1");
        assert_eq!(default_json["protocol"], "dhcp");
        assert!(
            default_json.get("scope").is_none(),
            "universe scope is not printed: {default_json}"
        );

        // Applying the same lease again (renewal, restart) succeeds and
        // leaves one route each.
        rtnl.replace_route(index, host, Some(addr), 100).unwrap();
        rtnl.replace_route(index, default, None, 100).unwrap();
        let routes = rtnl.routes(index).unwrap();
        assert_eq!(routes.iter().filter(|r| **r == default).count(), 1, "{routes:?}");
        assert_eq!(routes.iter().filter(|r| **r == host).count(), 1, "{routes:?}");

        // Another interface's route with the same destination and metric is
        // never replaced.
        let other = link_up(&mut rtnl, "eth1");
        ip(&["addr", "add", "192.0.2.5/24", "dev", "eth1"]);
        ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "eth1",
            "metric",
            "50",
        ]);
        let clash = Route {
            destination: Ipv4Addr::new(198, 51, 100, 0),
            prefix_len: 24,
            gateway: Ipv4Addr::UNSPECIFIED,
        };
        let e = rtnl.replace_route(index, clash, None, 50).unwrap_err();
        assert_eq!(errno(&e), libc::EEXIST);
        let theirs = rtnl.routes(other).unwrap();
        assert!(
            theirs
                .iter()
                .any(|r| r.destination == clash.destination && r.gateway == Ipv4Addr::new(192, 0, 2, 1))
        );
        // With its own metric it goes in next to theirs.
        rtnl.replace_route(index, clash, None, 1000 + index).unwrap();
        assert!(rtnl.routes(index).unwrap().contains(&clash));
        assert_eq!(rtnl.routes(other).unwrap().len(), theirs.len());

        // Delete in reverse order; a second delete finds nothing.
        rtnl.delete_route(index, default, 100).unwrap();
        rtnl.delete_route(index, host, 100).unwrap();
        let routes = rtnl.routes(index).unwrap();
        assert!(
            !routes.contains(&default) && !routes.contains(&host),
            "{routes:?}"
        );
        let e = rtnl.delete_route(index, default, 100).unwrap_err();
        assert_eq!(errno(&e), libc::ESRCH);
        // delete_route never removes another interface's route.
        let their_route = Route {
            gateway: Ipv4Addr::new(192, 0, 2, 1),
            ..clash
        };
        assert!(rtnl.delete_route(index, their_route, 50).is_err());
        assert!(rtnl.routes(other).unwrap().contains(&their_route));
    });
}

#[test]
fn routes_go_to_the_table_asked_for_and_only_there() {
    run_in_netns(BOUND, || {
        let mut rtnl = Rtnl::open().unwrap();
        let index = link_up(&mut rtnl, "eth0");
        let addr = Ipv4Addr::new(10, 128, 0, 5);
        let gw = Ipv4Addr::new(10, 128, 0, 1);
        rtnl.replace_address(index, addr, 24, None, 3600, 3600).unwrap();
        let default = Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: gw,
        };
        let corp = Route {
            destination: Ipv4Addr::new(172, 16, 0, 0),
            prefix_len: 12,
            gateway: gw,
        };
        // 100 fits rtm_table; 1000 needs RTA_TABLE.
        for table in [100u32, 1000] {
            for r in [corp, default] {
                rtnl.replace_route_in(table, index, r, Some(addr), 1000).unwrap();
                // Again (a renewal): still one route, no error.
                rtnl.replace_route_in(table, index, r, Some(addr), 1000).unwrap();
            }
            let ours = rtnl.routes_in(table, index).unwrap();
            assert_eq!(ours.iter().filter(|r| **r == default).count(), 1, "{ours:?}");
            assert_eq!(ours.iter().filter(|r| **r == corp).count(), 1, "{ours:?}");
            let shown = ip(&["-j", "-4", "route", "show", "table", &table.to_string()]);
            let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
            let dsts: Vec<&str> = json
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["dst"].as_str().unwrap())
                .collect();
            assert!(
                dsts.contains(&"default") && dsts.contains(&"172.16.0.0/12"),
                "{shown}"
            );
        }
        // The main table has the kernel's prefix route only.
        let main = rtnl.routes(index).unwrap();
        assert!(!main.contains(&default) && !main.contains(&corp), "{main:?}");
        let shown = ip(&["-j", "-4", "route", "show", "table", "main"]);
        assert!(!shown.contains("default") && !shown.contains("172.16"), "{shown}");
        // Deleting from one table leaves the other alone.
        rtnl.delete_route_in(100, index, default, 1000).unwrap();
        rtnl.delete_route_in(100, index, corp, 1000).unwrap();
        assert!(rtnl.routes_in(100, index).unwrap().is_empty());
        assert_eq!(rtnl.routes_in(1000, index).unwrap().len(), 2);
        let e = rtnl.delete_route_in(100, index, default, 1000).unwrap_err();
        assert_eq!(errno(&e), libc::ESRCH);
        // Neither "unspecified" nor the kernel's local table.
        for bad in [0, 255] {
            let e = rtnl
                .replace_route_in(bad, index, default, None, 1000)
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    });
}

#[test]
fn links_by_index_and_name_up_and_mtu_limits() {
    run_in_netns(BOUND, || {
        let mut rtnl = Rtnl::open().unwrap();
        veth_pair("veth0", "veth1");
        let a = rtnl.link_by_name("veth0").unwrap();
        assert_eq!(a.name, "veth0");
        assert!(!a.up && !a.carrier);
        assert!(a.mac.is_some_and(|m| m != [0; 6]));
        assert_eq!(rtnl.link(a.index).unwrap(), a);
        let b = rtnl.link_by_name("veth1").unwrap();

        rtnl.set_link_up(a.index).unwrap();
        let up = rtnl.link(a.index).unwrap();
        assert!(up.up && !up.carrier, "peer is down, so no carrier: {up:?}");
        rtnl.set_link_up(b.index).unwrap();
        assert!(eventually(Duration::from_secs(5), || rtnl
            .link(a.index)
            .unwrap()
            .carrier));

        assert_eq!(errno(&rtnl.link_by_name("nosuch0").unwrap_err()), libc::ENODEV);
        assert_eq!(errno(&rtnl.link(999_999).unwrap_err()), libc::ENODEV);
        for bad in ["", "a/b", "sixteen-chars-xx"] {
            assert_eq!(
                rtnl.link_by_name(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }

        let min = a.min_mtu.expect("veth reports min_mtu");
        let max = a.max_mtu.expect("veth reports max_mtu");
        rtnl.set_mtu(a.index, 1460).unwrap();
        assert_eq!(rtnl.link(a.index).unwrap().mtu, 1460);
        assert_eq!(errno(&rtnl.set_mtu(a.index, max + 1).unwrap_err()), libc::EINVAL);
        assert_eq!(errno(&rtnl.set_mtu(a.index, min - 1).unwrap_err()), libc::EINVAL);
        assert_eq!(
            rtnl.link(a.index).unwrap().mtu,
            1460,
            "refused changes leave the MTU alone"
        );
        rtnl.set_mtu(a.index, max).unwrap();
        assert_eq!(rtnl.link(a.index).unwrap().mtu, max);
    });
}

/// Reads monitor events until `want` events arrived or 5 s passed (1 s when
/// none are wanted).
fn collect_events(monitor: &mut LinkMonitor, want: usize) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    let wait = if want == 0 {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let deadline = std::time::Instant::now() + wait;
    while events.len() < want.max(1) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || !wait_readable(&monitor, left) {
            break;
        }
        events.extend(monitor.read_events().unwrap());
    }
    // Anything that follows within a moment is a duplicate we must not see.
    if wait_readable(&monitor, Duration::from_millis(300)) {
        events.extend(monitor.read_events().unwrap());
    }
    events
}

#[test]
fn link_monitor_reports_carrier_transitions_once() {
    run_in_netns(BOUND, || {
        let mut rtnl = Rtnl::open().unwrap();
        veth_pair("veth0", "veth1");
        let a = rtnl.link_by_name("veth0").unwrap().index;
        let b = rtnl.link_by_name("veth1").unwrap().index;
        rtnl.set_link_up(a).unwrap();

        let mut monitor = LinkMonitor::open(a).unwrap();
        assert!(!monitor.carrier());
        rtnl.set_link_up(b).unwrap();
        assert_eq!(collect_events(&mut monitor, 1), vec![LinkEvent::CarrierUp]);
        assert!(monitor.carrier());

        ip(&["link", "set", "veth1", "down"]);
        assert_eq!(collect_events(&mut monitor, 1), vec![LinkEvent::CarrierDown]);
        ip(&["link", "set", "veth1", "up"]);
        assert_eq!(collect_events(&mut monitor, 1), vec![LinkEvent::CarrierUp]);

        // Notifications that do not change the carrier are not events.
        rtnl.set_mtu(a, 1400).unwrap();
        ip(&["link", "set", "veth1", "mtu", "1400"]);
        assert_eq!(collect_events(&mut monitor, 0), vec![]);

        // An inherited socket, not yet subscribed, works the same.
        let raw = Socket::new(NETLINK_ROUTE).unwrap().into_raw_fd();
        let mut inherited = LinkMonitor::from_raw_fd(raw, a).unwrap();
        assert!(inherited.carrier());
        ip(&["link", "set", "veth0", "down"]);
        assert_eq!(collect_events(&mut inherited, 1), vec![LinkEvent::CarrierDown]);
        assert_eq!(collect_events(&mut monitor, 1), vec![LinkEvent::CarrierDown]);

        // The link goes away: carrier down at most once, never an error.
        ip(&["link", "set", "veth0", "up"]);
        assert_eq!(collect_events(&mut monitor, 1), vec![LinkEvent::CarrierUp]);
        ip(&["link", "del", "veth0"]);
        assert_eq!(collect_events(&mut monitor, 1), vec![LinkEvent::CarrierDown]);

        assert_eq!(errno(&LinkMonitor::open(999_999).unwrap_err()), libc::ENODEV);
    });
}

#[test]
fn link_monitor_resyncs_after_lost_notifications() {
    run_in_netns(BOUND, || {
        let mut rtnl = Rtnl::open().unwrap();
        let a = link_up(&mut rtnl, "veth0");
        assert!(eventually(Duration::from_secs(5), || rtnl
            .link(a)
            .unwrap()
            .carrier));
        // A socket with the smallest receive buffer the kernel allows.
        let sock = Socket::new(NETLINK_ROUTE).unwrap();
        sock.set_rx_buf_sz(0usize).unwrap();
        let mut monitor = LinkMonitor::from_raw_fd(sock.into_raw_fd(), a).unwrap();
        assert!(monitor.carrier());
        // Unread notifications that change nothing fill the queue, so the
        // kernel drops the one that matters (ENOBUFS).
        for i in 0..40 {
            rtnl.set_mtu(a, 1300 + i).unwrap();
        }
        ip(&["link", "set", "veth0p", "down"]);
        let mut events = Vec::new();
        let found = eventually(Duration::from_secs(5), || {
            events.extend(monitor.read_events().unwrap());
            !monitor.carrier()
        });
        assert!(found, "carrier loss never learnt");
        assert_eq!(events, vec![LinkEvent::CarrierDown]);
    });
}

#[test]
fn inherited_descriptors_are_checked() {
    run_in_netns(BOUND, || {
        // A NETLINK_ROUTE socket is accepted and works.
        let raw = Socket::new(NETLINK_ROUTE).unwrap().into_raw_fd();
        let mut rtnl = Rtnl::from_raw_fd(raw).unwrap();
        assert_eq!(rtnl.link_by_name("lo").unwrap().index, 1);
        // A UDP socket, a standard stream and a closed number are not.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into_raw_fd();
        assert_eq!(
            Rtnl::from_raw_fd(udp).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            LinkMonitor::from_raw_fd(udp, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        // SAFETY: `udp` was released by into_raw_fd above and is closed once here.
        unsafe { libc::close(udp) };
        // A number nothing has open (far above any test's descriptors).
        assert_eq!(errno(&Rtnl::from_raw_fd(999_999).unwrap_err()), libc::EBADF);
        assert_eq!(
            Rtnl::from_raw_fd(1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        // NETLINK_GENERIC is the wrong protocol.
        let generic = Socket::new(netlink_sys::protocols::NETLINK_GENERIC)
            .unwrap()
            .into_raw_fd();
        assert_eq!(
            Rtnl::from_raw_fd(generic).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        // SAFETY: `generic` was released by into_raw_fd and is closed once here.
        unsafe { libc::close(generic) };
    });
}
