//! mirage-heartbeat's engine as a KVM guest.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mirage_guest_rt::guest!(heartbeat_engine::Heartbeat);
