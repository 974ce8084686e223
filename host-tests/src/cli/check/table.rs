//! The chunk table check (FORMAT.md §8) in memory that does not grow with the number of
//! problems: one pass counts (mapped, fragmented, corrupt and leaked chunks, the
//! frontier) with a bitset of the physical chunks in use; the problems and the leaked
//! runs are handed one by one to a sink, in chunk order, by a second walk that remembers
//! only the physical chunks named more than once. Nothing here does I/O.

use super::scan::Problem;
use fvd_core::format::table::{TableEntry, TABLE_EMPTY};
use std::collections::{HashMap, HashSet};

/// What the table says, in numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableScan {
    /// Entries mapping a physical chunk inside the data storage.
    pub mapped: u64,
    /// One past the highest such physical chunk.
    pub frontier: u64,
    /// Unreferenced physical chunks below the frontier.
    pub leaked: u64,
    /// Mapped chunks not stored right after the previous mapped chunk.
    pub fragmented: u64,
    /// Corrupt entries: each one a [`Problem`] that [`table_problems`] reports.
    pub corruptions: u64,
}

/// The table of a compact image and what bounds its entries.
#[derive(Clone, Copy, Debug)]
pub struct Table<'a> {
    /// The table region's bytes.
    pub bytes: &'a [u8],
    /// Entries in use.
    pub chunks: u64,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Where physical chunk 0 starts in the data storage.
    pub data_offset: u64,
    /// Length of the data storage.
    pub storage_len: u64,
}

/// One table entry as the check sees it.
enum Entry {
    Empty,
    /// Corrupt on its own (bit 31 set, or outside the data storage).
    Bad(Problem),
    /// A physical chunk inside the data storage.
    Mapped(u32),
}

impl Table<'_> {
    fn raw(&self, chunk: u64) -> u32 {
        let at = chunk as usize * 4;
        self.bytes.get(at..at + 4).map_or(TABLE_EMPTY, |b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }

    fn entry(&self, chunk: u64) -> Entry {
        match TableEntry::decode(self.raw(chunk)) {
            TableEntry::Empty => Entry::Empty,
            TableEntry::Invalid(entry) => Entry::Bad(Problem::DirtyEntry { chunk, entry }),
            TableEntry::Mapped(p) => {
                let physical = u64::from(p);
                let end = (physical + 1)
                    .checked_mul(self.chunk_size)
                    .and_then(|len| len.checked_add(self.data_offset));
                if end.is_none_or(|end| end > self.storage_len) {
                    Entry::Bad(Problem::BeyondStorage {
                        chunk,
                        physical,
                        end,
                        storage_len: self.storage_len,
                    })
                } else {
                    Entry::Mapped(p)
                }
            }
        }
    }

    /// The counting pass: the numbers, the bitset of physical chunks in use, and the
    /// physical chunks named more than once.
    fn count(&self) -> (TableScan, Bits, HashSet<u32>) {
        let mut scan = TableScan::default();
        let mut seen = Bits::default();
        let mut shared = HashSet::new();
        let mut previous: Option<u64> = None;
        for chunk in 0..self.chunks {
            match self.entry(chunk) {
                Entry::Empty => {}
                Entry::Bad(_) => scan.corruptions += 1,
                Entry::Mapped(p) => {
                    let physical = u64::from(p);
                    if previous.is_some_and(|prev| prev + 1 != physical) {
                        scan.fragmented += 1;
                    }
                    previous = Some(physical);
                    scan.mapped += 1;
                    if seen.insert(physical) {
                        scan.frontier = scan.frontier.max(physical + 1);
                    } else {
                        // A later chunk naming it: the one a repair unmaps.
                        scan.corruptions += 1;
                        shared.insert(p);
                    }
                }
            }
        }
        scan.leaked = scan.frontier - seen.count_below(scan.frontier);
        (scan, seen, shared)
    }
}

/// Checks `table`: the numbers only.
pub fn scan_table(table: Table<'_>) -> TableScan {
    table.count().0
}

