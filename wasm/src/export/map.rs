//! `fvd-img map --output json` of the chain the page opened: each run of the virtual
//! disk found through the engine's map, then, where the image leaves a run to its base,
//! through the chain of the layers below it (one read-only chain per depth, as `fvd-img
//! map` opens each base), so every run has the depth and file offset the CLI reports.
//! Core's `report::map` merges the runs and writes them.
//!
//! What a run left to the base becomes is core's rule (`report::map::base_step`, which
//! `fvd-img map` follows too); the page cannot look for holes in a raw base, so a raw base
//! stores every byte it has.

use crate::session::{FileRead, Inspector};
use fvd_core::report::map::{base_step, BaseStep, Below, MapEntry, MapKind, MapWriter};
use wasm_bindgen::prelude::*;

struct LayerFiles {
    first: Vec<u8>,
    image_len: f64,
    data_len: Option<f64>,
    key: u32,
}

/// A map export being driven.
#[wasm_bindgen]
pub struct MapExport {
    layers: Vec<LayerFiles>,
    raw_base_len: Option<u64>,
    /// `chains[k]` is layers `k..` opened as a chain.
    chains: Vec<Inspector>,
    /// The chain whose read is outstanding.
    reading: Option<usize>,
    opened: bool,
    size: u64,
    at: u64,
    /// The map request in flight: the chain asked, and the longest run still wanted.
    query: Option<(usize, u64)>,
    writer: MapWriter,
    text: String,
    done: bool,
}

impl Default for MapExport {
    fn default() -> Self {
        Self::new()
    }
}

#[wasm_bindgen]
impl MapExport {
    /// An export with no layer yet.
    #[wasm_bindgen(constructor)]
    pub fn new() -> MapExport {
        MapExport {
            layers: Vec::new(),
            raw_base_len: None,
            chains: Vec::new(),
            reading: None,
            opened: false,
            size: 0,
            at: 0,
            query: None,
            writer: MapWriter::new(),
            text: String::new(),
            done: false,
        }
    }

    /// Adds the next layer, as [`Inspector::add_layer`] takes it.
    pub fn add_layer(&mut self, first: &[u8], image_len: f64, data_len: Option<f64>, key: u32) {
        self.layers.push(LayerFiles {
            first: first.to_vec(),
            image_len,
            data_len,
            key,
        });
    }

    /// Opens one chain per depth; `raw_base_len` is the length of the last layer's raw
    /// base file when the page has it.
    pub fn start(&mut self, raw_base_len: Option<f64>) -> Result<(), JsError> {
        self.raw_base_len = raw_base_len.and_then(crate::session::length);
        for k in 0..self.layers.len() {
            let mut chain = Inspector::new();
            for l in &self.layers[k..] {
                chain.add_layer(&l.first, l.image_len, l.data_len, l.key)?;
            }
            chain.start(self.raw_base_len.is_some())?;
            self.chains.push(chain);
        }
        Ok(())
    }

    /// The next file read (`layer` counts from the top image), or nothing once the
    /// document is ready.
    pub fn next_read(&mut self) -> Result<Option<FileRead>, JsError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if !self.opened {
                for (k, chain) in self.chains.iter_mut().enumerate() {
                    if let Some(mut read) = chain.next_read() {
                        read.layer = read.layer.saturating_add(k as u32);
                        self.reading = Some(k);
                        return Ok(Some(read));
                    }
                }
                for chain in &self.chains {
                    chain.open_result()?;
                }
                self.opened = true;
                self.size = self.chain(0)?.virtual_size().unwrap_or(0.0) as u64;
                continue;
            }
            let Some((k, max)) = self.query else {
                if self.at >= self.size {
                    let writer = self.writer;
                    writer.finish(&mut self.text).map_err(write_error)?;
                    self.done = true;
                    continue;
                }
                self.ask(0, self.at, self.size - self.at)?;
                continue;
            };
            let chain = self.chains.get_mut(k).ok_or_else(no_chain)?;
            if let Some(mut read) = chain.next_read() {
                read.layer = read.layer.saturating_add(k as u32);
                self.reading = Some(k);
                return Ok(Some(read));
            }
            let run = chain.finish_map()?;
            self.query = None;
            self.answer(
                k,
                max,
                run.offset as u64,
                run.len as u64,
                &run.state(),
                run.file_offset(),
            )?;
        }
    }

    /// Hands back the bytes of the outstanding read (fewer at the end of the file).
    pub fn complete_read(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        let k = self
            .reading
            .take()
            .ok_or_else(|| JsError::new("no read is outstanding"))?;
        self.chains
            .get_mut(k)
            .ok_or_else(no_chain)?
            .complete_read(bytes)
    }

    /// Reports that the outstanding read failed.
    pub fn fail_read(&mut self) {
        if let Some(chain) = self.reading.take().and_then(|k| self.chains.get_mut(k)) {
            chain.fail_read();
        }
    }

    /// The document (once `next_read` returns nothing).
    pub fn json(&self) -> Result<String, JsError> {
        if !self.done {
            return Err(JsError::new("the map has not finished"));
        }
        Ok(self.text.clone())
    }
}

