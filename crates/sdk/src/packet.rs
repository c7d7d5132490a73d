//! The network role's link-layer socket and its outbound frame policy.
//!
//! [`PacketSocket`] is an `AF_PACKET`/`SOCK_RAW` socket bound to one
//! interface. A classic BPF filter, attached before the socket is bound,
//! makes the kernel drop everything except what a DHCPv4 client needs:
//! unfragmented IPv4/UDP to port 68 and, on request, ARP (for RFC 5227
//! conflict detection). The network role never parses what it receives; it
//! forwards whole frames, with the kernel's checksum-offload mark, to the
//! engine.
//!
//! [`check_outbound`] is the network role's last line of defence against a
//! compromised engine: only what a DHCP client sends as us leaves the host
//! (our MAC, chaddr and client identifier; RFC 5227 probes and our own
//! announcements; from 0.0.0.0 or our address in force, to broadcast or our
//! server), and [`RateCap`] bounds how fast.
//!
//! Syscalls: `open` makes socket, setsockopt (SO_ATTACH_FILTER,
//! SO_LOCK_FILTER, PACKET_AUXDATA, PACKET_IGNORE_OUTGOING), recvfrom (drain),
//! bind. `from_raw_fd`/`from_fd` make getsockopt. The hot path is only
//! `recvmsg` ([`PacketSocket::recv`]) and `sendto` without an address
//! ([`PacketSocket::send`]; the libc's `send` is sendto with a null address,
//! in glibc and musl alike), so the network role's seccomp list can refuse
//! every link-layer address: the bound interface is the only way out.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use mirage_ipc::MAX_FRAME_LEN;

/// Ethertype of IPv4 (RFC 894).
const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of ARP (RFC 826).
const ETHERTYPE_ARP: u16 = 0x0806;
/// `ETH_P_ALL`: bind for every protocol; the BPF filter does the selection.
const ETH_P_ALL: u16 = 0x0003;
/// IP protocol number of UDP.
const IPPROTO_UDP: u8 = 17;
/// BOOTP/DHCP client and server ports (RFC 2131 section 4.1).
const DHCP_CLIENT_PORT: u16 = 68;
const DHCP_SERVER_PORT: u16 = 67;
/// `sll_pkttype` of frames we sent ourselves (linux/if_packet.h).
const PACKET_OUTGOING: u32 = 4;
/// Ethernet header, ARP for IPv4 over Ethernet: 14 + 28 bytes.
const MIN_FRAME_LEN: usize = 42;
/// Shortest Ethernet frame on the wire without FCS: shorter frames are padded.
const ETH_MIN_FRAME_LEN: usize = 60;
const ETH_HEADER_LEN: usize = 14;

/// What [`PacketSocket::recv`] learnt about one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the caller's buffer.
    pub len: usize,
    /// The kernel marked the frame `TP_STATUS_CSUMNOTREADY`: it was made on
    /// this host (veth, virtio, tap peers) with checksum offload, and its UDP
    /// checksum field holds only the pseudo-header sum. It must not be
    /// verified (field note 9).
    pub checksum_offloaded: bool,
    /// The frame was longer than what we got: cut at the filter's snap
    /// length ([`MAX_FRAME_LEN`]) or at the end of the caller's buffer.
    pub truncated: bool,
}

/// An `AF_PACKET` socket bound to one interface, filtered in the kernel.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a packet socket on interface `ifindex` that receives only
    /// unfragmented IPv4/UDP frames to port 68 and, if `with_arp`, ARP.
    ///
    /// The socket is created with protocol 0 (it receives nothing), gets its
    /// filter, is drained, and only then bound with `ETH_P_ALL`, so no
    /// unfiltered frame is ever queued. The filter is locked
    /// (`SO_LOCK_FILTER`): a compromised network role cannot widen it.
    /// Needs `CAP_NET_RAW`.
    pub fn open(ifindex: u32, with_arp: bool) -> io::Result<PacketSocket> {
        Self::open_filtered(ifindex, filter_program(with_arp))
    }

    /// The server-side twin of [`PacketSocket::open`], for test DHCP servers
    /// that craft their own replies: receives unfragmented IPv4/UDP to port
    /// 67 and ARP, with the same locked filter, auxdata and own-traffic
    /// suppression. Needs `CAP_NET_RAW`.
    ///
    /// Its frames bypass the device's queueing discipline
    /// (`PACKET_QDISC_BYPASS`): a test brings the client's end of a veth
    /// pair up just before the exchange, and the kernel attaches the
    /// server end's queue only when its link watcher gets round to the
    /// carrier change (up to a second later on a busy machine). Until then
    /// the placeholder queue drops every frame while `send` reports
    /// success, and a test that counts what the client did with each frame
    /// would count frames that never left.
    pub fn open_server(ifindex: u32) -> io::Result<PacketSocket> {
        let sock = Self::open_filtered(ifindex, filter_program_for(DHCP_SERVER_PORT, true))?;
        setsockopt(
            sock.fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &1i32,
        )?;
        Ok(sock)
    }

    fn open_filtered(ifindex: u32, mut program: Vec<libc::sock_filter>) -> io::Result<PacketSocket> {
        let ifindex = i32::try_from(ifindex)
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range"))?;
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        setsockopt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
        setsockopt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_LOCK_FILTER, &1i32)?;
        drain(fd.as_fd());
        setsockopt(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_AUXDATA, &1i32)?;
        // Kernel >= 4.20 stops looping our own transmissions back to us; older
        // kernels do not know the option, and the filter drops them anyway.
        match setsockopt(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32) {
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
            other => other?,
        }
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ETH_P_ALL.to_be(),
            sll_ifindex: ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `addr` is a live sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Takes over an inherited descriptor after checking that it is an
    /// `AF_PACKET`/`SOCK_RAW` socket. Roles find their socket at a fixed fd
    /// number; call this once per number, at start, before anything else in
    /// the process could use that number (the returned value closes it).
    pub fn from_raw_fd(fd: RawFd) -> io::Result<PacketSocket> {
        adopt_socket(fd, libc::AF_PACKET, libc::SOCK_RAW, None).map(|fd| PacketSocket { fd })
    }

    /// Like [`PacketSocket::from_raw_fd`], for a descriptor already owned.
    pub fn from_fd(fd: OwnedFd) -> io::Result<PacketSocket> {
        check_socket(fd.as_fd(), libc::AF_PACKET, libc::SOCK_RAW, None)?;
        Ok(PacketSocket { fd })
    }

    /// Receives one frame into `buf` (blocking unless the descriptor is
    /// non-blocking). A buffer of [`MAX_FRAME_LEN`] bytes always suffices.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one cmsghdr plus tpacket_auxdata, with slack.
        let mut control = [0u8; 128];
        // SAFETY: msghdr is a plain C struct for which all-zero is valid.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: `msg` points at `iov` (covering `buf`) and `control`, all
        // live and exclusively borrowed for the duration of the call.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = (n as usize).min(buf.len());
        let controllen = (msg.msg_controllen as usize).min(control.len());
        let aux = parse_auxdata(&control[..controllen]);
        let cut_by_filter = aux.is_some_and(|a| a.len > a.snaplen);
        Ok(Received {
            len,
            checksum_offloaded: aux.is_some_and(|a| a.status & libc::TP_STATUS_CSUMNOTREADY != 0),
            truncated: msg.msg_flags & libc::MSG_TRUNC != 0 || cut_by_filter,
        })
    }

    /// Sends one whole Ethernet frame out of the bound interface. Callers in
    /// the network role run [`check_outbound`] first.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `frame`, borrowed for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "frame sent only in part",
            ));
        }
        Ok(())
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<PacketSocket> for OwnedFd {
    fn from(sock: PacketSocket) -> OwnedFd {
        sock.fd
    }
}

