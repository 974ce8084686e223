//! The partition table of the opened virtual disk, found by core's [`Scan`]: the page
//! reads each range it asks for through the [`crate::Inspector`] (so through the chain)
//! and hands the bytes back; the rows are core's entries in words.

use fvd_core::partition::{Feed, PartitionError, Scan, Table, SECTOR};
use wasm_bindgen::prelude::*;

/// One partition as the page lists it.
#[wasm_bindgen(getter_with_clone)]
pub struct PartitionRow {
    /// Its number (1-4 in an MBR, the entry's number in a GPT).
    pub index: u32,
    /// The type in words (with its code).
    pub kind: String,
    /// The GPT name (empty for an MBR entry).
    pub name: String,
    /// First byte on the virtual disk.
    pub start: f64,
    /// Bytes.
    pub size: f64,
    /// An MBR extended partition.
    pub extended: bool,
    /// Why the entry is not usable (empty when it is).
    pub error: String,
}

/// A running partition table scan.
#[wasm_bindgen]
pub struct Partitions {
    scan: Scan,
    want: Option<(u64, usize)>,
    label: String,
    rows: Vec<PartitionRow>,
}

fn error(e: PartitionError) -> JsError {
    JsError::new(&e.to_string())
}

fn bytes_of(lba: u64) -> f64 {
    lba.saturating_mul(SECTOR) as f64
}

#[wasm_bindgen]
impl Partitions {
    /// A scan of a virtual disk of `disk_size` bytes.
    #[wasm_bindgen(constructor)]
    pub fn new(disk_size: f64) -> Result<Partitions, JsError> {
        let size = crate::session::length(disk_size)
            .ok_or_else(|| JsError::new("the disk size is not a byte count"))?;
        let scan = Scan::new(size);
        Ok(Partitions {
            want: scan.first_read().map(|r| (r.offset, r.len)),
            scan,
            label: "none".into(),
            rows: Vec::new(),
        })
    }

    /// The virtual offset of the next read, if one is wanted.
    pub fn want_offset(&self) -> Option<f64> {
        self.want.map(|(o, _)| o as f64)
    }

    /// Bytes of the next read (whole sectors, at most 1 MiB).
    pub fn want_len(&self) -> u32 {
        self.want
            .map_or(0, |(_, l)| u32::try_from(l).unwrap_or(u32::MAX))
    }

    /// Takes the bytes of the wanted read.
    pub fn give(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        let Some((_, len)) = self.want.take() else {
            return Err(JsError::new("no partition read is outstanding"));
        };
        if bytes.len() < len {
            return Err(error(PartitionError::ShortRead {
                wanted: len as u64,
                got: bytes.len() as u64,
            }));
        }
        match self.scan.feed(bytes).map_err(error)? {
            Feed::Read(r) => self.want = Some((r.offset, r.len)),
            Feed::Done(Table::None) => self.label = "none".into(),
            Feed::Done(Table::Mbr(mbr)) => {
                self.label = format!("MBR (disk identifier {:#010x})", mbr.disk_id);
                self.rows = mbr
                    .partitions()
                    .map(|p| PartitionRow {
                        index: u32::from(p.index),
                        kind: format!("{} ({:#04x})", p.type_name().unwrap_or("unknown"), p.kind),
                        name: String::new(),
                        start: bytes_of(u64::from(p.first_lba)),
                        size: bytes_of(u64::from(p.sectors)),
                        extended: p.is_extended(),
                        error: String::new(),
                    })
                    .collect();
            }
            Feed::Done(Table::Gpt {
                header,
                from_backup,
                ..
            }) => {
                self.label = format!(
                    "GPT (disk GUID {}{})",
                    header.disk_guid,
                    if from_backup {
                        "; primary header damaged, backup used"
                    } else {
                        ""
                    }
                );
                for entry in header.entries(bytes).map_err(error)? {
                    self.rows.push(match entry {
                        Ok(p) => PartitionRow {
                            index: p.index,
                            kind: format!(
                                "{} ({})",
                                p.type_name().unwrap_or("unknown"),
                                p.type_guid
                            ),
                            name: p.name().to_string(),
                            start: bytes_of(p.first_lba),
                            size: bytes_of(p.sectors()),
                            extended: false,
                            error: String::new(),
                        },
                        Err(e) => PartitionRow {
                            index: match e {
                                PartitionError::EntryOutOfRange { index, .. } => index,
                                _ => 0,
                            },
                            kind: String::new(),
                            name: String::new(),
                            start: 0.0,
                            size: 0.0,
                            extended: false,
                            error: e.to_string(),
                        },
                    });
                }
            }
        }
        Ok(())
    }

    /// `none`, or the table's kind and identifier.
    pub fn label(&self) -> String {
        self.label.clone()
    }

    /// The partitions found.
    pub fn rows(&self) -> Vec<PartitionRow> {
        self.rows
            .iter()
            .map(|r| PartitionRow {
                kind: r.kind.clone(),
                name: r.name.clone(),
                error: r.error.clone(),
                ..*r
            })
            .collect()
    }
}
