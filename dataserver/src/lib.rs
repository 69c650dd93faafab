//! The Cairn dataserver: immutable, checksummed shards on local disk, served over TCP
//! with the data-plane frame.
//!
//! - `store`: shards as files indexed in RocksDB (`index`), crash-safe put and delete
//! - `disk`, `uring`, `aligned`: the disk interface, its io_uring engine and fallback
//! - `server`, `client`: the TCP service and a client of it
//! - `scrub`: background and on-demand verification of data at rest
//! - `orphans`: background deletion of shards no committed layout references
//! - `node`: start-up of a whole dataserver from its configuration

pub mod aligned;
pub mod client;
pub mod disk;
pub mod index;
pub mod metrics;
pub mod node;
pub mod orphans;
pub mod scrub;
pub mod server;
pub mod store;
pub mod uring;
