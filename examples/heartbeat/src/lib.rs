//! docs/sdk.md, the guide to writing a service on MirageSDK, as this
//! crate's documentation: its code blocks are the crate's doc tests, so
//! every snippet in the guide compiles and runs in CI. The example service
//! itself is the binary (`src/main.rs`) and its engine, `heartbeat-engine`.
#![doc = include_str!("../../../docs/sdk.md")]
#![forbid(unsafe_code)]

pub mod plan;
