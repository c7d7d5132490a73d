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
//! compromised engine: only DHCP client traffic (UDP 68 -> 67) and ARP from our
//! own MAC leave the host.
//!
//! Syscalls: `open` makes socket, setsockopt (SO_ATTACH_FILTER,
//! SO_LOCK_FILTER, PACKET_AUXDATA, PACKET_IGNORE_OUTGOING), recvfrom (drain),
//! bind. `from_raw_fd`/`from_fd` make getsockopt. The hot path is only
//! `recvmsg` ([`PacketSocket::recv`]) and `sendto` ([`PacketSocket::send`];
//! the libc's `send` is the sendto syscall, in glibc and musl alike).

use std::io;
use std::mem;
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
    pub fn open_server(ifindex: u32) -> io::Result<PacketSocket> {
        Self::open_filtered(ifindex, filter_program_for(DHCP_SERVER_PORT, true))
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
    /// ARP that is not Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4).
    BadArpFormat,
    /// ARP opcode other than request (1) or reply (2).
    BadArpOp,
    /// ARP sender hardware address is not our MAC.
    ForeignArpSender,
    /// ARP frame longer than the Ethernet minimum (trailing data).
    ArpTrailingData,
    /// IPv4 version field is not 4.
    BadIpVersion,
    /// IPv4 header length under 20 bytes or past the frame.
    BadIpHeaderLength,
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
}

impl OutboundRefusal {
    /// Short stable text for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutboundRefusal::TooShort => "frame too short",
            OutboundRefusal::TooLong => "frame too long",
            OutboundRefusal::ForeignSourceMac => "source MAC is not ours",
            OutboundRefusal::BadEthertype => "ethertype is neither IPv4 nor ARP",
            OutboundRefusal::BadArpFormat => "ARP is not Ethernet/IPv4",
            OutboundRefusal::BadArpOp => "ARP opcode is not request or reply",
            OutboundRefusal::ForeignArpSender => "ARP sender MAC is not ours",
            OutboundRefusal::ArpTrailingData => "ARP frame has trailing data",
            OutboundRefusal::BadIpVersion => "IP version is not 4",
            OutboundRefusal::BadIpHeaderLength => "bad IPv4 header length",
            OutboundRefusal::BadLength => "IPv4 or UDP length disagrees with the frame",
            OutboundRefusal::Fragment => "IPv4 fragment",
            OutboundRefusal::NotUdp => "IP protocol is not UDP",
            OutboundRefusal::BadSourcePort => "UDP source port is not 68",
            OutboundRefusal::BadDestinationPort => "UDP destination port is not 67",
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

/// Decides whether the engine may send `frame` from the interface whose MAC
/// is `our_mac`. Only two shapes pass: a DHCP client datagram (IPv4, UDP
/// 68 -> 67, RFC 2131 section 4.1) and an Ethernet/IPv4 ARP request or reply
/// (RFC 826; RFC 5227 probes and announcements are requests) sent as us.
/// Pure and panic-free for any input.
pub fn check_outbound(frame: &[u8], our_mac: [u8; 6]) -> Result<(), OutboundRefusal> {
    if frame.len() < MIN_FRAME_LEN {
        return Err(OutboundRefusal::TooShort);
    }
    if frame.len() > MAX_FRAME_LEN {
        return Err(OutboundRefusal::TooLong);
    }
    if frame[6..12] != our_mac {
        return Err(OutboundRefusal::ForeignSourceMac);
    }
    match be16(frame, 12) {
        ETHERTYPE_ARP => check_arp(&frame[ETH_HEADER_LEN..], frame.len(), our_mac),
        ETHERTYPE_IPV4 => check_ipv4(&frame[ETH_HEADER_LEN..], frame.len()),
        _ => Err(OutboundRefusal::BadEthertype),
    }
}

/// `arp` holds at least 28 bytes (the frame is at least 42).
fn check_arp(arp: &[u8], frame_len: usize, our_mac: [u8; 6]) -> Result<(), OutboundRefusal> {
    if be16(arp, 0) != 1 || be16(arp, 2) != ETHERTYPE_IPV4 || arp[4] != 6 || arp[5] != 4 {
        return Err(OutboundRefusal::BadArpFormat);
    }
    if !matches!(be16(arp, 6), 1 | 2) {
        return Err(OutboundRefusal::BadArpOp);
    }
    if arp[8..14] != our_mac {
        return Err(OutboundRefusal::ForeignArpSender);
    }
    // Padding up to the 60-byte Ethernet minimum is normal; more is a covert
    // channel.
    if frame_len > ETH_MIN_FRAME_LEN {
        return Err(OutboundRefusal::ArpTrailingData);
    }
    Ok(())
}

/// `ip` is the frame after the Ethernet header (at least 28 bytes).
fn check_ipv4(ip: &[u8], frame_len: usize) -> Result<(), OutboundRefusal> {
    if ip[0] >> 4 != 4 {
        return Err(OutboundRefusal::BadIpVersion);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ihl + 8 > ip.len() {
        return Err(OutboundRefusal::BadIpHeaderLength);
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    /// An Ethernet/IPv4/UDP frame with `payload_len` bytes of payload.
    fn udp_frame(src_mac: [u8; 6], proto: u8, sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + 8 + payload_len) as u16;
        f.extend_from_slice(&[
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
        ]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend(std::iter::repeat_n(0x5a, payload_len));
        f
    }

    fn dhcp_frame() -> Vec<u8> {
        udp_frame(OUR_MAC, IPPROTO_UDP, 68, 67, 300)
    }

    fn arp_frame(src_mac: [u8; 6], sender: [u8; 6], op: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&sender);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 192, 0, 2, 7]);
        f
    }

