//! mirage-dhcp's engine (the DHCPv4 client) as a KVM guest.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mirage_guest_rt::guest!(dhcp_engine::Client);
