//! Foundations every Cairn crate stands on: identifiers, configuration, the data-plane
//! frame and its messages, erasure coding, block checksums and hall-aware placement.
//!
//! Everything here is pure (no disk, no sockets) except the frame codec's async writer,
//! so the same code runs in production and in the simulator (DESIGN.md invariant 8), the
//! data-plane connections every node and client opens (`transport`, and `lend`, which
//! hands the pages of requests and replies to a local socket), the process set-up the
//! daemons share (`logging`, `allocator`, and `metrics` with its HTTP endpoint), and
//! `durable_dir`, how they create directories that survive a power cut.

pub mod aligned;
pub mod allocator;
pub mod checksum;
pub mod config;
pub mod durable_dir;
pub mod erasure;
pub mod file_wire;
pub mod frame;
pub mod ids;
pub mod lend;
pub mod logging;
pub mod metrics;
pub mod namespace;
pub mod placement;
pub mod proto;
pub mod transport;
pub mod versions;
pub mod wire;
