//! The Cairn dataserver: immutable, checksummed shards on local disk, served over TCP
//! with the data-plane frame.
//!
//! - `store`: shards as files indexed in RocksDB (`index`), crash-safe put and delete
//! - `disk`, `uring`, `aligned`: the disk interface, its io_uring engine and fallback
//! - `server`, `client`: the TCP service and a client of it
//! - `scrub`: background and on-demand verification of data at rest; `repair` rebuilds
//!   the corrupt shards it finds from the rest of their stripes
//! - `orphans`: background deletion of shards no committed layout references
//! - `rebuild`: marks unreachable peers lost and rebuilds the shards of draining ones
//! - `metadata`: the questions a dataserver asks the metadata group
//! - `node`: start-up of a whole dataserver from its configuration

pub mod aligned;
pub mod client;
pub mod disk;
pub mod index;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod orphans;
pub mod rebuild;
pub mod repair;
pub mod scrub;
pub mod server;
pub mod store;
pub mod uring;
