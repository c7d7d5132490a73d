//! Packet socket tests on a veth pair in a network namespace of its own (see
//! `mirage_testkit::netns::run_in_netns`): what the kernel filter lets
//! through, the checksum offload mark, truncation, and descriptor adoption.
//! Need root; CI runs as root and installs ethtool.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::time::Duration;

use mirage_ipc::MAX_FRAME_LEN;
use mirage_sdk::netlink::Rtnl;
use mirage_sdk::packet::{PacketSocket, Received};
use mirage_testkit::cmd::{ip, run_ok as run};
use mirage_testkit::netns::{run_in_netns, veth_pair};
use mirage_testkit::wait::wait_readable;

const BOUND: Duration = Duration::from_secs(30);
const BROADCAST: [u8; 6] = [0xff; 6];

/// A link's index and MAC.
struct Link {
    index: u32,
    mac: [u8; 6],
}

/// veth0 (the client side) and veth1 (the peer), both up with carrier.
fn setup() -> (Link, Link) {
    veth_pair("veth0", "veth1");
    // No IPv6 chatter (router solicitations, MLD) in the way.
    for dev in ["veth0", "veth1"] {
        run(
            "sysctl",
            &["-q", "-w", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")],
        );
    }
    let mut rtnl = Rtnl::open().unwrap();
    let mut link = |name: &str| {
        let info = rtnl.link_by_name(name).unwrap();
        rtnl.set_link_up(info.index).unwrap();
        Link {
            index: info.index,
            mac: info.mac.unwrap(),
        }
    };
    let (a, b) = (link("veth0"), link("veth1"));
    assert!(mirage_testkit::wait::eventually(Duration::from_secs(5), || rtnl
        .link(a.index)
        .unwrap()
        .carrier));
    (a, b)
}

/// Receives one frame within `timeout`, or `None`.
fn recv_within(sock: &PacketSocket, timeout: Duration) -> Option<(Vec<u8>, Received)> {
    if !wait_readable(sock, timeout) {
        return None;
    }
    let mut buf = vec![0u8; 4096];
    let got = sock.recv(&mut buf).unwrap();
    buf.truncate(got.len);
    Some((buf, got))
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 (+ UDP when `proto` is 17) broadcast frame from `src`.
/// `frag` is the IPv4 flags/fragment-offset field.
fn ipv4_frame(src: [u8; 6], proto: u8, frag: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = BROADCAST.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0x12, 0x34]);
    iph.extend_from_slice(&frag.to_be_bytes());
    iph.extend_from_slice(&[64, proto, 0, 0, 192, 0, 2, 1, 255, 255, 255, 255]);
    let sum = ipv4_checksum(&iph);
    iph[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(payload);
    f
}

fn arp_frame(src: [u8; 6]) -> Vec<u8> {
    let mut f = BROADCAST.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 7]);
    f.resize(60, 0);
    f
}

#[test]
fn filter_passes_only_udp_68_and_arp_on_request() {
    run_in_netns(BOUND, || {
        let (client, peer) = setup();
        let sock = PacketSocket::open(client.index, false).unwrap();
        let with_arp = PacketSocket::open(client.index, true).unwrap();
        let injector = PacketSocket::open(peer.index, false).unwrap();

        let unwanted = [
            ipv4_frame(peer.mac, 17, 0, 53, b"dns"),
            ipv4_frame(peer.mac, 17, 0x2000, 68, b"first fragment"),
            ipv4_frame(peer.mac, 17, 0x00b9, 68, b"later fragment"),
            ipv4_frame(peer.mac, 6, 0, 68, b"tcp"),
            arp_frame(peer.mac),
        ];
        for frame in &unwanted {
            injector.send(frame).unwrap();
        }
        let wanted = ipv4_frame(peer.mac, 17, 0x4000, 68, b"sentinel dhcp");
        injector.send(&wanted).unwrap();

        // The first frame through is the sentinel, sent last: all the others
        // were dropped in the kernel.
        let (frame, got) = recv_within(&sock, Duration::from_secs(2)).expect("UDP 68 frame arrives");
        assert_eq!(frame, wanted);
        assert_eq!(
            got,
            Received {
                len: wanted.len(),
                checksum_offloaded: false,
                truncated: false
            }
        );
        assert!(recv_within(&sock, Duration::from_millis(200)).is_none());

        // With ARP on, the ARP frame comes first, then the sentinel.
        let (frame, _) = recv_within(&with_arp, Duration::from_secs(2)).expect("ARP arrives");
        assert_eq!(frame, arp_frame(peer.mac));
        let (frame, _) = recv_within(&with_arp, Duration::from_secs(2)).expect("UDP 68 arrives");
        assert_eq!(frame, wanted);
        assert!(recv_within(&with_arp, Duration::from_millis(200)).is_none());

        // Our own transmissions are not looped back to us; the peer gets them.
        let to_peer = ipv4_frame(client.mac, 17, 0, 68, b"from the client");
        sock.send(&to_peer).unwrap();
        let (frame, _) = recv_within(&injector, Duration::from_secs(2)).expect("peer receives");
        assert_eq!(frame, to_peer);
        assert!(recv_within(&sock, Duration::from_millis(200)).is_none());
    });
}

