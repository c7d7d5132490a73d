//! DHCP decode -> encode -> decode must be a fixed point: whatever we parse,
//! we can write back and read the same meaning.
#![no_main]
use dhcp_engine::wire::dhcp::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(first) = Message::parse(data) else { return };
    let mut bytes = Vec::new();
    first.encode(&mut bytes);
    let second = Message::parse(&bytes).expect("our own encoding parses");
    let mut again = Vec::new();
    second.encode(&mut again);
    assert_eq!(bytes, again, "encoding is not stable");
});
