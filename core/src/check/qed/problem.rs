//! What can be wrong with a QED image: a table entry that must not be followed, with the
//! numbers that explain it and the words a report shows.

use core::fmt;

/// What holds a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Owner {
    /// The header area.
    Header,
    /// The L1 table.
    L1Table,
    /// The L2 table named by this L1 entry.
    L2Table {
        /// The L1 index.
        l1: u64,
    },
    /// The data cluster of this guest offset.
    Data {
        /// Guest offset of the cluster.
        guest: u64,
    },
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Header => write!(f, "the header area"),
            Owner::L1Table => write!(f, "the L1 table"),
            Owner::L2Table { l1 } => write!(f, "the L2 table of L1 entry {l1}"),
            Owner::Data { guest } => write!(f, "the data cluster of guest offset {guest}"),
        }
    }
}

/// Which table entry a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Place {
    /// L1 entry `index`.
    L1 {
        /// The L1 index.
        index: u64,
    },
    /// Entry `index` of the L2 table named by L1 entry `l1`.
    L2 {
        /// The L1 index naming the table.
        l1: u64,
        /// The L2 index.
        index: u64,
        /// The guest offset the entry maps.
        guest: u64,
    },
}

/// What is wrong with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Fault {
    /// Not a multiple of the cluster size.
    Misaligned,
    /// The zero-cluster marker 1, which means nothing in the L1 table.
    ZeroMarkerInL1,
    /// Inside the header area.
    InHeader,
    /// Past the end of the file (for an L2 table: not wholly inside it).
    PastEnd,
    /// Its clusters are already used by something else.
    Overlap(Owner),
    /// The L2 table it names holds this many entries no writer produces (misaligned or
    /// inside the header): whatever lies there is not a table, perhaps guest data.
    NotATable(u64),
}

/// One corruption: a table entry that must not be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QedProblem {
    /// The entry.
    pub place: Place,
    /// Its raw value.
    pub value: u64,
    /// Byte offset of the entry in the file (where a repair writes 0).
    pub entry_at: u64,
    /// What is wrong.
    pub fault: Fault,
    /// The file's length, for the message.
    pub file_len: u64,
    /// The cluster size, for the message.
    pub cluster_size: u64,
}

impl QedProblem {
    /// A stable name for reports.
    pub fn kind(&self) -> &'static str {
        match (self.place, self.fault) {
            (Place::L1 { .. }, Fault::Misaligned) => "l1-entry-misaligned",
            (_, Fault::ZeroMarkerInL1) => "l1-entry-zero-marker",
            (Place::L1 { .. }, Fault::InHeader) => "l1-entry-in-header",
            (Place::L1 { .. }, Fault::PastEnd) => "l1-entry-past-end",
            (Place::L1 { .. }, Fault::Overlap(_)) => "l2-table-overlap",
            (Place::L2 { .. }, Fault::Misaligned) => "l2-entry-misaligned",
            (Place::L2 { .. }, Fault::InHeader) => "l2-entry-in-header",
            (Place::L2 { .. }, Fault::PastEnd) => "l2-entry-past-end",
            (Place::L2 { .. }, Fault::Overlap(_)) => "data-cluster-overlap",
            (_, Fault::NotATable(_)) => "l1-entry-not-a-table",
        }
    }
}

impl fmt::Display for QedProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.value;
        match self.place {
            Place::L1 { index } => write!(f, "L1 entry {index} ({value:#x}): ")?,
            Place::L2 { l1, index, guest } => write!(
                f,
                "L2 entry {index} of L1 entry {l1} (guest offset {guest}, {value:#x}): "
            )?,
        }
        let what = match self.place {
            Place::L1 { .. } => "the L2 table",
            Place::L2 { .. } => "the data cluster",
        };
        match self.fault {
            Fault::Misaligned => write!(
                f,
                "not a multiple of the cluster size {}",
                self.cluster_size
            ),
            Fault::ZeroMarkerInL1 => {
                write!(f, "the zero-cluster marker is not valid in the L1 table")
            }
            Fault::InHeader => write!(f, "{what} lies inside the header area"),
            Fault::PastEnd => write!(
                f,
                "{what} lies past the end of the {}-byte file",
                self.file_len
            ),
            Fault::Overlap(owner) => write!(f, "{what} overlaps {owner}"),
            Fault::NotATable(bad) => write!(
                f,
                "{what} holds {bad} entries no writer produces (misaligned or inside the header): it is not a table"
            ),
        }
    }
}