/// One BPF instruction.
const fn insn(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Offset for a conditional jump from instruction `from` to `to`: classic BPF
/// jumps count instructions after the next one.
const fn hop(from: usize, to: usize) -> u8 {
    (to - from - 1) as u8
}

/// The classic BPF program attached to every [`PacketSocket`]. Returns the
/// number of bytes to keep (the snap length) or 0 to drop.
///
/// Layout (offsets into the Ethernet frame): ethertype at 12; IPv4 protocol at
/// 23, flags and fragment offset at 20, version/IHL at 14; the UDP header at
/// 14 + 4 * IHL, its destination port 2 bytes in (RFC 791, RFC 768).
pub(crate) fn filter_program(with_arp: bool) -> Vec<libc::sock_filter> {
    filter_program_for(DHCP_CLIENT_PORT, with_arp)
}

/// [`filter_program`] for UDP to `port` (68 for clients, 67 for servers).
fn filter_program_for(port: u16, with_arp: bool) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX, BPF_MSH, BPF_RET,
    };
    const ARP: usize = 11;
    const ACCEPT: usize = 12;
    const DROP: usize = 13;
    // Ancillary load of skb->pkt_type: drops our own transmissions even on
    // kernels without PACKET_IGNORE_OUTGOING.
    let pkttype = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
    let arp_target = if with_arp { ACCEPT } else { DROP };
    vec![
        /* 0 */ insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, pkttype),
        /* 1 */ insn(BPF_JMP | BPF_JEQ | BPF_K, hop(1, DROP), 0, PACKET_OUTGOING),
        /* 2 */ insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, 12),
        /* 3 */
        insn(
            BPF_JMP | BPF_JEQ | BPF_K,
            0,
            hop(3, ARP),
            u32::from(ETHERTYPE_IPV4),
        ),
        /* 4 */ insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, 23),
        /* 5 */ insn(BPF_JMP | BPF_JEQ | BPF_K, 0, hop(5, DROP), u32::from(IPPROTO_UDP)),
        // MF flag (0x2000) or any fragment offset (0x1fff): not a whole datagram.
        /* 6 */
        insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, 20),
        /* 7 */ insn(BPF_JMP | BPF_JSET | BPF_K, hop(7, DROP), 0, 0x3fff),
        // X = 4 * (frame[14] & 0xf): the IPv4 header length.
        /* 8 */
        insn(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 14),
        /* 9 */ insn(BPF_LD | BPF_H | BPF_IND, 0, 0, (ETH_HEADER_LEN + 2) as u32),
        /* 10 */
        insn(
            BPF_JMP | BPF_JEQ | BPF_K,
            hop(10, ACCEPT),
            hop(10, DROP),
            u32::from(port),
        ),
        /* 11 */
        insn(
            BPF_JMP | BPF_JEQ | BPF_K,
            hop(ARP, arp_target),
            hop(ARP, DROP),
            u32::from(ETHERTYPE_ARP),
        ),
        /* 12 */ insn(BPF_RET | BPF_K, 0, 0, MAX_FRAME_LEN as u32),
        /* 13 */ insn(BPF_RET | BPF_K, 0, 0, 0),
    ]
}

/// Discards whatever the socket queued before its filter was in place.
/// Bounded, so a flood cannot keep us here.
fn drain(fd: BorrowedFd<'_>) {
    for _ in 0..4096 {
        // SAFETY: a zero-length receive with a null buffer only dequeues.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            break;
        }
    }
}

/// The fields of `struct tpacket_auxdata` we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AuxData {
    status: u32,
    len: u32,
    snaplen: u32,
}

/// Finds the `PACKET_AUXDATA` control message in a `recvmsg` control buffer,
/// reading bytes rather than casting pointers (no alignment assumptions).
fn parse_auxdata(control: &[u8]) -> Option<AuxData> {
    const WORD: usize = mem::size_of::<usize>();
    let align = |n: usize| n.checked_add(WORD - 1).map(|v| v & !(WORD - 1));
    let header = mem::size_of::<libc::cmsghdr>();
    let data_start = align(header)?;
    let mut off = 0usize;
    while off.checked_add(header)? <= control.len() {
        let cmsg = &control[off..];
        let cmsg_len = usize::from_ne_bytes(cmsg[..WORD].try_into().ok()?);
        if cmsg_len < header || cmsg_len > cmsg.len() {
            return None;
        }
        let level = i32::from_ne_bytes(cmsg[WORD..WORD + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(cmsg[WORD + 4..WORD + 8].try_into().ok()?);
        if level == libc::SOL_PACKET && kind == libc::PACKET_AUXDATA && cmsg_len >= data_start + 12 {
            let data = &cmsg[data_start..cmsg_len];
            let word = |i: usize| u32::from_ne_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
            return Some(AuxData {
                status: word(0),
                len: word(4),
                snaplen: word(8),
            });
        }
        off = off.checked_add(align(cmsg_len)?)?;
    }
    None
}

/// `setsockopt` with a typed value.
pub(crate) fn setsockopt<T>(fd: BorrowedFd<'_>, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` and the length passed is exactly its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `getsockopt` for an `int` option.
fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals; the kernel writes at most `len` bytes.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut value).cast(), &raw mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Checks that `fd` is a socket of the given domain, type and (if given)
/// protocol; anything else is `InvalidInput`.
pub(crate) fn check_socket(
    fd: BorrowedFd<'_>,
    domain: i32,
    ty: i32,
    protocol: Option<i32>,
) -> io::Result<()> {
    let wrong = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor is not {what}"));
    if getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)? != domain {
        return Err(wrong("of the expected socket domain"));
    }
    if getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)? != ty {
        return Err(wrong("of the expected socket type"));
    }
    if let Some(protocol) = protocol
        && getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)? != protocol
    {
        return Err(wrong("of the expected protocol"));
    }
    Ok(())
}

