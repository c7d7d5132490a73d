//! What mirage-dhcp's supervisor and its roles agree on, as a library so
//! that the tests start a single role exactly as the supervisor does: the
//! roles' plans (ids, capabilities, seccomp tables, Landlock directories),
//! their fixed descriptor numbers and the settings their hello carries.
//! The binary (`src/main.rs`) is the rest: the CLI, the supervisor and the
//! roles' loops.
#![forbid(unsafe_code)]

pub mod plan;
