//! Whole inbound frames: framing, then the DHCP message, then the lease
//! builder, exactly as the engine does before it decides anything.
#![no_main]
use dhcp_engine::lease::lease_from_reply;
use dhcp_engine::wire::dhcp::Message;
use dhcp_engine::wire::frame::{Inbound, parse_frame};
use libfuzzer_sys::fuzz_target;
use mirage_ipc::{Instant, Limits};

fuzz_target!(|input: (bool, &[u8])| {
    let (offloaded, frame) = input;
    if let Ok(Inbound::Dhcp(udp)) = parse_frame(frame, offloaded)
        && let Ok(msg) = Message::parse(udp.payload)
        && let Ok(lease) = lease_from_reply(&msg, udp.src_ip, Instant(1000), &Limits::default())
    {
        // Whatever the builder accepts, the policy accepts.
        assert_eq!(lease.check(&Limits::default()), Ok(()));
    }
});
