//! NTP packets (RFC 5905 section 7.3) in the smoltcp style: [`Packet`] is a
//! zero-copy, bounds-checked view over a buffer, [`Repr`] the decoded
//! header, and [`Repr::parse`] / [`Repr::emit`] convert between them.
//!
//! Strictness: [`Packet::new_checked`] accepts the 48-byte header followed
//! only by well-formed RFC 7822 extension fields (each at least 16 octets, a
//! multiple of 4, inside the packet), then either nothing or a legacy MAC of
//! 20 (MD5) or 24 (SHA-1) octets, and at most [`MAX_PACKET_LEN`] octets in
//! all. The engine never sends extension fields or a MAC and never reads
//! them (nothing is authenticated), so they are tolerated only so that a
//! server that adds some is not refused; a trailer of any other shape (a
//! 4-octet crypto-NAK, a field running past the end, a length under 16) is
//! refused. Field values (version, mode, stratum) are policy and checked by
//! the engine, not here.
//!
//! Timestamps are the 64-bit NTP format of RFC 5905 section 6: 32 bits of
//! seconds since the start of the current era, 32 bits of fraction. The era
//! is not on the wire: differences are taken modulo 2^64 and read as signed
//! (valid while the two stamps are within 68 years, which section 6 relies
//! on too), and a full date is resolved against a pivot
//! ([`NtpTimestamp::to_unix_nanos`]) so that 2036-02-07 06:28:16 UTC, when
//! era 1 begins, is an ordinary second.

use serde::{Deserialize, Serialize};