/// Takes ownership of an inherited descriptor number once it is proved to be
/// an open socket of the expected kind. Standard streams are refused.
pub(crate) fn adopt_socket(fd: RawFd, domain: i32, ty: i32, protocol: Option<i32>) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing a standard stream descriptor",
        ));
    }
    // SAFETY: only borrowed for the checks below; getsockopt fails with EBADF
    // if the number is not open, and nothing is closed on failure.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    check_socket(borrowed, domain, ty, protocol)?;
    // SAFETY: `fd` is open (checked above) and, per the callers' documented
    // contract, an inherited number that no other owner in this process holds.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Why [`check_outbound`] refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutboundRefusal {
    /// Under 42 bytes (Ethernet + ARP).
    TooShort,
    /// Over [`MAX_FRAME_LEN`] bytes.
    TooLong,
    /// Ethernet source address is not our MAC.
    ForeignSourceMac,
    /// Neither IPv4 nor ARP (VLAN tags included).
    BadEthertype,
    /// Ethernet destination is multicast, or not broadcast where the
    /// message must be (ARP, IPv4 to 255.255.255.255).
    BadDestinationMac,
    /// ARP that is not Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4).
    BadArpFormat,
    /// ARP opcode other than request (1) or reply (2).
    BadArpOp,
    /// An ARP reply: the kernel answers for the address in force itself;
    /// from us, a reply can only claim someone else's.
    ArpReply,
    /// ARP sender hardware address is not our MAC.
    ForeignArpSender,
    /// ARP sender IP neither 0.0.0.0 (probe) nor our address in force.
    ForeignArpSenderIp,
    /// ARP target not what a probe (a unicast address, target MAC zero) or an
    /// announcement (target IP = sender IP) names.
    BadArpTarget,
    /// ARP frame longer than the Ethernet minimum (trailing data).
    ArpTrailingData,
    /// IPv4 version field is not 4.
    BadIpVersion,
    /// IPv4 header length under 20 bytes or past the frame.
    BadIpHeaderLength,
    /// IPv4 options (source routing and the like); a client sends none.
    IpOptions,
    /// IPv4 total length or UDP length disagrees with the frame.
    BadLength,
    /// IPv4 fragment (MF set or non-zero offset).
    Fragment,
    /// IP protocol other than UDP.
    NotUdp,
    /// UDP source port is not 68.
    BadSourcePort,
    /// UDP destination port is not 67.
    BadDestinationPort,
    /// IPv4 source neither 0.0.0.0 nor our address in force, or not the
    /// message's ciaddr.
    ForeignSourceIp,
    /// IPv4 destination neither the limited broadcast nor the server of the
    /// lease in force (unicast needs an address of our own).
    ForeignDestinationIp,
    /// Not a BOOTREQUEST for Ethernet (op 1, htype 1, hlen 6, hops 0, magic
    /// cookie) or shorter than a DHCP message.
    NotBootRequest,
    /// yiaddr, siaddr or giaddr set: a client sets none (a giaddr would send
    /// the server's answer to another host).
    ServerFieldSet,
    /// chaddr is not our MAC (zero-padded).
    ForeignChaddr,
    /// Options malformed, without an end, repeated (53, 50, 54, 61), or ones
    /// a client never sends (52 overload, 82 relay agent information).
    BadOptions,
    /// Option 53 missing or not DISCOVER, REQUEST, DECLINE, RELEASE, INFORM.
    NotClientMessage,
    /// Option 61 missing or not our client identifier.
    ForeignClientId,
    /// ciaddr not what the message type carries (RFC 2131 table 5): 0 for
    /// DISCOVER and DECLINE, our address in force for RELEASE and INFORM.
    BadCiaddr,
    /// DECLINE of an address no reply to us offered, or RELEASE with
    /// option 50.
    BadRequestedAddress,
}

impl OutboundRefusal {
    /// Short stable text for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutboundRefusal::TooShort => "frame too short",
            OutboundRefusal::TooLong => "frame too long",
            OutboundRefusal::ForeignSourceMac => "source MAC is not ours",
            OutboundRefusal::BadEthertype => "ethertype is neither IPv4 nor ARP",
            OutboundRefusal::BadDestinationMac => "bad destination MAC",
            OutboundRefusal::BadArpFormat => "ARP is not Ethernet/IPv4",
            OutboundRefusal::BadArpOp => "ARP opcode is not request or reply",
            OutboundRefusal::ArpReply => "ARP reply",
            OutboundRefusal::ForeignArpSender => "ARP sender MAC is not ours",
            OutboundRefusal::ForeignArpSenderIp => "ARP sender IP is neither 0.0.0.0 nor our address",
            OutboundRefusal::BadArpTarget => "ARP target is neither a probe's nor an announcement's",
            OutboundRefusal::ArpTrailingData => "ARP frame has trailing data",
            OutboundRefusal::BadIpVersion => "IP version is not 4",
            OutboundRefusal::BadIpHeaderLength => "bad IPv4 header length",
            OutboundRefusal::IpOptions => "IPv4 options",
            OutboundRefusal::BadLength => "IPv4 or UDP length disagrees with the frame",
            OutboundRefusal::Fragment => "IPv4 fragment",
            OutboundRefusal::NotUdp => "IP protocol is not UDP",
            OutboundRefusal::BadSourcePort => "UDP source port is not 68",
            OutboundRefusal::BadDestinationPort => "UDP destination port is not 67",
            OutboundRefusal::ForeignSourceIp => "source IP is neither 0.0.0.0 nor our address",
            OutboundRefusal::ForeignDestinationIp => "destination IP is neither broadcast nor our server",
            OutboundRefusal::NotBootRequest => "not a BOOTREQUEST",
            OutboundRefusal::ServerFieldSet => "yiaddr, siaddr or giaddr set",
            OutboundRefusal::ForeignChaddr => "chaddr is not our MAC",
            OutboundRefusal::BadOptions => "bad DHCP options",
            OutboundRefusal::NotClientMessage => "not a DHCP client message type",
            OutboundRefusal::ForeignClientId => "client identifier is not ours",
            OutboundRefusal::BadCiaddr => "ciaddr does not fit the message type",
            OutboundRefusal::BadRequestedAddress => "requested address not offered to us",
        }
    }
}

impl std::fmt::Display for OutboundRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for OutboundRefusal {}

fn be16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

