//! What a build reads and writes, in one place (DESIGN.md, "Versions and rolling
//! upgrades"). Every binary prints it (`cairn-<node> versions`), and a rolling upgrade
//! compares the running nodes' versions with the replacing binaries' before it stops
//! anything: each of two builds side by side must read what the other writes.

use serde::{Deserialize, Serialize};

use crate::frame;

/// Raft entry formats this build applies. Voters write the format the group committed
/// (`SetEntryFormat`): a new group starts at the newest one its members all apply, and a
/// running group's is raised only once every member reads the new one (`cairnctl
/// finalize-upgrade`): a voter of the previous build keeps applying what a newer leader
/// writes until then. A group with none committed writes [`ENTRY_FORMAT_MIN`].
///
/// - 1: the first format.
/// - 2: a layout commit may name no write session ([`SESSIONLESS_COMMIT_FORMAT`]).
/// - 3: layouts are stored one key per stripe, and `CommitStripes` commits only the
///   stripes that changed ([`STRIPE_KEYS_FORMAT`]).
pub const ENTRY_FORMAT_MIN: u16 = 1;
pub const ENTRY_FORMAT_MAX: u16 = if cfg!(feature = "protocol-next") { 4 } else { 3 };
const _: () = assert!(ENTRY_FORMAT_MIN <= ENTRY_FORMAT_MAX);

/// The entry format from which `CommitLayout { session: 0 }` commits without a write
/// session (the layout version alone guards it); in older entries it is refused as a
/// session that expired, which is how a writer learns it must open one.
pub const SESSIONLESS_COMMIT_FORMAT: u16 = 2;

/// The entry format from which voters store a file's layout one key per stripe and apply
/// `CommitStripes`. Before it a layout is one value, which a voter of the build before
/// reads (from a snapshot, too); a layout of that form is split when it is next written.
pub const STRIPE_KEYS_FORMAT: u16 = 3;

/// Versions of the gRPC API (`MetaRequest::api_version`) this build serves. A request
/// that names none is of version 1. Clients send the oldest version, so a server of the
/// build before understands them; a newer request is refused with a typed error rather
/// than half understood.
pub const API_VERSION_MIN: u32 = 1;
pub const API_VERSION_MAX: u32 = if cfg!(feature = "protocol-next") { 2 } else { 1 };
const _: () = assert!(API_VERSION_MIN <= API_VERSION_MAX && API_VERSION_MAX <= API_VERSION_MIN + 1);

/// Format of the dataserver's shard index records: a build writes this one and reads it
/// and every older one.
pub const SHARD_INDEX_FORMAT: u32 = 1;

/// An inclusive range of versions a build reads; it writes the lowest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub min: u32,
    pub max: u32,
}

impl Span {
    fn reads(self, v: u32) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

/// One build's versions, as `cairn-<node> versions` prints them (one JSON line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// Data-plane frames: read `min..=max`, requests written in `min`.
    pub frame: Span,
    /// gRPC API: served `min..=max`, requests sent in `min`.
    pub api: Span,
    /// Raft entries applied; written in the group's committed format.
    pub entry_format: Span,
    /// Shard index records: written in this format, read up to it.
    pub shard_index: u32,
}

impl Versions {
    pub fn this_build() -> Versions {
        Versions {
            frame: Span {
                min: u32::from(frame::VERSION_MIN),
                max: u32::from(frame::VERSION),
            },
            api: Span {
                min: API_VERSION_MIN,
                max: API_VERSION_MAX,
            },
            entry_format: Span {
                min: u32::from(ENTRY_FORMAT_MIN),
                max: u32::from(ENTRY_FORMAT_MAX),
            },
            shard_index: SHARD_INDEX_FORMAT,
        }
    }

    /// The one JSON line `cairn-<node> versions` prints.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(line: &str) -> Result<Versions, serde_json::Error> {
        serde_json::from_str(line.trim())
    }

    /// Why nodes of build `self` cannot run beside and then replace nodes of build
    /// `running`, in a group whose committed entry format is `entry_format`; `None` when
    /// they can. Each side must read the requests the other writes, the new build the
    /// entries and shard index records already written, and, so that the roll can be
    /// undone, the old build the index records the new one writes.
    pub fn cannot_replace(&self, running: &Versions, entry_format: u32) -> Option<String> {
        let both_ways = |what: &str, new: Span, old: Span| {
            if !new.reads(old.min) {
                Some(format!(
                    "{what}: the new build reads {}..={}, the running one writes {}",
                    new.min, new.max, old.min
                ))
            } else if !old.reads(new.min) {
                Some(format!(
                    "{what}: the running build reads {}..={}, the new one writes {}",
                    old.min, old.max, new.min
                ))
            } else {
                None
            }
        };
        both_ways("data-plane frames", self.frame, running.frame)
            .or_else(|| both_ways("gRPC API", self.api, running.api))
            .or_else(|| {
                (!self.entry_format.reads(entry_format)).then(|| {
                    format!(
                        "metadata entries: the group writes format {entry_format} and the new build reads {}..={}{}",
                        self.entry_format.min,
                        self.entry_format.max,
                        if entry_format > self.entry_format.max {
                            " (an upgrade finalized past this build cannot be rolled back)"
                        } else {
                            ""
                        }
                    )
                })
            })
            .or_else(|| {
                (self.shard_index != running.shard_index).then(|| {
                    format!(
                        "shard index records: the new build writes format {} and the running one {}; \
                         each must read the other's",
                        self.shard_index, running.shard_index
                    )
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(frame: (u32, u32), entries: (u32, u32)) -> Versions {
        Versions {
            frame: Span {
                min: frame.0,
                max: frame.1,
            },
            api: Span { min: 1, max: frame.1 },
            entry_format: Span {
                min: entries.0,
                max: entries.1,
            },
            shard_index: 1,
        }
    }

    #[test]
    fn a_build_and_the_next_replace_each_other_until_the_entry_format_is_raised() {
        let n = build((1, 1), (1, 1));
        let next = build((1, 2), (1, 2));
        assert_eq!(next.cannot_replace(&n, 1), None);
        assert_eq!(n.cannot_replace(&next, 1), None);
        // Finalized: the group writes format 2, which build N cannot apply.
        let back = n
            .cannot_replace(&next, 2)
            .expect("a roll back past the format is refused");
        assert!(
            back.contains("format 2") && back.contains("cannot be rolled back"),
            "{back}"
        );
        assert_eq!(next.cannot_replace(&next, 2), None);
    }

    #[test]
    fn a_build_that_stops_reading_what_the_running_one_writes_is_refused() {
        let n = build((1, 1), (1, 1));
        // Writes frames of version 2, which N does not read.
        let skip = build((2, 3), (1, 1));
        let why = skip.cannot_replace(&n, 1).expect("refused");
        assert!(why.contains("data-plane frames"), "{why}");
        // Reads entries of format 2 and up only: the log holds format 1.
        let dropped = build((1, 1), (2, 2));
        assert!(dropped.cannot_replace(&n, 1).is_some());
        let mut index = build((1, 1), (1, 1));
        index.shard_index = 2;
        assert!(index.cannot_replace(&n, 1).expect("refused").contains("shard index"));
    }

    #[test]
    fn this_build_can_replace_itself() {
        let me = Versions::this_build();
        assert_eq!(me.cannot_replace(&me, u32::from(ENTRY_FORMAT_MIN)), None);
        assert_eq!(Versions::parse(&me.json()).expect("decodes"), me);
        assert!(Versions::parse("{\"frame\": 1}").is_err());
    }
}
