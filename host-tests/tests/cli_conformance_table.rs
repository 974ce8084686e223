//! One table of the commands and flags scripts written for qemu-img and qemu-io use, each
//! run on the same inputs through QEMU's tools and through `fvd-img`, in three pairings:
//! qemu-img on qcow2 against fvd-img on FVD, both on QED, both on raw. For every row and
//! pairing the exit status must agree, the JSON documents must have the same keys (less
//! the format-specific ones a row names), and the key lines of text a row names — and every
//! `wrote`/`read` line of qemu-io — must be the same.
//!
//! Where fvd-img deliberately refuses what qemu-img does (compression, `convert -B`), the
//! row says so and requires a clear "not supported"-style message instead.

mod common;

use common::{run_tool, scratch, Run};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// One pairing: QEMU's format and ours, with the file extension each side uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pairing {
    name: &'static str,
    qemu_format: &'static str,
    our_format: &'static str,
}

const QCOW2_FVD: Pairing = Pairing {
    name: "qcow2/fvd",
    qemu_format: "qcow2",
    our_format: "fvd",
};
const QED: Pairing = Pairing {
    name: "qed",
    qemu_format: "qed",
    our_format: "qed",
};
const RAW: Pairing = Pairing {
    name: "raw",
    qemu_format: "raw",
    our_format: "raw",
};
const ALL: &[Pairing] = &[QCOW2_FVD, QED, RAW];
const IMAGES: &[Pairing] = &[QCOW2_FVD, QED];

/// Which tool a row runs.
#[derive(Clone, Copy, Debug)]
enum Tool {
    /// `qemu-img ARGS` against `fvd-img ARGS`.
    Img,
    /// `qemu-io ARGS` against `fvd-img io ARGS`.
    Io,
}

/// What a row compares besides the exit status.
#[derive(Clone, Copy, Debug)]
enum Compare {
    /// Only the exit status.
    Status,
    /// Lines that both outputs (stdout and stderr together) contain, after the
    /// placeholders are filled in.
    Lines(&'static [&'static str]),
    /// Standard output is a JSON document (or a list of them) with the same keys, less
    /// these.
    JsonKeys(&'static [&'static str]),
    /// Both print nothing on standard output.
    Silent,
    /// After the command, `check_file` (a file the row wrote) has the same guest bytes
    /// on both sides, read back by each side's own tool as `format` (`{fmt}` allowed).
    SameBytes {
        file: &'static str,
        format: &'static str,
    },
}

/// Where fvd-img departs from QEMU on purpose.
#[derive(Clone, Copy, Debug)]
struct Departure {
    /// The pairing it applies to.
    pairing: Pairing,
    /// fvd-img's exit status.
    status: i32,
    /// Words fvd-img's message must contain.
    says: &'static str,
}

struct Row {
    /// What a user would call it.
    name: &'static str,
    tool: Tool,
    /// Arguments; `{img}` (an image over a raw base), `{plain}` (one without a base),
    /// `{fmt}` and `{ext}` (the side's format and file extension) are filled in.
    args: &'static [&'static str],
    pairings: &'static [Pairing],
    compare: Compare,
    departs: &'static [Departure],
    /// Where both sides use one format, fvd-img runs on a copy of the very files QEMU's
    /// tools made (so that layout choices, such as where clusters land, cannot differ).
    same_files: bool,
}

const fn row(
    name: &'static str,
    tool: Tool,
    args: &'static [&'static str],
    pairings: &'static [Pairing],
    compare: Compare,
) -> Row {
    Row {
        name,
        tool,
        args,
        pairings,
        compare,
        departs: &[],
        same_files: false,
    }
}

/// Keys fvd-img's check adds to qemu-img's (what the journal holds, each finding and
/// leaked run, FVD's block counts); qemu-img's own counters follow its rule.
/// `image-end-offset` too: qemu-img prints it for qcow2 only, fvd-img for both formats.
const CHECK_EXTENSIONS: &[&str] = &[
    "image-end-offset",
    "dirty",
    "journal-records",
    "journal-sectors",
    "findings",
    "leaked-clusters",
    "blocks-in-image",
    "blocks-in-base",
];