/// The fixed header (RFC 5905 figure 8).
pub const HEADER_LEN: usize = 48;
/// The longest packet accepted: room for an NTS-sized set of extension
/// fields (RFC 8915 cookies are about 100 octets each) and a MAC, and no
/// more; an NTP reply to a 48-octet request has no reason to be larger.
pub const MAX_PACKET_LEN: usize = 1024;
/// RFC 7822 section 3: an extension field is at least 16 octets.
pub const MIN_EXTENSION_LEN: usize = 16;
/// Legacy MACs (RFC 5905 section 7.3, figure 8): a 4-octet key id followed
/// by an MD5 (16) or SHA-1 (20) digest.
pub const MAC_LENS: [usize; 2] = [20, 24];
/// Seconds from the NTP prime epoch (1900-01-01, era 0) to the Unix epoch.
pub const UNIX_EPOCH_NTP_SECS: u64 = 2_208_988_800;
/// Default era pivot: 2026-01-01T00:00:00Z. Full dates resolve to within 68
/// years either side of the pivot (1958..2094), which covers a clock that
/// booted at 1970 and a server far in the future alike.
pub const DEFAULT_ERA_PIVOT_UNIX_SECS: i64 = 1_767_225_600;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A 64-bit NTP timestamp (RFC 5905 section 6), era implied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// Zero means "unknown" on the wire (RFC 5905 section 7.3, "if ... zero,
    /// the timestamp is invalid").
    pub const ZERO: NtpTimestamp = NtpTimestamp(0);

    pub const fn from_parts(seconds: u32, fraction: u32) -> Self {
        NtpTimestamp(((seconds as u64) << 32) | fraction as u64)
    }
    pub const fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub const fn fraction(self) -> u32 {
        self.0 as u32
    }
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self - earlier` in nanoseconds, both in the same 68-year window
    /// either side (RFC 5905 section 6: "the difference ... is computed as
    /// a signed 64-bit value"), rounded to the nearest nanosecond.
    pub const fn diff_nanos(self, earlier: NtpTimestamp) -> i64 {
        let d = self.0.wrapping_sub(earlier.0) as i64 as i128;
        ((d * NANOS_PER_SEC + (1 << 31)) >> 32) as i64
    }

    /// This timestamp moved by `nanos` (either way, wrapping into the next
    /// or previous era as the wire format does).
    pub const fn add_nanos(self, nanos: i64) -> Self {
        let d = ((nanos as i128) << 32) / NANOS_PER_SEC;
        NtpTimestamp(self.0.wrapping_add(d as i64 as u64))
    }

    /// The timestamp of a Unix time in nanoseconds (any era: the seconds
    /// wrap as they do on the wire).
    pub const fn from_unix_nanos(nanos: i128) -> Self {
        let ntp_nanos = nanos + UNIX_EPOCH_NTP_SECS as i128 * NANOS_PER_SEC;
        let secs = ntp_nanos.div_euclid(NANOS_PER_SEC);
        let sub = ntp_nanos.rem_euclid(NANOS_PER_SEC);
        let frac = (sub << 32) / NANOS_PER_SEC;
        NtpTimestamp(((secs as u64) << 32) | frac as u64)
    }

    /// Unix time in nanoseconds, with the era chosen to put it within 68
    /// years of `pivot_unix_secs` (RFC 5905 section 6 leaves the era to
    /// "external means"; field notes item 15).
    pub const fn to_unix_nanos(self, pivot_unix_secs: i64) -> i128 {
        let pivot = NtpTimestamp::from_unix_nanos(pivot_unix_secs as i128 * NANOS_PER_SEC);
        pivot_unix_secs as i128 * NANOS_PER_SEC + self.diff_nanos(pivot) as i128
    }
}

/// The 32-bit short format (RFC 5905 section 6): 16 bits of seconds, 16 of
/// fraction, used for root delay and root dispersion.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpShort(pub u32);

impl NtpShort {
    pub const fn to_nanos(self) -> i64 {
        ((self.0 as i64) * 1_000_000_000 + (1 << 15)) >> 16
    }
    /// Nearest short-format value, saturating at 0 and at 65536 s.
    pub const fn from_nanos(nanos: i64) -> Self {
        if nanos <= 0 {
            return NtpShort(0);
        }
        let v = ((nanos as i128) << 16) / NANOS_PER_SEC;
        NtpShort(if v > u32::MAX as i128 { u32::MAX } else { v as u32 })
    }
}

/// Leap indicator (RFC 5905 figure 9).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Leap {
    #[default]
    None,
    /// The last minute of the day has 61 seconds.
    Insert,
    /// The last minute of the day has 59 seconds.
    Delete,
    /// Clock unsynchronised (also set in Kiss-o'-Death packets).
    Unknown,
}

impl Leap {
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Leap::None,
            1 => Leap::Insert,
            2 => Leap::Delete,
            _ => Leap::Unknown,
        }
    }
    pub const fn bits(self) -> u8 {
        match self {
            Leap::None => 0,
            Leap::Insert => 1,
            Leap::Delete => 2,
            Leap::Unknown => 3,
        }
    }
}

/// Association mode (RFC 5905 figure 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Reserved,
    SymmetricActive,
    SymmetricPassive,
    Client,
    Server,
    Broadcast,
    Control,
    Private,
}

impl Mode {
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Mode::Reserved,
            1 => Mode::SymmetricActive,
            2 => Mode::SymmetricPassive,
            3 => Mode::Client,
            4 => Mode::Server,
            5 => Mode::Broadcast,
            6 => Mode::Control,
            _ => Mode::Private,
        }
    }
    pub const fn bits(self) -> u8 {
        match self {
            Mode::Reserved => 0,
            Mode::SymmetricActive => 1,
            Mode::SymmetricPassive => 2,
            Mode::Client => 3,
            Mode::Server => 4,
            Mode::Broadcast => 5,
            Mode::Control => 6,
            Mode::Private => 7,
        }
    }
}

/// Kiss-o'-Death codes the engine acts on (RFC 5905 section 7.4, figure 13).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kiss {
    /// "Rate exceeded": poll this server less often.
    Rate,
    /// "Access denied": stop sending to it.
    Deny,
    /// "Access restricted": stop sending to it.
    Rstr,
    /// Any other code (RFC 5905: "ignored"; kept for logs).
    Other([u8; 4]),
}

impl Kiss {
    pub const fn from_code(code: [u8; 4]) -> Self {
        match &code {
            b"RATE" => Kiss::Rate,
            b"DENY" => Kiss::Deny,
            b"RSTR" => Kiss::Rstr,
            _ => Kiss::Other(code),
        }
    }
    pub const fn code(self) -> [u8; 4] {
        match self {
            Kiss::Rate => *b"RATE",
            Kiss::Deny => *b"DENY",
            Kiss::Rstr => *b"RSTR",
            Kiss::Other(c) => c,
        }
    }
}

/// Why bytes are not an NTP packet we accept.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireError {
    /// Shorter than the 48-octet header.
    Truncated,
    /// Longer than [`MAX_PACKET_LEN`].
    TooLong,
    /// Bytes after the header that are neither extension fields nor a MAC.
    BadTrailer,
}

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const LI_VN_MODE: usize = 0;
    pub const STRATUM: usize = 1;
    pub const POLL: usize = 2;
    pub const PRECISION: usize = 3;
    pub const ROOT_DELAY: Field = 4..8;
    pub const ROOT_DISPERSION: Field = 8..12;
    pub const REFERENCE_ID: Field = 12..16;
    pub const REFERENCE_TS: Field = 16..24;
    pub const ORIGIN_TS: Field = 24..32;
    pub const RECEIVE_TS: Field = 32..40;
    pub const TRANSMIT_TS: Field = 40..48;
}

/// A read/write view of an NTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view with no checks; accessors panic on a buffer shorter than
    /// [`HEADER_LEN`]. Use [`Packet::new_checked`] on received bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view of a packet whose header and trailer pass
    /// [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The header is complete, the whole packet is at most
    /// [`MAX_PACKET_LEN`], and what follows the header is extension fields
    /// (RFC 7822 section 3) then nothing or a MAC of a legacy length.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if data.len() > MAX_PACKET_LEN {
            return Err(WireError::TooLong);
        }
        let mut rest = &data[HEADER_LEN..];
        loop {
            if rest.is_empty() || MAC_LENS.contains(&rest.len()) {
                return Ok(());
            }
            if rest.len() < MIN_EXTENSION_LEN {
                return Err(WireError::BadTrailer);
            }
            // Type (2 octets), then length (2 octets) of the whole field.
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            if len < MIN_EXTENSION_LEN || len % 4 != 0 || len > rest.len() {
                return Err(WireError::BadTrailer);
            }
            rest = &rest[len..];
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn bytes<const N: usize>(&self, range: field::Field) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.buffer.as_ref()[range]);
        out
    }
    fn timestamp(&self, range: field::Field) -> NtpTimestamp {
        NtpTimestamp(u64::from_be_bytes(self.bytes(range)))
    }

    pub fn leap(&self) -> Leap {
        Leap::from_bits(self.buffer.as_ref()[field::LI_VN_MODE] >> 6)
    }
    pub fn version(&self) -> u8 {
        (self.buffer.as_ref()[field::LI_VN_MODE] >> 3) & 7
    }
    pub fn mode(&self) -> Mode {
        Mode::from_bits(self.buffer.as_ref()[field::LI_VN_MODE])
    }
    pub fn stratum(&self) -> u8 {
        self.buffer.as_ref()[field::STRATUM]
    }
    pub fn poll(&self) -> i8 {
        self.buffer.as_ref()[field::POLL] as i8
    }
    pub fn precision(&self) -> i8 {
        self.buffer.as_ref()[field::PRECISION] as i8
    }
    pub fn root_delay(&self) -> NtpShort {
        NtpShort(u32::from_be_bytes(self.bytes(field::ROOT_DELAY)))
    }
    pub fn root_dispersion(&self) -> NtpShort {
        NtpShort(u32::from_be_bytes(self.bytes(field::ROOT_DISPERSION)))
    }
    pub fn reference_id(&self) -> [u8; 4] {
        self.bytes(field::REFERENCE_ID)
    }
    pub fn reference_timestamp(&self) -> NtpTimestamp {
        self.timestamp(field::REFERENCE_TS)
    }
    pub fn origin_timestamp(&self) -> NtpTimestamp {
        self.timestamp(field::ORIGIN_TS)
    }
    pub fn receive_timestamp(&self) -> NtpTimestamp {
        self.timestamp(field::RECEIVE_TS)
    }
    pub fn transmit_timestamp(&self) -> NtpTimestamp {
        self.timestamp(field::TRANSMIT_TS)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put(&mut self, range: field::Field, bytes: &[u8]) {
        self.buffer.as_mut()[range].copy_from_slice(bytes);
    }
    pub fn set_li_vn_mode(&mut self, leap: Leap, version: u8, mode: Mode) {
        self.buffer.as_mut()[field::LI_VN_MODE] = (leap.bits() << 6) | ((version & 7) << 3) | mode.bits();
    }
    pub fn set_stratum(&mut self, v: u8) {
        self.buffer.as_mut()[field::STRATUM] = v;
    }
    pub fn set_poll(&mut self, v: i8) {
        self.buffer.as_mut()[field::POLL] = v as u8;
    }
    pub fn set_precision(&mut self, v: i8) {
        self.buffer.as_mut()[field::PRECISION] = v as u8;
    }
    pub fn set_root_delay(&mut self, v: NtpShort) {
        self.put(field::ROOT_DELAY, &v.0.to_be_bytes());
    }
    pub fn set_root_dispersion(&mut self, v: NtpShort) {
        self.put(field::ROOT_DISPERSION, &v.0.to_be_bytes());
    }
    pub fn set_reference_id(&mut self, v: [u8; 4]) {
        self.put(field::REFERENCE_ID, &v);
    }
    pub fn set_reference_timestamp(&mut self, v: NtpTimestamp) {
        self.put(field::REFERENCE_TS, &v.0.to_be_bytes());
    }
    pub fn set_origin_timestamp(&mut self, v: NtpTimestamp) {
        self.put(field::ORIGIN_TS, &v.0.to_be_bytes());
    }
    pub fn set_receive_timestamp(&mut self, v: NtpTimestamp) {
        self.put(field::RECEIVE_TS, &v.0.to_be_bytes());
    }
    pub fn set_transmit_timestamp(&mut self, v: NtpTimestamp) {
        self.put(field::TRANSMIT_TS, &v.0.to_be_bytes());
    }
}

/// A decoded NTP header (RFC 5905 section 7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub leap: Leap,
    pub version: u8,
    pub mode: Mode,
    pub stratum: u8,
    /// log2 seconds.
    pub poll: i8,
    /// log2 seconds.
    pub precision: i8,
    pub root_delay: NtpShort,
    pub root_dispersion: NtpShort,
    /// A kiss code when stratum is 0, else the reference's identifier.
    pub reference_id: [u8; 4],
    pub reference: NtpTimestamp,
    /// T1 as the server echoes it: for our requests, the random transmit
    /// timestamp we sent.
    pub origin: NtpTimestamp,
    /// T2: the server's receive time.
    pub receive: NtpTimestamp,
    /// T3: the server's transmit time.
    pub transmit: NtpTimestamp,
}

impl Repr {
    /// Decode a checked packet. Anything [`Packet::new_checked`] accepts
    /// decodes; extension fields and a MAC are skipped.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, WireError> {
        packet.check_len()?;
        Ok(Repr {
            leap: packet.leap(),
            version: packet.version(),
            mode: packet.mode(),
            stratum: packet.stratum(),
            poll: packet.poll(),
            precision: packet.precision(),
            root_delay: packet.root_delay(),
            root_dispersion: packet.root_dispersion(),
            reference_id: packet.reference_id(),
            reference: packet.reference_timestamp(),
            origin: packet.origin_timestamp(),
            receive: packet.receive_timestamp(),
            transmit: packet.transmit_timestamp(),
        })
    }

    /// A client request (mode 3, version 4) that carries nothing but
    /// `transmit`: the data-minimisation shape (draft-ietf-ntp-data-
    /// minimization, field notes item 17). RFC 5905 section 9 only needs the
    /// server to echo the transmit timestamp as the origin, so a random
    /// value there leaks no local time and lets replies be matched.
    pub const fn client_request(transmit: NtpTimestamp) -> Repr {
        Repr {
            leap: Leap::None,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll: 0,
            precision: 0,
            root_delay: NtpShort(0),
            root_dispersion: NtpShort(0),
            reference_id: [0; 4],
            reference: NtpTimestamp::ZERO,
            origin: NtpTimestamp::ZERO,
            receive: NtpTimestamp::ZERO,
            transmit,
        }
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the header into the first [`HEADER_LEN`] octets of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_li_vn_mode(self.leap, self.version, self.mode);
        packet.set_stratum(self.stratum);
        packet.set_poll(self.poll);
        packet.set_precision(self.precision);
        packet.set_root_delay(self.root_delay);
        packet.set_root_dispersion(self.root_dispersion);
        packet.set_reference_id(self.reference_id);
        packet.set_reference_timestamp(self.reference);
        packet.set_origin_timestamp(self.origin);
        packet.set_receive_timestamp(self.receive);
        packet.set_transmit_timestamp(self.transmit);
    }

    /// The header as a fresh 48-octet buffer.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0; HEADER_LEN];
        self.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf
    }

    /// The kiss code of a Kiss-o'-Death packet: stratum 0 carries a code in
    /// the reference id (RFC 5905 section 7.4).
    pub fn kiss(&self) -> Option<Kiss> {
        (self.stratum == 0).then(|| Kiss::from_code(self.reference_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const UNIX_2036_ROLLOVER: i64 = 2_085_978_496;

    #[test]
    fn unix_epoch_and_era_boundaries_match_rfc_5905_section_6() {
        // RFC 5905 figure 4: 1970-01-01 is NTP second 2,208,988,800 of era 0.
        assert_eq!(
            NtpTimestamp::from_unix_nanos(0),
            NtpTimestamp::from_parts(0x83AA_7E80, 0)
        );
        // Era 1 begins 2036-02-07 06:28:16 UTC: seconds wrap to 0.
        let rollover = NtpTimestamp::from_unix_nanos(i128::from(UNIX_2036_ROLLOVER) * 1_000_000_000);
        assert_eq!(rollover, NtpTimestamp::ZERO);
        // ... and resolves back to 2036, not 1900, with the default pivot.
        assert_eq!(
            rollover.to_unix_nanos(DEFAULT_ERA_PIVOT_UNIX_SECS),
            i128::from(UNIX_2036_ROLLOVER) * 1_000_000_000
        );
        // A second either side of the rollover is 2 s apart, not 136 years.
        let before = rollover.add_nanos(-1_000_000_000);
        let after = rollover.add_nanos(1_000_000_000);
        assert_eq!(before.seconds(), u32::MAX);
        assert_eq!(after.diff_nanos(before), 2_000_000_000);
        assert_eq!(before.diff_nanos(after), -2_000_000_000);
        // 1970 (a board with no RTC) resolves to 1970 too.
        assert_eq!(
            NtpTimestamp::from_unix_nanos(0).to_unix_nanos(DEFAULT_ERA_PIVOT_UNIX_SECS),
            0
        );
    }

    #[test]
    fn fraction_and_nanosecond_conversions_round_trip() {
        // 0.5 s is 2^31 in the fraction (RFC 5905 section 6).
        let t = NtpTimestamp::from_unix_nanos(1_500_000_000);
        assert_eq!(t.fraction(), 1 << 31);
        for ns in [0i64, 1, 999, 123_456_789, -1, -987_654_321, 86_400_000_000_123] {
            let base = NtpTimestamp::from_parts(0xE000_0000, 0x1234_5678);
            let moved = base.add_nanos(ns);
            assert!((moved.diff_nanos(base) - ns).abs() <= 1, "{ns}");
        }
        let pivot = DEFAULT_ERA_PIVOT_UNIX_SECS;
        // 2026 and 2065 (era 1).
        for unix_ns in [1_767_225_600_123_456_789i128, 3_000_000_000_000_000_001] {
            let back = NtpTimestamp::from_unix_nanos(unix_ns).to_unix_nanos(pivot);
            assert!((back - unix_ns).abs() <= 1, "{unix_ns}");
        }
    }

    #[test]
    fn short_format_is_16_16_seconds() {
        assert_eq!(NtpShort(0x0001_0000).to_nanos(), 1_000_000_000);
        assert_eq!(NtpShort(0x0000_8000).to_nanos(), 500_000_000);
        assert_eq!(NtpShort::from_nanos(250_000_000), NtpShort(0x4000));
        assert_eq!(NtpShort::from_nanos(-5), NtpShort(0));
        assert_eq!(NtpShort::from_nanos(i64::MAX), NtpShort(u32::MAX));
    }

    /// A server reply as chrony 4 sends it (stratum 2, poll 6, precision
    /// -25, refid 192.0.2.1), written out byte by byte.
    fn chrony_reply() -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0] = 0x24; // LI 0, VN 4, mode 4
        b[1] = 2;
        b[2] = 6;
        b[3] = 0xe7; // -25
        b[4..8].copy_from_slice(&[0x00, 0x00, 0x03, 0x4a]);
        b[8..12].copy_from_slice(&[0x00, 0x00, 0x00, 0x2c]);
        b[12..16].copy_from_slice(&[192, 0, 2, 1]);
        b[16..24].copy_from_slice(&[0xed, 0x28, 0x33, 0x10, 0x10, 0x00, 0x00, 0x00]);
        b[24..32].copy_from_slice(&[0x8b, 0x1f, 0x55, 0x9e, 0x63, 0x2e, 0x01, 0x9a]);
        b[32..40].copy_from_slice(&[0xed, 0x28, 0x33, 0x50, 0x20, 0x00, 0x00, 0x00]);
        b[40..48].copy_from_slice(&[0xed, 0x28, 0x33, 0x50, 0x20, 0x01, 0x00, 0x00]);
        b
    }

    #[test]
    fn a_server_reply_parses_field_by_field() {
        let bytes = chrony_reply();
        let r = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!((r.leap, r.version, r.mode), (Leap::None, 4, Mode::Server));
        assert_eq!((r.stratum, r.poll, r.precision), (2, 6, -25));
        // 0x034a / 65536 s = 12.848 ms; 0x2c / 65536 s = 0.671 ms.
        assert_eq!(r.root_delay.to_nanos(), 12_847_900);
        assert_eq!(r.root_dispersion.to_nanos(), 671_387);
        assert_eq!(r.reference_id, [192, 0, 2, 1]);
        assert_eq!(r.origin, NtpTimestamp(0x8b1f_559e_632e_019a));
        assert_eq!(r.receive.seconds(), 0xed28_3350);
        // 0x10000 of fraction is 2^-16 s.
        assert_eq!(r.transmit.diff_nanos(r.receive), 15_259);
        assert_eq!(r.kiss(), None);
        // emit is the exact inverse of parse.
        assert_eq!(r.to_bytes(), bytes);
    }

    #[test]
    fn a_client_request_carries_only_the_transmit_timestamp() {
        let t = NtpTimestamp(0x0123_4567_89ab_cdef);
        let b = Repr::client_request(t).to_bytes();
        assert_eq!(b[0], 0x23, "LI 0, VN 4, mode 3");
        assert!(b[1..40].iter().all(|&x| x == 0));
        assert_eq!(&b[40..], &t.0.to_be_bytes());
    }

    #[test]
    fn kiss_codes_are_read_from_stratum_0_packets() {
        let mut b = chrony_reply();
        b[0] = 0xe4; // LI 3, VN 4, mode 4
        b[1] = 0;
        for (code, kiss) in [
            (b"RATE", Kiss::Rate),
            (b"DENY", Kiss::Deny),
            (b"RSTR", Kiss::Rstr),
        ] {
            b[12..16].copy_from_slice(code);
            let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap();
            assert_eq!(r.kiss(), Some(kiss));
            assert_eq!(r.leap, Leap::Unknown);
            assert_eq!(kiss.code(), *code);
        }
        b[12..16].copy_from_slice(b"INIT");
        let r = Repr::parse(&Packet::new_unchecked(&b[..])).unwrap();
        assert_eq!(r.kiss(), Some(Kiss::Other(*b"INIT")));
    }

    #[test]
    fn trailers_are_bounded_extension_fields_then_an_optional_mac() {
        let header = chrony_reply();
        let with = |trailer: &[u8]| {
            let mut v = header.to_vec();
            v.extend_from_slice(trailer);
            Packet::new_checked(v).map(|_| ())
        };
        assert_eq!(with(&[]), Ok(()));
        assert_eq!(with(&[0; 20]), Ok(()), "key id + MD5");
        assert_eq!(with(&[0; 24]), Ok(()), "key id + SHA-1");
        assert_eq!(with(&[0; 4]), Err(WireError::BadTrailer), "crypto-NAK");
        // One 16-octet field, then a MAC.
        let mut ef = vec![0x01, 0x04, 0x00, 0x10];
        ef.extend_from_slice(&[0; 12]);
        assert_eq!(with(&ef), Ok(()));
        ef.extend_from_slice(&[0; 20]);
        assert_eq!(with(&ef), Ok(()));
        // Length under 16, not a multiple of 4, past the end, zero.
        for len in [8u16, 18, 64, 0] {
            let mut bad = vec![0x01, 0x04];
            bad.extend_from_slice(&len.to_be_bytes());
            bad.extend_from_slice(&[0; 28]);
            assert_eq!(with(&bad), Err(WireError::BadTrailer), "{len}");
        }
        assert_eq!(
            Packet::new_checked(&header[..47]).map(|_| ()),
            Err(WireError::Truncated)
        );
        let big = vec![0u8; MAX_PACKET_LEN + 1];
        assert_eq!(Packet::new_checked(&big[..]).map(|_| ()), Err(WireError::TooLong));
    }
}
