//! mirage-dns's engine (the caching forwarder) as a KVM guest. Its
//! randomness (upstream query ids, the cache's and merge table's keys)
//! comes from the seed in `Start`, which the supervisor draws from
//! getrandom for each engine it starts, as for a process engine. Its
//! memory is the service's (`kvm_memory_mib`, by default sized for the
//! configured cache): the cache lives on the guest's heap.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mirage_guest_rt::guest!(dns_engine::Forwarder);
