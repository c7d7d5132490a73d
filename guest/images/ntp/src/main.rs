//! mirage-ntp's engine (the NTPv4 client) as a KVM guest. Its randomness
//! (the transmit timestamps, RFC 5905 section 9.1's poll spread) comes from
//! the seed in `Start`, which the supervisor draws from getrandom for each
//! engine it starts, as for a process engine.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mirage_guest_rt::guest!(ntp_engine::Ntp);