fn ipv4_at(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// BOOTP fixed header (236 bytes) and the magic cookie (RFC 2131 section 3).
const BOOTP_HEADER_LEN: usize = 236;
const DHCP_MIN_LEN: usize = BOOTP_HEADER_LEN + 4;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// What the network role knows when it checks a frame: its fixed identity
/// (from its arguments) and the state the supervisor told it from what the
/// actuator applied. Nothing here comes from the engine's word.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// The interface's MAC: Ethernet source, ARP sender, chaddr.
    pub mac: [u8; 6],
    /// Option 61 exactly as the engine is configured to send it.
    pub client_id: Vec<u8>,
    /// Our address in force and the server that granted it.
    pub bound: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Addresses that replies to our chaddr offered (seen by the network
    /// role on the way in, [`offered_address`]): what a DECLINE may name.
    pub offered: Vec<Ipv4Addr>,
}

impl OutboundPolicy {
    fn our_address(&self) -> Option<Ipv4Addr> {
        self.bound.map(|(a, _)| a)
    }
}

/// Decides whether the engine may send `frame`. Only what a DHCP client
/// sends as us passes (DESIGN.md section 3):
/// - ARP requests (RFC 826) from our MAC, broadcast: RFC 5227 probes (sender
///   IP 0.0.0.0, target MAC zero) and announcements or defences (sender IP =
///   target IP = our address in force). Never replies.
/// - DHCP client messages (RFC 2131 section 4.1: IPv4 without options, UDP
///   68 -> 67): a BOOTREQUEST with our chaddr and client identifier, type
///   DISCOVER, REQUEST, DECLINE, RELEASE or INFORM, ciaddr and IP source
///   per RFC 2131 table 5 (0.0.0.0, or our address in force), to the
///   limited broadcast or, from our address, to the lease's server
///   (RENEWING, RELEASE: 4.4.5, 4.4.6); a DECLINE names an offered address.
///
/// Pure and panic-free for any input.
pub fn check_outbound(frame: &[u8], policy: &OutboundPolicy) -> Result<(), OutboundRefusal> {
    if frame.len() < MIN_FRAME_LEN {
        return Err(OutboundRefusal::TooShort);
    }
    if frame.len() > MAX_FRAME_LEN {
        return Err(OutboundRefusal::TooLong);
    }
    if frame[6..12] != policy.mac {
        return Err(OutboundRefusal::ForeignSourceMac);
    }
    let dst_mac = &frame[..6];
    // Group bit: multicast reaches hosts that asked nothing.
    if dst_mac[0] & 1 != 0 && dst_mac != BROADCAST_MAC {
        return Err(OutboundRefusal::BadDestinationMac);
    }
    match be16(frame, 12) {
        ETHERTYPE_ARP => check_arp(&frame[ETH_HEADER_LEN..], frame.len(), policy, dst_mac),
        ETHERTYPE_IPV4 => check_ipv4(&frame[ETH_HEADER_LEN..], frame.len(), policy, dst_mac),
        _ => Err(OutboundRefusal::BadEthertype),
    }
}

/// `arp` holds at least 28 bytes (the frame is at least 42).
fn check_arp(
    arp: &[u8],
    frame_len: usize,
    policy: &OutboundPolicy,
    dst_mac: &[u8],
) -> Result<(), OutboundRefusal> {
    if be16(arp, 0) != 1 || be16(arp, 2) != ETHERTYPE_IPV4 || arp[4] != 6 || arp[5] != 4 {
        return Err(OutboundRefusal::BadArpFormat);
    }
    match be16(arp, 6) {
        1 => {}
        2 => return Err(OutboundRefusal::ArpReply),
        _ => return Err(OutboundRefusal::BadArpOp),
    }
    if arp[8..14] != policy.mac {
        return Err(OutboundRefusal::ForeignArpSender);
    }
    // Padding up to the 60-byte Ethernet minimum is normal; more is a covert
    // channel.
    if frame_len > ETH_MIN_FRAME_LEN {
        return Err(OutboundRefusal::ArpTrailingData);
    }
    // RFC 5227 2.1.1 and 2.3: probes and announcements are broadcast.
    if dst_mac != BROADCAST_MAC {
        return Err(OutboundRefusal::BadDestinationMac);
    }
    let sender = ipv4_at(arp, 14);
    let target = ipv4_at(arp, 24);
    if sender.is_unspecified() {
        // A probe: it claims nothing, so it may ask about any unicast
        // address (the engine probes what a server offered).
        if arp[18..24] != [0; 6] || mirage_ipc::unicast_refusal(target).is_some() {
            return Err(OutboundRefusal::BadArpTarget);
        }
        return Ok(());
    }
    if Some(sender) != policy.our_address() {
        return Err(OutboundRefusal::ForeignArpSenderIp);
    }
    // Resolving neighbours is the kernel's job, not the engine's.
    if target != sender {
        return Err(OutboundRefusal::BadArpTarget);
    }
    Ok(())
}

/// `ip` is the frame after the Ethernet header (at least 28 bytes).
fn check_ipv4(
    ip: &[u8],
    frame_len: usize,
    policy: &OutboundPolicy,
    dst_mac: &[u8],
) -> Result<(), OutboundRefusal> {
    if ip[0] >> 4 != 4 {
        return Err(OutboundRefusal::BadIpVersion);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ihl + 8 > ip.len() {
        return Err(OutboundRefusal::BadIpHeaderLength);
    }
    if ihl != 20 {
        return Err(OutboundRefusal::IpOptions);
    }
    let total = usize::from(be16(ip, 2));
    // The datagram fills the frame exactly, except for padding of frames
    // shorter than the Ethernet minimum.
    let fits = total >= ihl + 8
        && (ETH_HEADER_LEN + total == frame_len
            || (frame_len == ETH_MIN_FRAME_LEN && ETH_HEADER_LEN + total < frame_len));
    if !fits {
        return Err(OutboundRefusal::BadLength);
    }
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(OutboundRefusal::Fragment);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(OutboundRefusal::NotUdp);
    }
    let udp = &ip[ihl..total];
    if usize::from(be16(udp, 4)) != udp.len() {
        return Err(OutboundRefusal::BadLength);
    }
    if be16(udp, 0) != DHCP_CLIENT_PORT {
        return Err(OutboundRefusal::BadSourcePort);
    }
    if be16(udp, 2) != DHCP_SERVER_PORT {
        return Err(OutboundRefusal::BadDestinationPort);
    }
    let (src, dst) = (ipv4_at(ip, 12), ipv4_at(ip, 16));
    let ours = policy.our_address();
    if !src.is_unspecified() && Some(src) != ours {
        return Err(OutboundRefusal::ForeignSourceIp);
    }
    if dst.is_broadcast() {
        if dst_mac != BROADCAST_MAC {
            return Err(OutboundRefusal::BadDestinationMac);
        }
    } else if src.is_unspecified() || policy.bound.map(|(_, server)| server) != Some(dst) {
        // The Ethernet destination of a unicast may be the server's or a
        // router's (a relayed server): only its IP is known to be right.
        return Err(OutboundRefusal::ForeignDestinationIp);
    }
    check_dhcp(&udp[8..], src, policy)
}

/// Option 53 values a client sends (RFC 2132 9.6).
const DHCPDISCOVER: u8 = 1;
const DHCPREQUEST: u8 = 3;
const DHCPDECLINE: u8 = 4;
const DHCPRELEASE: u8 = 7;
const DHCPINFORM: u8 = 8;

/// The options [`check_dhcp`] looks at.
#[derive(Default)]
struct ClientOptions<'a> {
    message_type: Option<u8>,
    client_id: Option<&'a [u8]>,
    requested: Option<&'a [u8]>,
    server_id: Option<&'a [u8]>,
}

/// Walks the options (RFC 2132 section 2). Each option we look at must
/// appear once: servers concatenate repeated ones (RFC 3396), which would
/// turn our client identifier into someone else's.
fn client_options(mut opts: &[u8]) -> Result<ClientOptions<'_>, OutboundRefusal> {
    let mut found = ClientOptions::default();
    loop {
        let (&code, rest) = opts.split_first().ok_or(OutboundRefusal::BadOptions)?;
        match code {
            0 => {
                opts = rest;
                continue;
            }
            255 => return Ok(found),
            _ => {}
        }
        let (&len, rest) = rest.split_first().ok_or(OutboundRefusal::BadOptions)?;
        let value = rest.get(..usize::from(len)).ok_or(OutboundRefusal::BadOptions)?;
        opts = &rest[usize::from(len)..];
        let slot = match code {
            53 if len == 1 => {
                if found.message_type.replace(value[0]).is_some() {
                    return Err(OutboundRefusal::BadOptions);
                }
                continue;
            }
            61 => &mut found.client_id,
            50 => &mut found.requested,
            54 => &mut found.server_id,
            // Overload would hide options in sname/file, out of this check's
            // sight; relay agent information is for relays (RFC 3046) and
            // servers may trust it.
            52 | 82 | 53 => return Err(OutboundRefusal::BadOptions),
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(OutboundRefusal::BadOptions);
        }
    }
}