fn no_chain() -> JsError {
    JsError::new("no chain at that depth")
}

fn write_error(_: core::fmt::Error) -> JsError {
    JsError::new("the document could not be written")
}

impl MapExport {
    fn chain(&self, k: usize) -> Result<&Inspector, JsError> {
        self.chains.get(k).ok_or_else(no_chain)
    }

    /// The length of the file layer `k`'s FVD data lives in (`None` for QED).
    fn storage_len(&self, k: usize) -> Option<u64> {
        let layer = self.layers.get(k)?;
        if fvd_core::probe::probe(&layer.first) != fvd_core::probe::Probe::Fvd {
            return None;
        }
        crate::session::length(layer.data_len.unwrap_or(layer.image_len))
    }

    fn ask(&mut self, k: usize, offset: u64, max: u64) -> Result<(), JsError> {
        self.chains
            .get_mut(k)
            .ok_or_else(no_chain)?
            .begin_map(offset as f64, max as f64)?;
        self.query = Some((k, max));
        Ok(())
    }

    /// Takes the run chain `k` mapped at the cursor: ends the run (written when final)
    /// or asks the chain one level deeper.
    fn answer(
        &mut self,
        k: usize,
        max: u64,
        run_offset: u64,
        run_len: u64,
        state: &str,
        file_offset: f64,
    ) -> Result<(), JsError> {
        let at = self.at;
        let len = run_offset
            .saturating_add(run_len)
            .saturating_sub(at)
            .min(max);
        if len == 0 {
            return Err(JsError::new(&format!(
                "the engine mapped an empty run at {at}"
            )));
        }
        let entry = |kind, zero, data, offset| MapEntry {
            start: at,
            length: len,
            kind,
            depth: 0,
            zero,
            data,
            offset,
        };
        let found = match state {
            "data" => {
                let stored = (file_offset as u64).saturating_add(at - run_offset);
                match self.storage_len(k) {
                    // FVD data past the end of its storage file reads as zeros (`fvd-img
                    // map` finds no data there); QED clusters are data as a whole.
                    Some(end) if stored >= end => entry(MapKind::Local, true, true, Some(stored)),
                    Some(end) => MapEntry {
                        length: len.min(end - stored),
                        ..entry(MapKind::Local, false, true, Some(stored))
                    },
                    None => entry(MapKind::Local, false, true, Some(stored)),
                }
            }
            "zero" => entry(MapKind::Zero, true, false, None),
            "base" => {
                let below = k + 1;
                let layer = match self.chains.get(below) {
                    Some(chain) => Below::Mappable {
                        size: chain.virtual_size().unwrap_or(0.0) as u64,
                    },
                    // The page hands the raw base over as a file it cannot look into.
                    None => match self.raw_base_len {
                        Some(size) => Below::Raw { size },
                        None => Below::Unknown,
                    },
                };
                match base_step(at, len, layer) {
                    BaseStep::Descend { len } => return self.ask(below, at, len),
                    BaseStep::Entry(entry) => entry,
                }
            }
            _ => entry(MapKind::Unallocated, true, false, None),
        };
        // Every level above `k` sees the run through its base.
        let found = (0..k).fold(found, |run, _| run.seen_through_base());
        self.at = at.saturating_add(found.length);
        self.writer.push(&mut self.text, found).map_err(write_error)
    }
}
