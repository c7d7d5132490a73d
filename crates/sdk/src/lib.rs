//! MirageSDK system interface: everything a service does with the kernel.
//!
//! This is the only crate of the workspace with `unsafe`; every block carries
//! a `SAFETY:` comment. Module map:
//! - [`runtime`], [`engine_role`], [`network_role`], [`actuator_role`]: the
//!   supervisor loop and the roles' loops, written once; a service supplies
//!   its routing, its engine, its outbound policy, its intents.
//! - [`channel`]: SOCK_SEQPACKET IPC, one postcard message per datagram.
//! - [`role`]: roles declared as data ([`role::RolePlan`]) and started
//!   once: the hello, the sandbox, the entry.
//! - [`spawn`]: roles started by re-executing our own binary with the fds
//!   each needs at fixed numbers.
//! - [`sandbox`]: privilege drop (uid/gid, capabilities, no_new_privs,
//!   rlimits, mount namespace, Landlock) and per-role seccomp allow-lists.
//! - [`engine_role`], [`kvm`]: the engine role as a process, or as a guest
//!   in a KVM micro-VM (`--sandbox kvm`) with its tender under seccomp.
//! - [`clock`]: CLOCK_BOOTTIME, wall-clock time, the kernel's clock
//!   discipline (`clock_adjtime`) for a time service's actuator.
//! - [`packet`]: AF_PACKET sockets with classic BPF filters and checksum
//!   offload flags; outbound frame policy.
//! - [`udp`]: UDP datagrams with the kernel's receive timestamp; fresh
//!   connected sockets whose source port the kernel draws.
//! - [`tcp`]: TCP connections a role opens without waiting.
//! - [`netlink`]: rtnetlink: links, addresses, routes, MTU, carrier events.
//! - [`fd`]: fixed fd numbers handed to roles.
//! - [`cpu`]: one CPU for a service whose roles pass every message on.
//! - [`files`]: atomic state files, resolv.conf, status.json, metrics.prom.
//! - [`config`]: TOML configuration with errors that name file, line and key.
//! - [`log`]: role-tagged logging to stderr.
//! - [`service`]: the convention every service follows: paths, common
//!   flags, config layering, the `status` command, metrics names, state files.
pub mod actuator_role;
pub mod channel;
pub mod clock;
pub mod config;
pub mod cpu;
pub mod engine_role;
pub mod fd;
pub mod files;
pub mod kvm;
pub mod log;
pub mod netlink;
pub mod network_role;
pub mod packet;
pub mod role;
pub mod runtime;
pub mod sandbox;
pub mod service;
pub mod spawn;
pub mod tcp;
pub mod udp;