/// `dhcp` is the UDP payload; `src` the IPv4 source, already 0.0.0.0 or
/// our address in force.
fn check_dhcp(dhcp: &[u8], src: Ipv4Addr, policy: &OutboundPolicy) -> Result<(), OutboundRefusal> {
    if dhcp.len() < DHCP_MIN_LEN
        || dhcp[0] != 1
        || dhcp[1] != 1
        || dhcp[2] != 6
        || dhcp[3] != 0
        || dhcp[BOOTP_HEADER_LEN..DHCP_MIN_LEN] != MAGIC_COOKIE
    {
        return Err(OutboundRefusal::NotBootRequest);
    }
    if dhcp[16..28] != [0; 12] {
        return Err(OutboundRefusal::ServerFieldSet);
    }
    if dhcp[28..34] != policy.mac || dhcp[34..44] != [0; 10] {
        return Err(OutboundRefusal::ForeignChaddr);
    }
    let opts = client_options(&dhcp[DHCP_MIN_LEN..])?;
    let kind = opts.message_type.ok_or(OutboundRefusal::NotClientMessage)?;
    if !matches!(
        kind,
        DHCPDISCOVER | DHCPREQUEST | DHCPDECLINE | DHCPRELEASE | DHCPINFORM
    ) {
        return Err(OutboundRefusal::NotClientMessage);
    }
    if opts.client_id != Some(&policy.client_id[..]) {
        return Err(OutboundRefusal::ForeignClientId);
    }
    // RFC 2131 table 5; the datagram comes from the address it names.
    let ciaddr = ipv4_at(dhcp, 12);
    let ciaddr_ok = match kind {
        DHCPDISCOVER | DHCPDECLINE => ciaddr.is_unspecified(),
        DHCPRELEASE | DHCPINFORM => !ciaddr.is_unspecified(),
        _ => true,
    };
    if !ciaddr_ok || (!ciaddr.is_unspecified() && Some(ciaddr) != policy.our_address()) {
        return Err(OutboundRefusal::BadCiaddr);
    }
    if ciaddr != src {
        return Err(OutboundRefusal::ForeignSourceIp);
    }
    match kind {
        // Servers act on a DECLINE by address (some abandon whatever lease
        // holds it, whoever its client): only an address offered to us.
        DHCPDECLINE => {
            let named = opts
                .requested
                .and_then(|r| <[u8; 4]>::try_from(r).ok())
                .map(Ipv4Addr::from);
            if !named.is_some_and(|a| policy.offered.contains(&a)) {
                return Err(OutboundRefusal::BadRequestedAddress);
            }
        }
        // RFC 2131 table 5: MUST NOT.
        DHCPRELEASE if opts.requested.is_some() => return Err(OutboundRefusal::BadRequestedAddress),
        _ => {}
    }
    let _ = opts.server_id;
    Ok(())
}