/// [`CHECK_EXTENSIONS`] and the counters that depend on where each tool put the clusters
/// (the rows that check QEMU's own files compare those too).
const CHECK_OF_ANOTHER_LAYOUT: &[&str] = &[
    "image-end-offset",
    "dirty",
    "journal-records",
    "journal-sectors",
    "findings",
    "leaked-clusters",
    "blocks-in-image",
    "blocks-in-base",
    "fragmented-clusters",
];

/// The table. JSON rows name the keys they leave out of the comparison: keys one format
/// has and the other cannot (`cluster-size`, `format-specific`), `children` (qemu-img
/// prints it from version 8 on, fvd-img always), and fvd-img's own additions (`kind` in
/// map, [`CHECK_EXTENSIONS`]).
fn table() -> Vec<Row> {
    use Compare::*;
    use Tool::*;
    vec![
        // info
        row(
            "info",
            Img,
            &["info", "{img}"],
            IMAGES,
            Lines(&[
                "image: {img}",
                "file format: {fmt}",
                "virtual size: 4 MiB (4194304 bytes)",
                "backing file: base.raw",
                "backing file format: raw",
            ]),
        ),
        row(
            "info on raw",
            Img,
            &["info", "{img}"],
            &[RAW],
            Lines(&[
                "image: {img}",
                "file format: raw",
                "virtual size: 4 MiB (4194304 bytes)",
            ]),
        ),
        row(
            "info --output json",
            Img,
            &["info", "--output", "json", "{img}"],
            ALL,
            JsonKeys(&["cluster-size", "format-specific", "dirty-flag", "children"]),
        ),
        row(
            "info -U",
            Img,
            &["info", "-U", "{plain}"],
            ALL,
            Lines(&["virtual size: 4 MiB (4194304 bytes)"]),
        ),
        row(
            "info --backing-chain",
            Img,
            &["info", "--backing-chain", "{img}"],
            IMAGES,
            Lines(&["image: {img}", "image: base.raw", "file format: raw"]),
        ),
        row(
            "info --backing-chain --output json",
            Img,
            &["info", "--backing-chain", "--output", "json", "{img}"],
            IMAGES,
            JsonKeys(&["cluster-size", "format-specific", "dirty-flag", "children"]),
        ),
        // check
        row(
            "check",
            Img,
            &["check", "{img}"],
            IMAGES,
            Lines(&["No errors were found on the image."]),
        ),
        row(
            "check on raw",
            Img,
            &["check", "{img}"],
            &[RAW],
            Lines(&["This image format does not support checks"]),
        ),
        row("check -q", Img, &["check", "-q", "{img}"], IMAGES, Silent),
        row(
            "check --output json",
            Img,
            &["check", "--output", "json", "{img}"],
            IMAGES,
            JsonKeys(CHECK_OF_ANOTHER_LAYOUT),
        ),
        Row {
            same_files: true,
            ..row(
                "check --output json of QEMU's own image",
                Img,
                &["check", "--output", "json", "{img}"],
                &[QED],
                JsonKeys(CHECK_EXTENSIONS),
            )
        },
        row(
            "check -r leaks",
            Img,
            &["check", "-r", "leaks", "{img}"],
            IMAGES,
            Lines(&["No errors were found on the image."]),
        ),
        // map
        row(
            "map --output json",
            Img,
            &["map", "--output", "json", "{img}"],
            ALL,
            JsonKeys(&["compressed", "offset", "kind"]),
        ),
        row(
            "map --output json --start-offset --max-length",
            Img,
            &[
                "map",
                "--output",
                "json",
                "--start-offset",
                "64k",
                "--max-length",
                "1M",
                "{img}",
            ],
            ALL,
            JsonKeys(&["compressed", "offset", "kind"]),
        ),
        // compare
        row(
            "compare different",
            Img,
            &["compare", "{img}", "{plain}"],
            ALL,
            Lines(&["Content mismatch at offset 0!"]),
        ),
        row(
            "compare same",
            Img,
            &["compare", "{img}", "{img}"],
            ALL,
            Lines(&["Images are identical."]),
        ),
        row(
            "compare -s against raw",
            Img,
            &["compare", "-s", "-F", "raw", "{img}", "base.raw"],
            ALL,
            Status,
        ),
        // convert
        row(
            "convert",
            Img,
            &["convert", "-O", "{fmt}", "{img}", "out.{ext}"],
            ALL,
            SameBytes {
                file: "out.{ext}",
                format: "{fmt}",
            },
        ),
        row(
            "convert -p -S 0 -W -m 4 -t writeback -T none",
            Img,
            &[
                "convert",
                "-p",
                "-S",
                "0",
                "-m",
                "4",
                "-t",
                "writeback",
                "-T",
                "none",
                "-O",
                "{fmt}",
                "{img}",
                "out.{ext}",
            ],
            ALL,
            SameBytes {
                file: "out.{ext}",
                format: "{fmt}",
            },
        ),
        // qemu-img 7.2 aborts on -W into QED (an assertion in its QED driver).
        row(
            "convert -W",
            Img,
            &["convert", "-W", "-O", "{fmt}", "{img}", "out.{ext}"],
            &[QCOW2_FVD, RAW],
            SameBytes {
                file: "out.{ext}",
                format: "{fmt}",
            },
        ),
        row(
            "convert -t none -T directsync",
            Img,
            &[
                "convert",
                "-t",
                "none",
                "-T",
                "directsync",
                "-O",
                "{fmt}",
                "{img}",
                "out.{ext}",
            ],
            ALL,
            SameBytes {
                file: "out.{ext}",
                format: "{fmt}",
            },
        ),
        row(
            "convert -O raw",
            Img,
            &["convert", "-O", "raw", "{img}", "out.raw"],
            ALL,
            SameBytes {
                file: "out.raw",
                format: "raw",
            },
        ),
        row(
            "convert -n onto an existing image",
            Img,
            &["convert", "-n", "-O", "{fmt}", "{img}", "{plain}"],
            ALL,
            SameBytes {
                file: "{plain}",
                format: "{fmt}",
            },
        ),
        row(
            "convert -m 0 is refused",
            Img,
            &["convert", "-m", "0", "-O", "{fmt}", "{img}", "out.{ext}"],
            ALL,
            Status,
        ),
        row(
            "convert -t bogus is refused",
            Img,
            &[
                "convert",
                "-t",
                "bogus",
                "-O",
                "{fmt}",
                "{img}",
                "out.{ext}",
            ],
            ALL,
            Lines(&["Invalid cache option: bogus"]),
        ),
        Row {
            departs: &[Departure {
                pairing: QCOW2_FVD,
                status: 1,
                says: "Compression not supported",
            }],
            ..row(
                "convert -c",
                Img,
                &["convert", "-c", "-O", "{fmt}", "{img}", "out.{ext}"],
                IMAGES,
                Status,
            )
        },
        Row {
            departs: &[
                Departure {
                    pairing: QCOW2_FVD,
                    status: 1,
                    says: "-B is not supported",
                },
                Departure {
                    pairing: QED,
                    status: 1,
                    says: "-B is not supported",
                },
            ],
            ..row(
                "convert -B",
                Img,
                &[
                    "convert",
                    "-B",
                    "base.raw",
                    "-F",
                    "raw",
                    "-O",
                    "{fmt}",
                    "{img}",
                    "out.{ext}",
                ],
                IMAGES,
                Status,
            )
        },
        // commit
        row(
            "commit",
            Img,
            &["commit", "{img}"],
            IMAGES,
            Lines(&["Image committed."]),
        ),
        row(
            "commit -p -b",
            Img,
            &["commit", "-p", "-b", "base.raw", "{img}"],
            IMAGES,
            SameBytes {
                file: "base.raw",
                format: "raw",
            },
        ),
        row(
            "commit -t none",
            Img,
            &["commit", "-t", "none", "{img}"],
            IMAGES,
            SameBytes {
                file: "base.raw",
                format: "raw",
            },
        ),
        row(
            "commit of an image without a base",
            Img,
            &["commit", "{plain}"],
            ALL,
            Status,
        ),
        // rebase
        row(
            "rebase -u",
            Img,
            &["rebase", "-u", "-b", "other.raw", "-F", "raw", "{img}"],
            IMAGES,
            Status,
        ),
        row(
            "rebase -p (safe, new base)",
            Img,
            &["rebase", "-p", "-b", "other.raw", "-F", "raw", "{img}"],
            IMAGES,
            SameBytes {
                file: "{img}",
                format: "{fmt}",
            },
        ),
        row(
            "rebase -b '' flattens",
            Img,
            &["rebase", "-b", "", "{img}"],
            IMAGES,
            SameBytes {
                file: "{img}",
                format: "{fmt}",
            },
        ),
        row(
            "rebase -U -t none -T none",
            Img,
            &[
                "rebase",
                "-U",
                "-t",
                "none",
                "-T",
                "none",
                "-b",
                "other.raw",
                "-F",
                "raw",
                "{img}",
            ],
            IMAGES,
            SameBytes {
                file: "{img}",
                format: "{fmt}",
            },
        ),
        // create
        row(
            "create -u",
            Img,
            &[
                "create",
                "-q",
                "-f",
                "{fmt}",
                "-u",
                "-b",
                "later.raw",
                "-F",
                "raw",
                "new.{ext}",
                "1M",
            ],
            IMAGES,
            Status,
        ),
        row(
            "create -b without a size takes the base's",
            Img,
            &[
                "create",
                "-q",
                "-f",
                "{fmt}",
                "-b",
                "base.raw",
                "-F",
                "raw",
                "new.{ext}",
            ],
            IMAGES,
            Status,
        ),
        row(
            "create with a bad size",
            Img,
            &["create", "-q", "-f", "{fmt}", "new.{ext}", "12X"],
            ALL,
            Status,
        ),
        // resize
        row(
            "resize grow",
            Img,
            &["resize", "{plain}", "+1M"],
            ALL,
            Lines(&["Image resized."]),
        ),
        row(
            "resize shrink without --shrink",
            Img,
            &["resize", "-f", "raw", "{plain}", "1M"],
            &[RAW],
            Status,
        ),
        row(
            "resize --shrink",
            Img,
            &["resize", "--shrink", "{plain}", "2M"],
            &[QCOW2_FVD, RAW],
            Lines(&["Image resized."]),
        ),
        // measure
        // QEMU's QED driver cannot measure; fvd-img can.
        Row {
            departs: &[Departure {
                pairing: QED,
                status: 0,
                says: "\"required\"",
            }],
            ..row(
                "measure --size",
                Img,
                &["measure", "-O", "{fmt}", "--size", "1G", "--output", "json"],
                ALL,
                JsonKeys(&["bitmaps"]),
            )
        },
        Row {
            departs: &[Departure {
                pairing: QED,
                status: 0,
                says: "required size:",
            }],
            ..row(
                "measure of an image",
                Img,
                &["measure", "-O", "{fmt}", "{img}"],
                ALL,
                Lines(&["required size:", "fully allocated size:"]),
            )
        },
        // dd
        row(
            "dd",
            Img,
            &[
                "dd",
                "-O",
                "raw",
                "bs=64k",
                "count=8",
                "skip=1",
                "if={img}",
                "of=dd.raw",
            ],
            ALL,
            SameBytes {
                file: "dd.raw",
                format: "raw",
            },
        ),
        // amend: QEMU amends neither QED nor raw; neither may we pretend to.
        row(
            "amend of a format without amendable options",
            Img,
            &["amend", "-o", "backing_fmt=raw", "{img}"],
            &[QED, RAW],
            Lines(&["Format driver '{fmt}' does not support option amendment"]),
        ),
        // qemu-io
        row(
            "io read and write any alignment",
            Io,
            &[
                "-f",
                "{fmt}",
                "-c",
                "write -P 0x66 100 3",
                "-c",
                "write -P 0x67 4000 5000",
                "-c",
                "read -P 0x66 100 3",
                "-c",
                "read -P 0x67 4000 5000",
                "-c",
                "read -P 0x33 64k 64k",
                "-c",
                "read -v 96 16",
                "{img}",
            ],
            ALL,
            Lines(&[]),
        ),
        row(
            "io readv/writev",
            Io,
            &[
                "-f",
                "{fmt}",
                "-c",
                "writev -P 0x77 1M 512 1k 4k",
                "-c",
                "readv -P 0x77 1M 1k 4k 512",
                "{img}",
            ],
            ALL,
            Lines(&[]),
        ),
        row(
            "io write -z -u, -s",
            Io,
            &[
                "-f",
                "{fmt}",
                "-c",
                "write -z -u 64k 64k",
                "-c",
                "read -P 0 64k 64k",
                "-c",
                "write -s base.raw 3M 4k",
                "-c",
                "read -P 0x11 3M 4k",
                "{img}",
            ],
            ALL,
            Lines(&[]),
        ),
        row(
            "io alloc and map",
            Io,
            &["-f", "{fmt}", "-c", "alloc 64k 128k", "-c", "map", "{img}"],
            IMAGES,
            Lines(&[
                "65536/131072 bytes allocated at offset 64 KiB",
                "64 KiB (0x10000) bytes     allocated at offset 64 KiB (0x10000)",
            ]),
        ),
        row(
            "io length and truncate",
            Io,
            &[
                "-f",
                "{fmt}",
                "-c",
                "length",
                "-c",
                "truncate 8M",
                "-c",
                "length",
                "{plain}",
            ],
            &[QCOW2_FVD, RAW],
            Lines(&["4 MiB", "8 MiB"]),
        ),
        row(
            "io -n -t directsync -U -r",
            Io,
            &[
                "-f",
                "{fmt}",
                "-r",
                "-U",
                "-t",
                "directsync",
                "-c",
                "read -P 0x33 64k 64k",
                "{img}",
            ],
            ALL,
            Lines(&[]),
        ),
        row(
            "io -n",
            Io,
            &[
                "-f",
                "{fmt}",
                "-n",
                "-c",
                "write -P 0x12 8k 4k",
                "-c",
                "read -P 0x12 8k 4k",
                "{img}",
            ],
            ALL,
            Lines(&[]),
        ),
        Row {
            departs: &[Departure {
                pairing: QCOW2_FVD,
                status: 1,
                says: "Operation not supported",
            }],
            ..row(
                "io write -c",
                Io,
                &["-f", "{fmt}", "-c", "write -c 0 64k", "{img}"],
                IMAGES,
                Status,
            )
        },
        row(
            "io -U on a writable open is refused",
            Io,
            &["-f", "{fmt}", "-U", "-c", "read 0 512", "{img}"],
            ALL,
            Status,
        ),
        row(
            "io bad command",
            Io,
            &["-f", "{fmt}", "-c", "frobnicate", "{img}"],
            ALL,
            Status,
        ),
    ]
}