#[test]
fn long_frames_are_cut_at_the_snap_length() {
    run_in_netns(BOUND, || {
        let (client, peer) = setup();
        for dev in ["veth0", "veth1"] {
            ip(&["link", "set", dev, "mtu", "3000"]);
        }
        let sock = PacketSocket::open(client.index, false).unwrap();
        let injector = PacketSocket::open(peer.index, false).unwrap();
        let big = ipv4_frame(peer.mac, 17, 0, 68, &[0xab; 2000]);
        injector.send(&big).unwrap();
        let (frame, got) = recv_within(&sock, Duration::from_secs(2)).expect("frame arrives");
        assert!(got.truncated);
        assert_eq!(got.len, MAX_FRAME_LEN);
        assert_eq!(frame, big[..MAX_FRAME_LEN]);

        // A caller buffer shorter than the frame also reports truncation.
        let small = ipv4_frame(peer.mac, 17, 0, 68, &[0xcd; 200]);
        injector.send(&small).unwrap();
        assert!(wait_readable(&sock, Duration::from_secs(2)));
        let mut buf = [0u8; 100];
        let got = sock.recv(&mut buf).unwrap();
        assert_eq!((got.len, got.truncated), (100, true));
        assert_eq!(buf[..], small[..100]);
    });
}

#[test]
fn checksum_offload_mark_follows_tx_checksumming() {
    run_in_netns(BOUND, || {
        let (client, _peer) = setup();
        ip(&["addr", "add", "192.0.2.2/24", "dev", "veth1"]);
        let sock = PacketSocket::open(client.index, false).unwrap();
        let udp = UdpSocket::bind("192.0.2.2:0").unwrap();
        udp.set_broadcast(true).unwrap();
        let send_and_receive = |payload: &[u8]| {
            udp.send_to(payload, (Ipv4Addr::new(192, 0, 2, 255), 68)).unwrap();
            let (frame, got) = recv_within(&sock, Duration::from_secs(2)).expect("datagram arrives");
            assert_eq!(&frame[frame.len() - payload.len()..], payload);
            assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), 68);
            (frame, got)
        };

        // veth offers tx checksumming by default: the datagram crosses with
        // its checksum unfinished, and the kernel says so.
        let (_, got) = send_and_receive(b"offloaded");
        assert!(got.checksum_offloaded, "{got:?}");

        run("ethtool", &["-K", "veth1", "tx", "off"]);
        let (frame, got) = send_and_receive(b"computed");
        assert!(!got.checksum_offloaded, "{got:?}");
        assert_ne!(
            u16::from_be_bytes([frame[40], frame[41]]),
            0,
            "checksum filled in by the stack"
        );
    });
}

#[test]
fn bad_arguments_and_inherited_descriptors() {
    run_in_netns(BOUND, || {
        let (client, peer) = setup();
        assert_eq!(
            PacketSocket::open(0, false).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            PacketSocket::open(u32::MAX, false).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let e = PacketSocket::open(999_999, false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");

        // A socket handed over by number keeps working.
        let raw = OwnedFd::from(PacketSocket::open(client.index, false).unwrap()).into_raw_fd();
        let adopted = PacketSocket::from_raw_fd(raw).unwrap();
        let injector = PacketSocket::open(peer.index, false).unwrap();
        let frame = ipv4_frame(peer.mac, 17, 0, 68, b"adopted");
        injector.send(&frame).unwrap();
        assert_eq!(recv_within(&adopted, Duration::from_secs(2)).unwrap().0, frame);
        let owned = OwnedFd::from(adopted);
        assert!(PacketSocket::from_fd(owned).is_ok());

        // Anything else is refused.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_raw = udp.into_raw_fd();
        assert_eq!(
            PacketSocket::from_raw_fd(udp_raw).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        // SAFETY: `udp_raw` came from into_raw_fd above and is taken back once.
        let udp_owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(udp_raw) };
        assert_eq!(
            PacketSocket::from_fd(udp_owned).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            PacketSocket::from_raw_fd(2).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        // A number nothing has open (far above any test's descriptors).
        assert_eq!(
            PacketSocket::from_raw_fd(999_999).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    });
}
