//! qemu-io's commands about the disk as a whole: `length`, `info` (format and cluster
//! size) and `truncate SIZE` (through `fvd-img resize`'s code, on the closed disk, which
//! is then opened again).

use super::report::report_size;
use super::words::getopt;
use super::Session;
use crate::cli::disk::{Disk, DiskFormat};
use crate::cli::qed::open_qed_as;
use crate::cli::resize::resize_path;
use crate::host::lock::Usage;

impl Session<'_> {
    pub(super) fn length(&mut self, words: &[&str]) -> Result<(), String> {
        if !words.is_empty() {
            return Err("length: takes no arguments".into());
        }
        let text = format!("{}\n", report_size(self.disk()?.size() as f64));
        self.print(&text).map_err(Self::output_error)
    }

    pub(super) fn info(&mut self, words: &[&str]) -> Result<(), String> {
        if !words.is_empty() {
            return Err("info: takes no arguments".into());
        }
        let format = self.disk()?.format();
        // Only QED has clusters; FVD and raw report 0, as qemu-io does for raw.
        let cluster = match format {
            DiskFormat::Qed => open_qed_as(&self.reopen.path, Usage::PROBE)
                .map(|image| image.layout.cluster_size)
                .map_err(|e| format!("info: {e}"))?,
            DiskFormat::Fvd | DiskFormat::Raw => 0,
        };
        let text = format!(
            "format name: {}\ncluster size: {}\nvm state offset: 0 bytes\n",
            format.name(),
            report_size(cluster as f64)
        );
        self.print(&text).map_err(Self::output_error)
    }

    pub(super) fn truncate(&mut self, words: &[&str]) -> Result<(), String> {
        let parsed = getopt(words, "", "m").map_err(|e| format!("truncate: {e}"))?;
        if parsed.value('m').is_some_and(|mode| mode != "off") {
            return Err("truncate: only -m off (no preallocation) is supported".into());
        }
        let [size] = parsed.operands.as_slice() else {
            return Err("truncate: expected the new size".into());
        };
        if !self.reopen.writable {
            return Err("truncate failed: image is opened read-only".into());
        }
        self.drain().map_err(Self::output_error)?;
        if let Some(disk) = self.disk.take() {
            disk.close().map_err(|e| format!("truncate failed: {e}"))?;
        }
        let resized = resize_path(&self.reopen.path, self.reopen.format, size, true);
        let open = &self.reopen;
        let reopened =
            Disk::open_gated(&open.path, open.format, true, open.copy_on_read, open.gate);
        match reopened {
            Ok(mut disk) => {
                if open.restricted {
                    disk.restrict_first_sector();
                }
                if open.direct {
                    disk.bypass_page_cache()
                        .map_err(|e| format!("truncate: the image could not be reopened: {e}"))?;
                }
                self.disk = Some(disk);
            }
            Err(e) => return Err(format!("truncate: the image could not be reopened: {e}")),
        }
        resized.map_err(|e| format!("truncate failed: {e}"))
    }
}