/// One side of a pairing: which tools, which format.
struct Side<'a> {
    dir: &'a Path,
    format: &'static str,
    ours: bool,
}

impl Side<'_> {
    fn ext(&self) -> &'static str {
        self.format
    }

    fn fill(&self, text: &str) -> String {
        text.replace("{img}", &format!("img.{}", self.ext()))
            .replace("{plain}", &format!("plain.{}", self.ext()))
            .replace("{fmt}", self.format)
            .replace("{ext}", self.ext())
    }

    fn img(&self, args: &[&str]) -> Run {
        if self.ours {
            run_tool(env!("CARGO_BIN_EXE_fvd-img"), self.dir, args)
        } else {
            run_tool("qemu-img", self.dir, args)
        }
    }

    fn io(&self, args: &[&str]) -> Run {
        if self.ours {
            let mut all = vec!["io"];
            all.extend_from_slice(args);
            run_tool(env!("CARGO_BIN_EXE_fvd-img"), self.dir, &all)
        } else {
            run_tool("qemu-io", self.dir, args)
        }
    }

    fn run(&self, tool: Tool, args: &[String]) -> Run {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match tool {
            Tool::Img => self.img(&args),
            Tool::Io => self.io(&args),
        }
    }

    fn must(&self, run: Run, what: &str) {
        assert_eq!(
            run.code,
            0,
            "setup ({}) {what}: {run:#?}",
            if self.ours { "fvd-img" } else { "qemu" }
        );
    }

    /// The inputs every row starts from: `base.raw` (1 MiB, 0x11 in its first 64 KiB and
    /// 0x22 at 512 KiB), `other.raw` (a changed copy), `img` over `base.raw` (0x33 at
    /// 64 KiB, 0x44 at 2 MiB; a raw pairing has the same bytes with no base), and `plain`
    /// (0x55 in its first 64 KiB).
    fn set_up(&self) {
        let mut base = vec![0u8; 1 << 20];
        base[..64 << 10].fill(0x11);
        base[512 << 10..576 << 10].fill(0x22);
        fs::write(self.dir.join("base.raw"), &base).unwrap();
        base[900 << 10..904 << 10].fill(0x99);
        fs::write(self.dir.join("other.raw"), &base).unwrap();
        let img = self.fill("{img}");
        let plain = self.fill("{plain}");
        let fmt = self.format;
        if fmt == "raw" {
            self.must(
                self.img(&["create", "-q", "-f", "raw", &img, "4M"]),
                "create",
            );
            self.must(
                self.io(&[
                    "-f",
                    "raw",
                    "-c",
                    "write -s base.raw 0 1M",
                    "-c",
                    "write -P 0x33 64k 64k",
                    "-c",
                    "write -P 0x44 2M 64k",
                    &img,
                ]),
                "write",
            );
        } else {
            self.must(
                self.img(&[
                    "create", "-q", "-f", fmt, "-b", "base.raw", "-F", "raw", &img, "4M",
                ]),
                "create img",
            );
            self.must(
                self.io(&[
                    "-f",
                    fmt,
                    "-c",
                    "write -P 0x33 64k 64k",
                    "-c",
                    "write -P 0x44 2M 64k",
                    &img,
                ]),
                "write img",
            );
        }
        self.must(
            self.img(&["create", "-q", "-f", fmt, &plain, "4M"]),
            "create plain",
        );
        self.must(
            self.io(&["-f", fmt, "-c", "write -P 0x55 0 64k", &plain]),
            "write plain",
        );
    }

    /// The guest bytes of `file` read as `format` by this side's tool (through a raw
    /// conversion).
    fn guest_bytes(&self, file: &str, format: &str) -> Vec<u8> {
        let out = "guest-bytes.raw";
        let _ = fs::remove_file(self.dir.join(out));
        self.must(
            self.img(&["convert", "-f", format, "-O", "raw", file, out]),
            "read back",
        );
        let bytes = fs::read(self.dir.join(out)).unwrap();
        fs::remove_file(self.dir.join(out)).unwrap();
        bytes
    }
}

