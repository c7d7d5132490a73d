//! A strict DNS message codec (RFC 1035), shared by mirage-ntp's engine
//! (host names and pools) and the DNS service's engine.
//!
//! In smoltcp's manner a message has a wire side and a meaning side, but a
//! DNS message cannot be read in place: names are compressed (RFC 1035
//! §4.1.4), so [`Message::parse`] decodes the whole message into owned
//! values ([`Name`], [`Record`], [`RData`]) once, checking everything, and
//! [`Message::emit`] writes them back with name compression. The header
//! alone can be read without allocating ([`Header::parse`]).
//!
//! # Strictness
//! What parses is a message a careful resolver would also accept; all else
//! is an [`Error`], never a guess:
//! - names: labels of at most 63 octets, names of at most 255 (RFC 1035
//!   §2.3.4); the extended label types 0b01/0b10 are refused (RFC 6891
//!   §5 retired them); a compression pointer must point strictly backwards
//!   from the start of the labels it ends, and never into the header, so
//!   loops and forward references cannot be expressed at all; every pointer
//!   followed counts against [`Limits::max_pointers`] for the message;
//! - records: at most [`Limits::max_records`] in all four sections (checked
//!   against the header's counts before anything is allocated), and their
//!   decoded size (names expanded, RDATA) at most
//!   [`Limits::max_decoded_bytes`]; typed RDATA must fill its RDLENGTH
//!   exactly; bytes after the last record are an error;
//! - EDNS (RFC 6891 §6.1.1): at most one OPT record, owned by the root, in
//!   the additional section only; it becomes [`Message::edns`];
//! - types without a typed form, and A/AAAA outside class IN, are kept as
//!   opaque RDATA (RFC 3597 §5) and written back byte for byte.
//!
//! # Case
//! Names keep the case they arrived in. `==` on [`Name`] ignores ASCII case
//! (RFC 4343), [`Name::eq_exact`] does not: a resolver that randomizes the
//! case of its query (the 0x20 bit, draft-vixie-dnsext-dns0x20) checks the
//! echoed question with it.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod message;
mod name;

pub use message::{
    Class, Edns, EdnsOption, HEADER_LEN, Header, Message, Opcode, Question, RData, Rcode, Record, Soa, Type,
};
pub use name::{MAX_LABEL_LEN, MAX_NAME_LEN, Name};

/// Why a message did not parse, a name did not build, or a message did
/// not encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The data ends inside a field, or a count promises more than is there.
    Truncated,
    /// A label longer than 63 octets (RFC 1035 §2.3.4).
    LabelTooLong,
    /// A name longer than 255 octets in wire form (RFC 1035 §2.3.4).
    NameTooLong,
    /// A name given as text with an empty label or a character we refuse.
    BadName,
    /// A label type other than a plain label or a pointer (RFC 6891 §5).
    BadLabelType,
    /// A compression pointer that does not point strictly backwards into the
    /// message body (a loop, a forward reference or into the header).
    BadPointer,
    /// More compression pointers than [`Limits::max_pointers`].
    PointerBudget,
    /// More records than [`Limits::max_records`].
    RecordBudget,
    /// More decoded bytes than [`Limits::max_decoded_bytes`].
    DecodedBudget,
    /// Typed RDATA that does not fill its RDLENGTH exactly, or a TXT
    /// record without a string (RFC 1035 §3.3.14).
    BadRdata,
    /// Bytes after the last record.
    TrailingData,
    /// An OPT record that is not the only one, not owned by the root, or not
    /// in the additional section (RFC 6891 §6.1.1).
    BadOpt,
    /// The message does not fit what its encoding can express (more than
    /// 65535 records in a section, RDATA over 65535 octets).
    TooLarge,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self {
            Error::Truncated => "message truncated",
            Error::LabelTooLong => "label longer than 63 octets",
            Error::NameTooLong => "name longer than 255 octets",
            Error::BadName => "malformed name",
            Error::BadLabelType => "unknown label type",
            Error::BadPointer => "compression pointer not strictly backwards",
            Error::PointerBudget => "too many compression pointers",
            Error::RecordBudget => "too many records",
            Error::DecodedBudget => "decoded message too large",
            Error::BadRdata => "malformed RDATA",
            Error::TrailingData => "bytes after the last record",
            Error::BadOpt => "misplaced or repeated OPT record",
            Error::TooLarge => "message too large to encode",
        };
        f.write_str(what)
    }
}

/// Work budgets for one parse. The defaults bound a parse of any datagram
/// (at most 64 KiB) to a few hundred pointer hops and 64 KiB of output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Compression pointers followed in the whole message.
    pub max_pointers: u32,
    /// Records in the four sections together (questions included).
    pub max_records: u32,
    /// Names (in wire form, expanded) and RDATA decoded, in octets.
    pub max_decoded_bytes: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_pointers: 512,
            max_records: 256,
            max_decoded_bytes: 65_536,
        }
    }
}
