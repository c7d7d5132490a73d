//! A programmable hostile DHCP server for tests (owned by the hostile-suite work).
#![allow(dead_code)]