    #[test]
    fn good_dhcp_and_arp_frames_pass() {
        assert_eq!(check_outbound(&dhcp_frame(), OUR_MAC), Ok(()));
        assert_eq!(check_outbound(&arp_frame(OUR_MAC, OUR_MAC, 1), OUR_MAC), Ok(()));
        assert_eq!(check_outbound(&arp_frame(OUR_MAC, OUR_MAC, 2), OUR_MAC), Ok(()));
        // ARP padded to the Ethernet minimum is still fine.
        let mut padded = arp_frame(OUR_MAC, OUR_MAC, 1);
        padded.resize(ETH_MIN_FRAME_LEN, 0);
        assert_eq!(check_outbound(&padded, OUR_MAC), Ok(()));
        // Don't-fragment is not a fragment.
        let mut df = dhcp_frame();
        df[20] = 0x40;
        assert_eq!(check_outbound(&df, OUR_MAC), Ok(()));
    }

    #[test]
    fn each_refusal() {
        let refuse = |f: &[u8]| check_outbound(f, OUR_MAC).unwrap_err();
        assert_eq!(
            refuse(&udp_frame(OTHER_MAC, IPPROTO_UDP, 68, 67, 300)),
            OutboundRefusal::ForeignSourceMac
        );
        assert_eq!(
            refuse(&udp_frame(OUR_MAC, IPPROTO_UDP, 68, 53, 30)),
            OutboundRefusal::BadDestinationPort
        );
        assert_eq!(
            refuse(&udp_frame(OUR_MAC, IPPROTO_UDP, 5353, 67, 30)),
            OutboundRefusal::BadSourcePort
        );
        assert_eq!(
            refuse(&udp_frame(OUR_MAC, 6, 68, 67, 30)),
            OutboundRefusal::NotUdp
        );
        let mut frag = dhcp_frame();
        frag[20] = 0x20; // MF
        assert_eq!(refuse(&frag), OutboundRefusal::Fragment);
        let mut frag = dhcp_frame();
        frag[21] = 0x01; // offset 8
        assert_eq!(refuse(&frag), OutboundRefusal::Fragment);
        assert_eq!(
            refuse(&udp_frame(OUR_MAC, IPPROTO_UDP, 68, 67, 1500)),
            OutboundRefusal::TooLong
        );
        assert_eq!(refuse(&dhcp_frame()[..41]), OutboundRefusal::TooShort);
        assert_eq!(
            refuse(&arp_frame(OUR_MAC, OTHER_MAC, 1)),
            OutboundRefusal::ForeignArpSender
        );
        assert_eq!(
            refuse(&arp_frame(OTHER_MAC, OTHER_MAC, 1)),
            OutboundRefusal::ForeignSourceMac
        );
        assert_eq!(refuse(&arp_frame(OUR_MAC, OUR_MAC, 3)), OutboundRefusal::BadArpOp);
        let mut rarp = arp_frame(OUR_MAC, OUR_MAC, 1);
        rarp[17] = 4; // ptype 0x0804: not IPv4
        assert_eq!(refuse(&rarp), OutboundRefusal::BadArpFormat);
        let mut long_arp = arp_frame(OUR_MAC, OUR_MAC, 1);
        long_arp.resize(100, 0);
        assert_eq!(refuse(&long_arp), OutboundRefusal::ArpTrailingData);
        let mut vlan = dhcp_frame();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(refuse(&vlan), OutboundRefusal::BadEthertype);
        let mut v6 = dhcp_frame();
        v6[14] = 0x65;
        assert_eq!(refuse(&v6), OutboundRefusal::BadIpVersion);
        let mut ihl = dhcp_frame();
        ihl[14] = 0x44;
        assert_eq!(refuse(&ihl), OutboundRefusal::BadIpHeaderLength);
        let mut trailing = dhcp_frame();
        trailing.push(0);
        assert_eq!(refuse(&trailing), OutboundRefusal::BadLength);
        let mut udp_len = dhcp_frame();
        udp_len[38..40].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(refuse(&udp_len), OutboundRefusal::BadLength);
        let mut total = dhcp_frame();
        total[16..18].copy_from_slice(&27u16.to_be_bytes()); // under IHL + UDP header
        assert_eq!(refuse(&total), OutboundRefusal::BadLength);
    }

    #[test]
    fn refusal_texts_are_distinct() {
        use OutboundRefusal::*;
        let all = [
            TooShort,
            TooLong,
            ForeignSourceMac,
            BadEthertype,
            BadArpFormat,
            BadArpOp,
            ForeignArpSender,
            ArpTrailingData,
            BadIpVersion,
            BadIpHeaderLength,
            BadLength,
            Fragment,
            NotUdp,
            BadSourcePort,
            BadDestinationPort,
        ];
        let texts: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(texts.len(), all.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every length from empty to past the cap, with contents that make
        // the length fields point everywhere.
        let mut seed = 0x2545_f491_u32;
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
                let _ = check_outbound(&f, OUR_MAC);
            }
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