/// Hands every corrupt entry of `table` to `sink`, in chunk order: bit 31 set, outside
/// the data storage, or naming a physical chunk an earlier chunk names (the earlier one
/// is kept by a repair).
pub fn table_problems<E>(
    table: Table<'_>,
    sink: &mut dyn FnMut(Problem) -> Result<(), E>,
) -> Result<(), E> {
    let (scan, _, shared) = table.count();
    if scan.corruptions == 0 {
        return Ok(());
    }
    let mut first: HashMap<u32, u64> = HashMap::new();
    for chunk in 0..table.chunks {
        match table.entry(chunk) {
            Entry::Empty => {}
            Entry::Bad(problem) => sink(problem)?,
            Entry::Mapped(p) if shared.contains(&p) => match first.get(&p) {
                Some(&kept) => sink(Problem::SharedChunk {
                    chunk,
                    first: kept,
                    physical: u64::from(p),
                })?,
                None => {
                    first.insert(p, chunk);
                }
            },
            Entry::Mapped(_) => {}
        }
    }
    Ok(())
}

/// Hands every run `[start, end)` of unreferenced physical chunks below the frontier of
/// `table` to `sink`, in order.
pub fn table_leaks<E>(
    table: Table<'_>,
    sink: &mut dyn FnMut(u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    let (scan, seen, _) = table.count();
    let mut at = 0;
    while at < scan.frontier {
        if seen.contains(at) {
            at += 1;
            continue;
        }
        let start = at;
        while at < scan.frontier && !seen.contains(at) {
            at += 1;
        }
        sink(start, at)?;
    }
    Ok(())
}

/// A set of physical chunk numbers (below 2^31, so at most 256 MiB however the table is
/// filled; as large as the highest number in it).
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    /// Adds `n`; false when it was there already.
    fn insert(&mut self, n: u64) -> bool {
        let word = (n / 64) as usize;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let bit = 1u64 << (n % 64);
        let had = self.0[word] & bit != 0;
        self.0[word] |= bit;
        !had
    }

    fn contains(&self, n: u64) -> bool {
        self.0
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1u64 << (n % 64)) != 0)
    }

    /// How many members are below `end`.
    fn count_below(&self, end: u64) -> u64 {
        let full = (end / 64) as usize;
        let mut count: u64 = self
            .0
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if let Some(w) = self.0.get(full) {
            let mask = (1u64 << (end % 64)) - 1;
            count += u64::from((w & mask).count_ones());
        }
        count
    }
}

/// Sets table entry `chunk` of `bytes` to EMPTY.
pub fn unmap(bytes: &mut [u8], chunk: u64) {
    let at = chunk as usize * 4;
    bytes[at..at + 4].copy_from_slice(&TABLE_EMPTY.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(entries: &[u32]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.to_le_bytes()).collect()
    }

    #[test]
    fn leaks_duplicates_and_ranges() {
        const E: u32 = TABLE_EMPTY;
        let t = bytes(&[0, E, 3, 0, 0x8000_0001, 99, 5]);
        let table = Table {
            bytes: &t,
            chunks: 7,
            chunk_size: 4096,
            data_offset: 8192,
            storage_len: 8192 + 6 * 4096,
        };
        let scan = scan_table(table);
        assert_eq!(scan.mapped, 4);
        assert_eq!(scan.frontier, 6);
        assert_eq!(scan.leaked, 3);
        assert_eq!(scan.corruptions, 3);
        // 0 -> 3 -> 0 -> 5: three jumps.
        assert_eq!(scan.fragmented, 3);
        let mut leaks = Vec::new();
        table_leaks::<()>(table, &mut |a, b| {
            leaks.push((a, b));
            Ok(())
        })
        .unwrap();
        assert_eq!(leaks, vec![(1, 3), (4, 5)]);
        let mut problems = Vec::new();
        table_problems::<()>(table, &mut |p| {
            problems.push(p);
            Ok(())
        })
        .unwrap();
        let kinds: Vec<_> = problems.iter().map(Problem::kind).collect();
        assert_eq!(
            kinds,
            [
                "table-entry-duplicate",
                "table-entry-dirty",
                "table-entry-beyond-storage"
            ]
        );
        assert_eq!(
            problems[0],
            Problem::SharedChunk {
                chunk: 3,
                first: 0,
                physical: 0
            }
        );
    }

    #[test]
    fn a_table_naming_one_chunk_everywhere_keeps_one_entry_of_bookkeeping() {
        let t = vec![0u8; 4 * 100_000];
        let table = Table {
            bytes: &t,
            chunks: 100_000,
            chunk_size: 4096,
            data_offset: 0,
            storage_len: 4096,
        };
        let (scan, seen, shared) = table.count();
        assert_eq!(scan.corruptions, 99_999);
        assert_eq!(scan.frontier, 1);
        assert_eq!((seen.0.len(), shared.len()), (1, 1));
        let mut count = 0u64;
        table_problems::<()>(table, &mut |_| {
            count += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(count, 99_999);
    }
}