/// The address a DHCP reply to our chaddr offers (its yiaddr), read at fixed
/// offsets without decoding options: the network role remembers these so a
/// DECLINE may name them ([`OutboundPolicy::offered`]). `None` for anything
/// else. Pure and panic-free for any input.
pub fn offered_address(frame: &[u8], our_mac: [u8; 6]) -> Option<Ipv4Addr> {
    if frame.len() < ETH_HEADER_LEN + 20 || be16(frame, 12) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[ETH_HEADER_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != IPPROTO_UDP {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let dhcp = udp.get(8..8 + DHCP_MIN_LEN)?;
    if be16(udp, 0) != DHCP_SERVER_PORT || be16(udp, 2) != DHCP_CLIENT_PORT {
        return None;
    }
    if dhcp[0] != 2 || dhcp[1] != 1 || dhcp[2] != 6 || dhcp[28..34] != our_mac {
        return None;
    }
    let yiaddr = ipv4_at(dhcp, 16);
    mirage_ipc::unicast_refusal(yiaddr).is_none().then_some(yiaddr)
}

/// A token bucket: `burst` frames at once, then `per_second` on average.
/// Time is milliseconds of any monotonic clock, given by the caller.
#[derive(Clone, Debug)]
pub struct RateCap {
    per_second: u32,
    burst: u32,
    /// Tokens in thousandths, so refills of a few milliseconds count.
    milli_tokens: u64,
    last_ms: u64,
}

impl RateCap {
    /// Starts full.
    pub fn new(per_second: u32, burst: u32, now_ms: u64) -> RateCap {
        RateCap {
            per_second,
            burst,
            milli_tokens: u64::from(burst) * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(self.per_second)))
            .min(u64::from(self.burst) * 1000);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const CLIENT_ID: [u8; 7] = [1, 0x02, 0, 0, 0, 0, 0x01];
    const OURS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
    const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);

    fn unbound() -> OutboundPolicy {
        OutboundPolicy {
            mac: OUR_MAC,
            client_id: CLIENT_ID.to_vec(),
            bound: None,
            offered: vec![OFFERED],
        }
    }

    fn bound() -> OutboundPolicy {
        OutboundPolicy {
            bound: Some((OURS, SERVER)),
            ..unbound()
        }
    }

    /// An Ethernet/IPv4/UDP frame with `payload_len` bytes of payload.
    fn udp_frame(src_mac: [u8; 6], proto: u8, sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
        udp_with(src_mac, proto, sport, dport, &vec![0x5a; payload_len])
    }

    fn udp_with(src_mac: [u8; 6], proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
        ]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// A BOOTREQUEST of option-53 `kind` from us with `extra` options.
    fn dhcp_payload(kind: u8, ciaddr: Ipv4Addr, extra: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; BOOTP_HEADER_LEN];
        p[..4].copy_from_slice(&[1, 1, 6, 0]);
        p[12..16].copy_from_slice(&ciaddr.octets());
        p[28..34].copy_from_slice(&OUR_MAC);
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[53, 1, kind, 61, CLIENT_ID.len() as u8]);
        p.extend_from_slice(&CLIENT_ID);
        p.extend_from_slice(extra);
        p.push(255);
        p.resize(300, 0);
        p
    }

    /// `payload` from `src` to `dst` (Ethernet broadcast for the limited
    /// broadcast, else the server's MAC).
    fn dhcp_from(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut f = udp_with(OUR_MAC, IPPROTO_UDP, 68, 67, payload);
        f[26..30].copy_from_slice(&src.octets());
        f[30..34].copy_from_slice(&dst.octets());
        if !dst.is_broadcast() {
            f[..6].copy_from_slice(&OTHER_MAC);
        }
        f
    }

    fn dhcp_frame() -> Vec<u8> {
        dhcp_from(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            &dhcp_payload(DHCPDISCOVER, Ipv4Addr::UNSPECIFIED, &[]),
        )
    }

    /// The DHCP payload of a frame from `dhcp_frame` and friends.
    const DHCP_AT: usize = ETH_HEADER_LEN + 20 + 8;

    fn arp_frame(src_mac: [u8; 6], sender: [u8; 6], op: u16) -> Vec<u8> {
        arp_with(
            src_mac,
            sender,
            op,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(192, 0, 2, 7),
        )
    }

    fn arp_with(
        src_mac: [u8; 6],
        sender: [u8; 6],
        op: u16,
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
    ) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&sender);
        f.extend_from_slice(&sender_ip.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target_ip.octets());
        f
    }

    #[test]
    fn what_a_client_sends_passes() {
        let zero = Ipv4Addr::UNSPECIFIED;
        let b = Ipv4Addr::BROADCAST;
        let opt50 = |a: Ipv4Addr| {
            let o = a.octets();
            vec![50, 4, o[0], o[1], o[2], o[3]]
        };
        let opt54 = [54, 4, 192, 0, 2, 1];
        let both = |a| [opt50(a), opt54.to_vec()].concat();
        let shapes: Vec<(&str, Vec<u8>, OutboundPolicy)> = vec![
            ("DISCOVER", dhcp_frame(), unbound()),
            (
                "REQUEST while SELECTING",
                dhcp_from(zero, b, &dhcp_payload(DHCPREQUEST, zero, &both(OFFERED))),
                unbound(),
            ),
            (
                "REQUEST while INIT-REBOOT (any address may be asked for)",
                dhcp_from(zero, b, &dhcp_payload(DHCPREQUEST, zero, &opt50(OTHER))),
                unbound(),
            ),
            (
                "DECLINE of the offered address",
                dhcp_from(zero, b, &dhcp_payload(DHCPDECLINE, zero, &both(OFFERED))),
                unbound(),
            ),
            (
                "REQUEST while RENEWING",
                dhcp_from(OURS, SERVER, &dhcp_payload(DHCPREQUEST, OURS, &[])),
                bound(),
            ),
            (
                "REQUEST while REBINDING",
                dhcp_from(OURS, b, &dhcp_payload(DHCPREQUEST, OURS, &[])),
                bound(),
            ),
            (
                "RELEASE",
                dhcp_from(OURS, SERVER, &dhcp_payload(DHCPRELEASE, OURS, &opt54)),
                bound(),
            ),
            (
                "INFORM",
                dhcp_from(OURS, b, &dhcp_payload(DHCPINFORM, OURS, &[])),
                bound(),
            ),
            (
                "ARP probe",
                arp_with(OUR_MAC, OUR_MAC, 1, zero, OFFERED),
                unbound(),
            ),
            (
                "ARP announcement",
                arp_with(OUR_MAC, OUR_MAC, 1, OURS, OURS),
                bound(),
            ),
        ];
        for (name, frame, policy) in shapes {
            assert_eq!(check_outbound(&frame, &policy), Ok(()), "{name}");
        }
        // ARP padded to the Ethernet minimum is still fine.
        let mut padded = arp_with(OUR_MAC, OUR_MAC, 1, zero, OFFERED);
        padded.resize(ETH_MIN_FRAME_LEN, 0);
        assert_eq!(check_outbound(&padded, &unbound()), Ok(()));
        // Don't-fragment is not a fragment.
        let mut df = dhcp_frame();
        df[20] = 0x40;
        assert_eq!(check_outbound(&df, &unbound()), Ok(()));
    }

    #[test]
    fn each_refusal() {
        use OutboundRefusal as R;
        let zero = Ipv4Addr::UNSPECIFIED;
        let b = Ipv4Addr::BROADCAST;
        let refuse = |f: &[u8]| check_outbound(f, &unbound()).unwrap_err();
        let refuse_bound = |f: &[u8]| check_outbound(f, &bound()).unwrap_err();
        let mut foreign = dhcp_frame();
        foreign[6..12].copy_from_slice(&OTHER_MAC);
        assert_eq!(refuse(&foreign), R::ForeignSourceMac);
        assert_eq!(
            refuse(&udp_frame(OUR_MAC, IPPROTO_UDP, 68, 53, 30)),
            R::BadDestinationPort
        );
        assert_eq!(
            refuse(&udp_frame(OUR_MAC, IPPROTO_UDP, 5353, 67, 30)),
            R::BadSourcePort
        );
        assert_eq!(refuse(&udp_frame(OUR_MAC, 6, 68, 67, 30)), R::NotUdp);
        let mut frag = dhcp_frame();
        frag[20] = 0x20; // MF
        assert_eq!(refuse(&frag), R::Fragment);
        let mut frag = dhcp_frame();
        frag[21] = 0x01; // offset 8
        assert_eq!(refuse(&frag), R::Fragment);
        assert_eq!(refuse(&udp_frame(OUR_MAC, IPPROTO_UDP, 68, 67, 1500)), R::TooLong);
        assert_eq!(refuse(&dhcp_frame()[..41]), R::TooShort);
        let mut vlan = dhcp_frame();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(refuse(&vlan), R::BadEthertype);
        let mut v6 = dhcp_frame();
        v6[14] = 0x65;
        assert_eq!(refuse(&v6), R::BadIpVersion);
        let mut ihl = dhcp_frame();
        ihl[14] = 0x44;
        assert_eq!(refuse(&ihl), R::BadIpHeaderLength);
        let mut options = dhcp_frame();
        options[14] = 0x46;
        assert_eq!(refuse(&options), R::IpOptions);
        let mut trailing = dhcp_frame();
        trailing.push(0);
        assert_eq!(refuse(&trailing), R::BadLength);
        let mut udp_len = dhcp_frame();
        udp_len[38..40].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(refuse(&udp_len), R::BadLength);
        let mut total = dhcp_frame();
        total[16..18].copy_from_slice(&27u16.to_be_bytes()); // under IHL + UDP header
        assert_eq!(refuse(&total), R::BadLength);
        let mut multicast = dhcp_frame();
        multicast[..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
        assert_eq!(refuse(&multicast), R::BadDestinationMac);
        let mut unicast_mac = dhcp_frame();
        unicast_mac[..6].copy_from_slice(&OTHER_MAC);
        assert_eq!(
            refuse(&unicast_mac),
            R::BadDestinationMac,
            "broadcast IP in a unicast frame"
        );

        // ARP: only probes and our own announcements.
        assert_eq!(refuse(&arp_frame(OUR_MAC, OTHER_MAC, 1)), R::ForeignArpSender);
        assert_eq!(refuse(&arp_frame(OTHER_MAC, OTHER_MAC, 1)), R::ForeignSourceMac);
        assert_eq!(refuse(&arp_frame(OUR_MAC, OUR_MAC, 3)), R::BadArpOp);
        assert_eq!(
            refuse_bound(&arp_with(OUR_MAC, OUR_MAC, 2, OURS, OURS)),
            R::ArpReply
        );
        assert_eq!(refuse(&arp_with(OUR_MAC, OUR_MAC, 2, OTHER, SERVER)), R::ArpReply);
        assert_eq!(
            refuse(&arp_with(OUR_MAC, OUR_MAC, 1, OTHER, OTHER)),
            R::ForeignArpSenderIp
        );
        assert_eq!(
            refuse(&arp_with(OUR_MAC, OUR_MAC, 1, OURS, OURS)),
            R::ForeignArpSenderIp,
            "not bound yet"
        );
        assert_eq!(
            refuse_bound(&arp_with(OUR_MAC, OUR_MAC, 1, OURS, SERVER)),
            R::BadArpTarget
        );
        assert_eq!(refuse(&arp_with(OUR_MAC, OUR_MAC, 1, zero, b)), R::BadArpTarget);
        let mut target_mac = arp_with(OUR_MAC, OUR_MAC, 1, zero, OFFERED);
        target_mac[32] = 1;
        assert_eq!(refuse(&target_mac), R::BadArpTarget);
        let mut unicast_arp = arp_with(OUR_MAC, OUR_MAC, 1, zero, OFFERED);
        unicast_arp[..6].copy_from_slice(&OTHER_MAC);
        assert_eq!(refuse(&unicast_arp), R::BadDestinationMac);
        let mut rarp = arp_frame(OUR_MAC, OUR_MAC, 1);
        rarp[17] = 4; // ptype 0x0804: not IPv4
        assert_eq!(refuse(&rarp), R::BadArpFormat);
        let mut long_arp = arp_frame(OUR_MAC, OUR_MAC, 1);
        long_arp.resize(100, 0);
        assert_eq!(refuse(&long_arp), R::ArpTrailingData);

        // IP addresses.
        let discover = dhcp_payload(DHCPDISCOVER, zero, &[]);
        assert_eq!(refuse(&dhcp_from(OTHER, b, &discover)), R::ForeignSourceIp);
        assert_eq!(
            refuse(&dhcp_from(OURS, b, &discover)),
            R::ForeignSourceIp,
            "not bound yet"
        );
        assert_eq!(
            refuse(&dhcp_from(zero, SERVER, &discover)),
            R::ForeignDestinationIp
        );
        let renew = dhcp_payload(DHCPREQUEST, OURS, &[]);
        assert_eq!(
            refuse_bound(&dhcp_from(OURS, OTHER, &renew)),
            R::ForeignDestinationIp
        );
        assert_eq!(
            refuse_bound(&dhcp_from(zero, SERVER, &renew)),
            R::ForeignDestinationIp
        );
        assert_eq!(
            refuse_bound(&dhcp_from(zero, b, &renew)),
            R::ForeignSourceIp,
            "ciaddr is not the source"
        );

        // The BOOTP header.
        let with = |at: usize, value: &[u8]| {
            let mut f = dhcp_frame();
            f[DHCP_AT + at..DHCP_AT + at + value.len()].copy_from_slice(value);
            f
        };
        assert_eq!(refuse(&with(0, &[2])), R::NotBootRequest);
        assert_eq!(refuse(&with(1, &[6])), R::NotBootRequest);
        assert_eq!(refuse(&with(3, &[1])), R::NotBootRequest);
        assert_eq!(refuse(&with(236, &[0])), R::NotBootRequest);
        assert_eq!(refuse(&with(24, &[192, 0, 2, 66])), R::ServerFieldSet, "giaddr");
        assert_eq!(refuse(&with(16, &[192, 0, 2, 66])), R::ServerFieldSet, "yiaddr");
        assert_eq!(refuse(&with(28, &OTHER_MAC)), R::ForeignChaddr);
        assert_eq!(refuse(&with(40, &[1])), R::ForeignChaddr, "chaddr padding");
        let short = dhcp_from(zero, b, &discover[..239]);
        assert_eq!(refuse(&short), R::NotBootRequest);

        // Options.
        let opts =
            |kind: u8, ciaddr: Ipv4Addr, extra: &[u8]| dhcp_from(zero, b, &dhcp_payload(kind, ciaddr, extra));
        assert_eq!(refuse(&opts(2, zero, &[])), R::NotClientMessage, "OFFER");
        assert_eq!(refuse(&opts(5, zero, &[])), R::NotClientMessage, "ACK");
        assert_eq!(refuse(&opts(1, zero, &[53, 1, 1])), R::BadOptions, "53 twice");
        assert_eq!(
            refuse(&opts(1, zero, &[61, 2, 0xaa, 0xbb])),
            R::BadOptions,
            "61 twice"
        );
        assert_eq!(refuse(&opts(1, zero, &[52, 1, 3])), R::BadOptions, "overload");
        assert_eq!(
            refuse(&opts(1, zero, &[82, 2, 1, 0])),
            R::BadOptions,
            "relay agent information"
        );
        assert_eq!(refuse(&opts(1, zero, &[12, 200])), R::BadOptions, "past the end");
        let mut no_end = dhcp_payload(DHCPDISCOVER, zero, &[]);
        no_end.truncate(DHCP_MIN_LEN + 3 + 2 + CLIENT_ID.len());
        assert_eq!(refuse(&dhcp_from(zero, b, &no_end)), R::BadOptions);
        let mut other_id = dhcp_payload(DHCPDISCOVER, zero, &[]);
        other_id[DHCP_MIN_LEN + 5 + 6] ^= 0xff;
        assert_eq!(refuse(&dhcp_from(zero, b, &other_id)), R::ForeignClientId);
        let mut no_id = dhcp_payload(DHCPDISCOVER, zero, &[]);
        no_id[DHCP_MIN_LEN + 3] = 60; // 61 becomes vendor class
        assert_eq!(refuse(&dhcp_from(zero, b, &no_id)), R::ForeignClientId);

        // ciaddr and option 50 by message type.
        assert_eq!(
            refuse_bound(&dhcp_from(OURS, b, &dhcp_payload(DHCPDISCOVER, OURS, &[]))),
            R::BadCiaddr
        );
        assert_eq!(refuse(&opts(DHCPREQUEST, OTHER, &[])), R::BadCiaddr);
        let release_other = dhcp_from(OURS, SERVER, &dhcp_payload(DHCPRELEASE, OTHER, &[]));
        assert_eq!(refuse_bound(&release_other), R::BadCiaddr);
        assert_eq!(refuse(&opts(DHCPRELEASE, zero, &[])), R::BadCiaddr);
        assert_eq!(refuse(&opts(DHCPINFORM, zero, &[])), R::BadCiaddr);
        let o = OTHER.octets();
        assert_eq!(
            refuse(&opts(DHCPDECLINE, zero, &[50, 4, o[0], o[1], o[2], o[3]])),
            R::BadRequestedAddress
        );
        assert_eq!(refuse(&opts(DHCPDECLINE, zero, &[])), R::BadRequestedAddress);
        let release_50 = dhcp_from(
            OURS,
            SERVER,
            &dhcp_payload(DHCPRELEASE, OURS, &[50, 4, 192, 0, 2, 7]),
        );
        assert_eq!(refuse_bound(&release_50), R::BadRequestedAddress);
    }

    #[test]
    fn refusal_texts_are_distinct() {
        use OutboundRefusal::*;
        let all = [
            TooShort,
            TooLong,
            ForeignSourceMac,
            BadEthertype,
            BadDestinationMac,
            BadArpFormat,
            BadArpOp,
            ArpReply,
            ForeignArpSender,
            ForeignArpSenderIp,
            BadArpTarget,
            ArpTrailingData,
            BadIpVersion,
            BadIpHeaderLength,
            IpOptions,
            BadLength,
            Fragment,
            NotUdp,
            BadSourcePort,
            BadDestinationPort,
            ForeignSourceIp,
            ForeignDestinationIp,
            NotBootRequest,
            ServerFieldSet,
            ForeignChaddr,
            BadOptions,
            NotClientMessage,
            ForeignClientId,
            BadCiaddr,
            BadRequestedAddress,
        ];
        let texts: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(texts.len(), all.len());
    }

    #[test]
    fn offered_addresses_come_only_from_replies_to_our_chaddr() {
        let reply = |mac: [u8; 6], op: u8, yiaddr: Ipv4Addr| {
            let mut p = dhcp_payload(2, Ipv4Addr::UNSPECIFIED, &[]);
            p[0] = op;
            p[16..20].copy_from_slice(&yiaddr.octets());
            p[28..34].copy_from_slice(&mac);
            udp_with(OTHER_MAC, IPPROTO_UDP, 67, 68, &p)
        };
        assert_eq!(
            offered_address(&reply(OUR_MAC, 2, OFFERED), OUR_MAC),
            Some(OFFERED)
        );
        assert_eq!(offered_address(&reply(OTHER_MAC, 2, OFFERED), OUR_MAC), None);
        assert_eq!(offered_address(&reply(OUR_MAC, 1, OFFERED), OUR_MAC), None);
        assert_eq!(
            offered_address(&reply(OUR_MAC, 2, Ipv4Addr::UNSPECIFIED), OUR_MAC),
            None
        );
        assert_eq!(
            offered_address(&reply(OUR_MAC, 2, Ipv4Addr::BROADCAST), OUR_MAC),
            None
        );
        let mut from_68 = reply(OUR_MAC, 2, OFFERED);
        from_68[34..36].copy_from_slice(&68u16.to_be_bytes());
        assert_eq!(offered_address(&from_68, OUR_MAC), None);
        let cut = reply(OUR_MAC, 2, OFFERED);
        assert_eq!(offered_address(&cut[..DHCP_AT + 239], OUR_MAC), None);
        assert_eq!(
            offered_address(&arp_frame(OTHER_MAC, OTHER_MAC, 2), OUR_MAC),
            None
        );
    }

    #[test]
    fn rate_cap_allows_its_burst_then_its_rate() {
        let mut cap = RateCap::new(10, 30, 1000);
        assert_eq!((0..100).filter(|_| cap.take(1000)).count(), 30);
        // 100 ms later: one more frame.
        assert!(cap.take(1100));
        assert!(!cap.take(1100));
        // Over 10 s of a flood, 10 a second.
        let passed = (0..10_000u64).filter(|i| cap.take(1100 + i)).count();
        assert!((99..=101).contains(&passed), "{passed}");
        // A clock that steps back takes nothing and gives nothing.
        assert!(!cap.take(0));
        // Idle refills up to the burst, not past it.
        let mut idle = RateCap::new(10, 30, 0);
        assert_eq!((0..100).filter(|_| idle.take(3_600_000)).count(), 30);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every length from empty to past the cap, with contents that make
        // the length fields point everywhere.
        let mut seed = 0x2545_f491_u32;
        let policy = bound();
        for len in 0..1600 {
            for _ in 0..4 {
                let mut f: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed as u8
                    })
                    .collect();
                if len >= 14 {
                    f[6..12].copy_from_slice(&OUR_MAC);
                    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                }
                let _ = check_outbound(&f, &policy);
                let _ = offered_address(&f, OUR_MAC);
            }
        }
        // A well-formed client message cut at every length.
        let good = dhcp_from(OURS, SERVER, &dhcp_payload(DHCPREQUEST, OURS, &[]));
        for len in 0..good.len() {
            let _ = check_outbound(&good[..len], &policy);
        }
    }

    /// A classic BPF interpreter for the instructions our filter uses, so the
    /// filter's logic is tested without a kernel. Out-of-bounds loads drop the
    /// frame, as in the kernel.
    fn run_filter(prog: &[libc::sock_filter], frame: &[u8], pkttype: u32) -> u32 {
        use libc::{
            BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX, BPF_MSH,
            BPF_RET,
        };
        let load = |at: usize, size: usize| -> Option<u32> {
            let bytes = frame.get(at..at.checked_add(size)?)?;
            Some(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        };
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let pkttype_off = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            pc += 1;
            let step = |cond: bool| {
                if cond {
                    usize::from(i.jt)
                } else {
                    usize::from(i.jf)
                }
            };
            match code {
                c if c == BPF_LD | BPF_B | BPF_ABS && i.k == pkttype_off => a = pkttype,
                c if c == BPF_LD | BPF_B | BPF_ABS => match load(i.k as usize, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_H | BPF_ABS => match load(i.k as usize, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_H | BPF_IND => match load((x + i.k) as usize, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LDX | BPF_B | BPF_MSH => match load(i.k as usize, 1) {
                    Some(v) => x = 4 * (v & 0xf),
                    None => return 0,
                },
                c if c == BPF_JMP | BPF_JEQ | BPF_K => pc += step(a == i.k),
                c if c == BPF_JMP | BPF_JSET | BPF_K => pc += step(a & i.k != 0),
                c if c == BPF_RET | BPF_K => return i.k,
                other => panic!("instruction {other:#x} not modelled"),
            }
        }
    }

    #[test]
    fn filter_accepts_only_whole_udp_to_68_and_optionally_arp() {
        const HOST: u32 = 0;
        let snap = MAX_FRAME_LEN as u32;
        for with_arp in [false, true] {
            let prog = filter_program(with_arp);
            let run = |f: &[u8]| run_filter(&prog, f, HOST);
            let to_68 = udp_frame(OTHER_MAC, IPPROTO_UDP, 67, 68, 300);
            assert_eq!(run(&to_68), snap);
            assert_eq!(
                run_filter(&prog, &to_68, PACKET_OUTGOING),
                0,
                "own transmissions dropped"
            );
            assert_eq!(run(&udp_frame(OTHER_MAC, IPPROTO_UDP, 67, 53, 300)), 0);
            assert_eq!(run(&udp_frame(OTHER_MAC, 6, 67, 68, 300)), 0);
            let mut mf = to_68.clone();
            mf[20] = 0x20;
            assert_eq!(run(&mf), 0, "first fragment");
            let mut later = to_68.clone();
            later[21] = 0xb9;
            assert_eq!(run(&later), 0, "later fragment");
            let mut df = to_68.clone();
            df[20] = 0x40;
            assert_eq!(run(&df), snap, "DF is fine");
            // IHL 6: the port is found past a 4-byte option (BPF_MSH at work).
            let mut opts = to_68.clone();
            opts[14] = 0x46;
            opts.splice(34..34, [1, 1, 1, 1]);
            assert_eq!(run(&opts), snap);
            let mut opts_wrong = opts.clone();
            opts_wrong[34..38].copy_from_slice(&[0, 68, 0, 68]); // 68 where IHL 5 would look
            opts_wrong[40..42].copy_from_slice(&53u16.to_be_bytes());
            assert_eq!(run(&opts_wrong), 0);
            assert_eq!(run(&to_68[..30]), 0, "truncated frame");
            let arp = arp_frame(OTHER_MAC, OTHER_MAC, 1);
            assert_eq!(run(&arp), if with_arp { snap } else { 0 });
            let mut v6 = to_68.clone();
            v6[12..14].copy_from_slice(&[0x86, 0xdd]);
            assert_eq!(run(&v6), 0);
        }
    }

    #[test]
    fn server_filter_accepts_udp_to_67_and_arp_only() {
        let snap = MAX_FRAME_LEN as u32;
        let prog = filter_program_for(DHCP_SERVER_PORT, true);
        let run = |f: &[u8]| run_filter(&prog, f, 0);
        let to_67 = udp_frame(OTHER_MAC, IPPROTO_UDP, 68, 67, 300);
        assert_eq!(run(&to_67), snap);
        assert_eq!(run_filter(&prog, &to_67, PACKET_OUTGOING), 0);
        assert_eq!(
            run(&udp_frame(OTHER_MAC, IPPROTO_UDP, 67, 68, 300)),
            0,
            "client port"
        );
        let mut mf = to_67.clone();
        mf[20] = 0x20;
        assert_eq!(run(&mf), 0, "fragment");
        assert_eq!(run(&arp_frame(OTHER_MAC, OTHER_MAC, 1)), snap);
        // The client filter is unchanged by the parameter.
        assert_eq!(filter_program(true).len(), prog.len());
        assert_eq!(run_filter(&filter_program(true), &to_67, 0), 0);
    }

    #[test]
    fn auxdata_is_found_among_control_messages() {
        const WORD: usize = mem::size_of::<usize>();
        let header = mem::size_of::<libc::cmsghdr>();
        let cmsg = |level: i32, kind: i32, data: &[u8]| {
            let mut m = (header + data.len()).to_ne_bytes()[..WORD].to_vec();
            m.extend_from_slice(&level.to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.resize(header, 0);
            m.extend_from_slice(data);
            m.resize(m.len().div_ceil(WORD) * WORD, 0);
            m
        };
        let mut aux = Vec::new();
        for v in [libc::TP_STATUS_CSUMNOTREADY | 1, 1600, 1536] {
            aux.extend_from_slice(&v.to_ne_bytes());
        }
        aux.extend_from_slice(&[0; 8]);
        let mut control = cmsg(libc::SOL_SOCKET, 1, &[7; 5]);
        control.extend(cmsg(libc::SOL_PACKET, libc::PACKET_AUXDATA, &aux));
        let got = parse_auxdata(&control).unwrap();
        assert_eq!(
            got,
            AuxData {
                status: libc::TP_STATUS_CSUMNOTREADY | 1,
                len: 1600,
                snaplen: 1536
            }
        );
        assert_eq!(
            parse_auxdata(&control[..control.len() - 8]),
            None,
            "cut message ignored"
        );
        assert_eq!(parse_auxdata(&[]), None);
        let mut bogus = control.clone();
        bogus[..WORD].copy_from_slice(&usize::MAX.to_ne_bytes()[..WORD]);
        assert_eq!(parse_auxdata(&bogus), None);
    }
}