/// Every key path of a JSON value (`a.b`, lists by their elements' keys).
fn key_paths(value: &Value, prefix: &str, skip: &[&str], out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if skip.contains(&key.as_str()) {
                    continue;
                }
                let path = format!("{prefix}{key}");
                out.insert(path.clone());
                key_paths(inner, &format!("{path}."), skip, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]."), skip, out);
            }
        }
        _ => {}
    }
}

/// The lines qemu-io prints about requests (timing lines left out).
fn request_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            l.starts_with("wrote ")
                || l.starts_with("read ")
                || l.starts_with("Pattern verification failed")
                || l.starts_with("000000")
        })
        .collect()
}

fn check_row(row: &Row, pairing: Pairing) -> Result<(), String> {
    let dq = scratch();
    let df = scratch();
    let qemu = Side {
        dir: dq.path(),
        format: pairing.qemu_format,
        ours: false,
    };
    let ours = Side {
        dir: df.path(),
        format: pairing.our_format,
        ours: true,
    };
    qemu.set_up();
    if row.same_files && pairing.qemu_format == pairing.our_format {
        for entry in fs::read_dir(qemu.dir).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), ours.dir.join(entry.file_name())).unwrap();
        }
    } else {
        ours.set_up();
    }
    let args = |side: &Side| -> Vec<String> { row.args.iter().map(|a| side.fill(a)).collect() };
    let q = qemu.run(row.tool, &args(&qemu));
    let f = ours.run(row.tool, &args(&ours));
    let context = || {
        format!(
            "{} [{}]\nqemu: {q:#?}\nours: {f:#?}",
            row.name, pairing.name
        )
    };

    if let Some(departure) = row.departs.iter().find(|d| d.pairing == pairing) {
        let said = format!("{}{}", f.stdout, f.stderr);
        if f.code != departure.status || !said.contains(departure.says) {
            return Err(format!(
                "expected fvd-img to exit {} saying {:?}: {}",
                departure.status,
                departure.says,
                context()
            ));
        }
        return Ok(());
    }
    if q.code != f.code {
        return Err(format!("exit status differs: {}", context()));
    }
    match row.compare {
        Compare::Status => {}
        Compare::Silent => {
            if !q.stdout.is_empty() || !f.stdout.is_empty() {
                return Err(format!("expected no output: {}", context()));
            }
        }
        Compare::Lines(lines) => {
            for (side, run) in [(&qemu, &q), (&ours, &f)] {
                let all = format!("{}{}", run.stdout, run.stderr);
                for line in lines {
                    let line = side.fill(line);
                    if !all
                        .lines()
                        .any(|l| l.trim_end() == line || l.contains(&line))
                    {
                        return Err(format!("missing line {line:?}: {}", context()));
                    }
                }
            }
            if matches!(row.tool, Tool::Io) && request_lines(&q.stdout) != request_lines(&f.stdout)
            {
                return Err(format!("request lines differ: {}", context()));
            }
        }
        Compare::JsonKeys(skip) => {
            let parse = |run: &Run| -> Result<BTreeSet<String>, String> {
                let value: Value = serde_json::from_str(&run.stdout)
                    .map_err(|e| format!("not JSON ({e}): {}", context()))?;
                let mut keys = BTreeSet::new();
                key_paths(&value, "", skip, &mut keys);
                Ok(keys)
            };
            let (kq, kf) = (parse(&q)?, parse(&f)?);
            if kq != kf {
                return Err(format!(
                    "JSON keys differ: only qemu {:?}, only ours {:?}: {}",
                    kq.difference(&kf).collect::<Vec<_>>(),
                    kf.difference(&kq).collect::<Vec<_>>(),
                    context()
                ));
            }
        }
        Compare::SameBytes { file, format } => {
            if q.code == 0 {
                let bq = qemu.guest_bytes(&qemu.fill(file), &qemu.fill(format));
                let bf = ours.guest_bytes(&ours.fill(file), &ours.fill(format));
                if bq != bf {
                    let at = bq.iter().zip(&bf).position(|(a, b)| a != b);
                    return Err(format!(
                        "guest bytes of {file} differ (lengths {} and {}, first at {at:?}): {}",
                        bq.len(),
                        bf.len(),
                        context()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_command_in_the_table_behaves_as_qemu_img_and_qemu_io_do() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in table() {
        for &pairing in row.pairings {
            checked += 1;
            if let Err(e) = check_row(&row, pairing) {
                failures.push(e);
            }
        }
    }
    assert!(checked > 100, "only {checked} comparisons");
    assert!(
        failures.is_empty(),
        "{} of {checked} comparisons differ:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
