//! The QED on-disk format against the real thing:
//! 1. golden headers: images made by `/usr/bin/qemu-img create -f qed` (several cluster and
//!    table sizes, with and without a raw or QED backing file) parse to the expected layout;
//! 2. our `create` plan is byte-identical to qemu-img's file for the same options (header
//!    cluster, L1 table, file length), and qemu-img opens and checks images made from it;
//! 3. a corpus of hand-broken headers, each refused with the error of the one rule it
//!    breaks, with distinct messages; and the leniencies (compat and auto-clear bits, a
//!    removed backing file) accepted;
//! 4. property tests: arbitrary and near-valid bytes never panic and whatever validates is
//!    sane; create plans always validate; index math round-trips.
//!
//! qemu-img is required (CI installs it): a missing binary fails the tests, it never skips
//! them. Field offsets are written out by hand here, independently of `QedHeader`.

// Tests may unwrap, index and cast freely: a failure there is the test failing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use fvd_core::fvd::Region;
use fvd_core::qed::header::{MAX_BACKING_NAME_LEN, QED_HEADER_LEN};
use fvd_core::qed::table::{self, L1Entry, L2Entry, TableIndex};
use fvd_core::qed::{
    features, parse, plan, probe, validate, BackingFile, QedBacking, QedCreateError,
    QedCreateOptions, QedHeader, QedHeaderError, QedLayout, QED_MAGIC,
};
use proptest::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Byte offsets of the header fields (QEMU's `QEDHeader`).
mod off {
    pub const MAGIC: usize = 0;
    pub const CLUSTER_SIZE: usize = 4;
    pub const TABLE_SIZE: usize = 8;
    pub const HEADER_SIZE: usize = 12;
    pub const FEATURES: usize = 16;
    pub const COMPAT_FEATURES: usize = 24;
    pub const AUTOCLEAR_FEATURES: usize = 32;
    pub const L1_TABLE_OFFSET: usize = 40;
    pub const IMAGE_SIZE: usize = 48;
    pub const BACKING_FILENAME_OFFSET: usize = 56;
    pub const BACKING_FILENAME_SIZE: usize = 60;
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

// ---- qemu-img in a scratch directory ---------------------------------------------------

const QEMU_IMG: &str = "/usr/bin/qemu-img";

/// A fresh directory under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fvd-core-qed-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs qemu-img in `dir`; returns its exit code and combined output. Panics (fails the
/// test) when qemu-img cannot be run at all.
fn qemu_img_status(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(QEMU_IMG)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {QEMU_IMG} ({e}): the QED interop tests need qemu-img installed")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs qemu-img in `dir` and requires success.
fn qemu_img(dir: &Path, args: &[&str]) -> String {
    let (code, text) = qemu_img_status(dir, args);
    assert_eq!(code, 0, "qemu-img {args:?} failed: {text}");
    text
}

/// A backing file option: name and format, as passed to `-b` and `-F`.
type Backing = Option<(&'static str, &'static str)>;

/// One `qemu-img create -f qed` invocation.
#[derive(Clone, Copy, Debug)]
struct Case {
    cluster: u64,
    table: u64,
    size: u64,
    backing: Backing,
}

impl Case {
    fn options(&self) -> QedCreateOptions<'static> {
        QedCreateOptions {
            size: self.size,
            cluster_size: self.cluster,
            table_size: self.table,
            backing: self.backing.map(|(name, format)| QedBacking {
                name: name.as_bytes(),
                format: format.as_bytes(),
            }),
        }
    }
}

/// What qemu-img wrote, kept small: the header cluster, whether the rest of the file (the
/// L1 table) is all zeros, and the file length.
struct Golden {
    case: Case,
    header_cluster: Vec<u8>,
    rest_is_zero: bool,
    file_len: u64,
}

/// Makes the bases `qemu-img create` is pointed at: a 1 MiB raw file and a default QED.
fn make_bases(dir: &ScratchDir) {
    std::fs::File::create(dir.path("base.raw"))
        .and_then(|f| f.set_len(MIB))
        .expect("create base.raw");
    qemu_img(&dir.0, &["create", "-q", "-f", "qed", "base.qed", "1M"]);
}

/// Creates `case` with qemu-img as `name` in `dir` and returns the file's bytes.
fn qemu_create(dir: &ScratchDir, name: &str, case: &Case) -> Vec<u8> {
    let opts = format!("cluster_size={},table_size={}", case.cluster, case.table);
    let size = case.size.to_string();
    let mut args = vec!["create", "-q", "-f", "qed", "-o", &opts];
    if let Some((base, format)) = case.backing {
        args.extend(["-b", base, "-F", format]);
    }
    args.extend([name, &size]);
    qemu_img(&dir.0, &args);
    let path = dir.path(name);
    let bytes = std::fs::read(&path).expect("read qemu-img's image");
    let _ = std::fs::remove_file(path);
    bytes
}

/// The interop matrix: cluster sizes 4 KiB..1 MiB, table sizes 2..16, no backing file, a
/// raw backing file and a QED backing file, odd and round sizes. Kept inside the
/// geometries qemu-img handles correctly (see /work/shared/spec/qed.md).
fn matrix() -> Vec<Case> {
    let clusters = [4 * KIB, 8 * KIB, 64 * KIB, 256 * KIB, MIB];
    let tables = [2, 4, 8, 16];
    let backings: [Backing; 3] = [None, Some(("base.raw", "raw")), Some(("base.qed", "qed"))];
    let sizes = [GIB, 1000, 0, 10 * MIB + 512, 3 * MIB, 4 * GIB];
    let mut cases = Vec::new();
    for (i, &cluster) in clusters.iter().enumerate() {
        for (j, &table) in tables.iter().enumerate() {
            for (k, &backing) in backings.iter().enumerate() {
                let size = sizes[(i + j + k) % sizes.len()];
                cases.push(Case {
                    cluster,
                    table,
                    size,
                    backing,
                });
            }
        }
    }
    cases
}

/// Every matrix image, made once per test binary and shared by the tests that need them.
fn goldens() -> &'static [Golden] {
    static GOLDENS: OnceLock<Vec<Golden>> = OnceLock::new();
    GOLDENS.get_or_init(|| {
        let dir = ScratchDir::new("matrix");
        make_bases(&dir);
        matrix()
            .into_iter()
            .enumerate()
            .map(|(i, case)| {
                let bytes = qemu_create(&dir, &format!("m{i}.qed"), &case);
                let cluster = (case.cluster as usize).min(bytes.len());
                Golden {
                    case,
                    header_cluster: bytes[..cluster].to_vec(),
                    rest_is_zero: bytes[cluster..].iter().all(|&b| b == 0),
                    file_len: bytes.len() as u64,
                }
            })
            .collect()
    })
}

// ---- 1. golden headers -----------------------------------------------------------------

#[test]
fn qemu_img_images_parse_to_the_expected_layout() {
    for g in goldens() {
        let case = g.case;
        let (raw, layout) = parse(&g.header_cluster, g.file_len)
            .unwrap_or_else(|e| panic!("qemu-img image {case:?} refused: {e}"));
        let bytes = &g.header_cluster;
        assert!(probe(bytes));
        assert_eq!(&bytes[off::MAGIC..off::MAGIC + 4], b"QED\0");
        assert_eq!(raw.magic.get(), QED_MAGIC);
        assert_eq!(raw.header_size.get(), 1, "{case:?}");

        let expected_size = case.size.div_ceil(512) * 512;
        let (backing, features) = match case.backing {
            None => (None, 0),
            Some((name, format)) => {
                let raw_format = format == "raw";
                let bits = features::BACKING_FILE
                    | if raw_format {
                        features::BACKING_FORMAT_NO_PROBE
                    } else {
                        0
                    };
                (
                    Some(BackingFile {
                        name: Region {
                            offset: 64,
                            len: name.len() as u64,
                        },
                        raw: raw_format,
                    }),
                    bits,
                )
            }
        };
        assert_eq!(
            layout,
            QedLayout {
                cluster_size: case.cluster,
                cluster_bits: case.cluster.trailing_zeros(),
                table_size: case.table,
                table_len: case.cluster * case.table,
                table_entries: case.cluster * case.table / 8,
                header_len: case.cluster,
                l1_table: Region {
                    offset: case.cluster,
                    len: case.cluster * case.table,
                },
                image_size: expected_size,
                backing,
                need_check: false,
                features,
                compat_features: 0,
                unknown_autoclear_features: 0,
            },
            "{case:?}"
        );
        assert_eq!(
            layout.backing_name(bytes),
            case.backing.map(|(name, _)| name.as_bytes()),
            "{case:?}"
        );
        assert_eq!(g.file_len, case.cluster * (1 + case.table), "{case:?}");
        assert!(g.rest_is_zero, "{case:?}: L1 table not all zeros");
    }
}

#[test]
fn qemu_img_default_image_matches_the_documented_bytes() {
    // `qemu-img create -f qed -b base.raw -F raw h.qed 1G`, as in the QED notes.
    let dir = ScratchDir::new("default");
    make_bases(&dir);
    let bytes = qemu_create(
        &dir,
        "h.qed",
        &Case {
            cluster: 64 * KIB,
            table: 4,
            size: GIB,
            backing: Some(("base.raw", "raw")),
        },
    );
    let mut expected = vec![0u8; 64 * KIB as usize];
    expected[..4].copy_from_slice(b"QED\0");
    put32(&mut expected, off::CLUSTER_SIZE, 65536);
    put32(&mut expected, off::TABLE_SIZE, 4);
    put32(&mut expected, off::HEADER_SIZE, 1);
    put64(&mut expected, off::FEATURES, 5);
    put64(&mut expected, off::L1_TABLE_OFFSET, 65536);
    put64(&mut expected, off::IMAGE_SIZE, GIB);
    put32(&mut expected, off::BACKING_FILENAME_OFFSET, 0x40);
    put32(&mut expected, off::BACKING_FILENAME_SIZE, 8);
    expected[64..72].copy_from_slice(b"base.raw");
    assert_eq!(bytes.len() as u64, 5 * 64 * KIB);
    assert_eq!(&bytes[..expected.len()], &expected[..]);

    // The same options given with qemu-img's defaults left implicit.
    let options = QedCreateOptions {
        size: GIB,
        backing: Some(QedBacking {
            name: b"base.raw",
            format: b"raw",
        }),
        ..QedCreateOptions::default()
    };
    let p = plan(&options).unwrap();
    let mut cluster = vec![0xAAu8; 64 * KIB as usize];
    assert_eq!(p.write_header_area(&mut cluster), Some(72));
    assert_eq!(cluster, expected);
}

#[test]
fn qemu_img_table_size_one_images_validate_here() {
    // qemu-img creates these but QEMU cannot open them again (its table-offset overflow
    // check is off by one cluster); the spec allows table_size 1, and so do we.
    let dir = ScratchDir::new("table1");
    for (cluster, size) in [(4 * KIB, GIB), (64 * KIB, 10 * MIB)] {
        let case = Case {
            cluster,
            table: 1,
            size,
            backing: None,
        };
        let bytes = qemu_create(&dir, "t1.qed", &case);
        let (_, layout) = parse(&bytes, bytes.len() as u64).expect("table_size 1 validates");
        assert_eq!(layout.table_size, 1);
        assert_eq!(layout.table_entries, cluster / 8);
        assert_eq!(layout.image_size, size);
        assert_eq!(bytes.len() as u64, 2 * cluster);
        let p = plan(&case.options()).unwrap();
        assert_eq!(p.file_len, bytes.len() as u64);
        let mut ours = vec![0u8; p.file_len as usize];
        p.write_header_area(&mut ours[..cluster as usize]).unwrap();
        assert_eq!(ours, bytes);
    }
}

#[test]
fn removed_backing_file_leaves_a_valid_header() {
    // `qemu-img rebase -u -b ""` clears the feature bits and the name size but leaves the
    // name offset (64) and the old name bytes: still a valid image without a backing file.
    let dir = ScratchDir::new("rebase");
    make_bases(&dir);
    qemu_img(
        &dir.0,
        &[
            "create", "-q", "-f", "qed", "-b", "base.raw", "-F", "raw", "r.qed", "1G",
        ],
    );
    qemu_img(&dir.0, &["rebase", "-u", "-b", "", "r.qed"]);
    let bytes = std::fs::read(dir.path("r.qed")).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[56..60].try_into().unwrap()), 64);
    let (_, layout) = parse(&bytes, bytes.len() as u64).unwrap();
    assert_eq!(layout.backing, None);
    assert_eq!(layout.features, 0);
    assert_eq!(layout.backing_name(&bytes), None);
}

#[test]
fn qemu_img_overlong_backing_name_is_refused_here() {
    // qemu-img writes a name longer than the rest of the header cluster and lets the L1
    // table overwrite its tail: an image QEMU itself then refuses to open. We refuse the
    // header, and `plan` refuses to make it.
    let dir = ScratchDir::new("longname");
    let name = "a".repeat(4040);
    let (code, text) = qemu_img_status(
        &dir.0,
        &[
            "create",
            "-q",
            "-f",
            "qed",
            "-u",
            "-o",
            "cluster_size=4096",
            "-b",
            &name,
            "-F",
            "raw",
            "long.qed",
            "1M",
        ],
    );
    if code == 0 {
        let bytes = std::fs::read(dir.path("long.qed")).unwrap();
        assert_eq!(
            parse(&bytes, bytes.len() as u64).unwrap_err(),
            QedHeaderError::BackingNameOutsideHeader {
                offset: 64,
                size: 4040,
                header_len: 4096
            }
        );
    } else {
        // A qemu-img that refuses the name agrees with us; nothing to compare.
        assert!(!text.is_empty());
    }
    let options = QedCreateOptions {
        size: MIB,
        cluster_size: 4 * KIB,
        backing: Some(QedBacking {
            name: name.as_bytes(),
            format: b"raw",
        }),
        ..QedCreateOptions::default()
    };
    assert_eq!(
        plan(&options).unwrap_err(),
        QedCreateError::BackingNameTooLong {
            len: 4040,
            max: 4032
        }
    );
}

// ---- 2. create matches qemu-img --------------------------------------------------------

#[test]
fn create_is_byte_identical_to_qemu_img() {
    for g in goldens() {
        let case = g.case;
        let p = plan(&case.options()).unwrap_or_else(|e| panic!("plan {case:?}: {e}"));
        assert_eq!(p.file_len, g.file_len, "{case:?}");
        assert_eq!(
            p.l1_table,
            Region {
                offset: case.cluster,
                len: case.cluster * case.table
            },
            "{case:?}"
        );
        assert_eq!(p.header_len, case.cluster);
        // Header cluster byte for byte; the rest of the file (the L1 table) is zeros in
        // both.
        let mut cluster = vec![0x5Au8; case.cluster as usize];
        let used = p.write_header_area(&mut cluster).unwrap();
        assert_eq!(used, p.header_used_len());
        assert!(
            cluster == g.header_cluster,
            "{case:?}: header cluster differs from qemu-img's"
        );
        assert_eq!(p.header.bytes(), &g.header_cluster[..QED_HEADER_LEN]);
        assert!(g.rest_is_zero);
        // And the plan validates against its own file length.
        let layout = validate(&p.header, p.file_len).unwrap();
        assert_eq!(layout.l1_table, p.l1_table);
    }
}

/// Writes `plan`'s file into `dir/name`.
fn write_plan(dir: &ScratchDir, name: &str, options: &QedCreateOptions<'_>) {
    let p = plan(options).unwrap();
    let mut file = vec![0u8; p.file_len as usize];
    p.write_header_area(&mut file[..p.header_len as usize])
        .unwrap();
    std::fs::write(dir.path(name), file).unwrap();
}

#[test]
fn qemu_img_opens_and_checks_images_we_create() {
    let dir = ScratchDir::new("ours");
    make_bases(&dir);
    let cases = [
        Case {
            cluster: 64 * KIB,
            table: 4,
            size: GIB,
            backing: None,
        },
        Case {
            cluster: 4 * KIB,
            table: 16,
            size: 3 * MIB + 512,
            backing: Some(("base.raw", "raw")),
        },
        Case {
            cluster: MIB,
            table: 2,
            size: 10 * GIB,
            backing: Some(("base.qed", "qed")),
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let name = format!("ours{i}.qed");
        write_plan(&dir, &name, &case.options());
        let info = qemu_img(&dir.0, &["info", "--output=json", "-f", "qed", &name]);
        let compact: String = info.chars().filter(|c| !c.is_whitespace()).collect();
        for needle in [
            "\"format\":\"qed\"".to_string(),
            format!("\"virtual-size\":{}", case.size),
            format!("\"cluster-size\":{}", case.cluster),
        ] {
            assert!(
                compact.contains(&needle),
                "{case:?}: {needle} not in {info}"
            );
        }
        if let Some((base, format)) = case.backing {
            assert!(
                compact.contains(&format!("\"backing-filename\":\"{base}\"")),
                "{info}"
            );
            if format == "raw" {
                assert!(
                    compact.contains("\"backing-filename-format\":\"raw\""),
                    "{info}"
                );
            }
        }
        let (code, text) = qemu_img_status(&dir.0, &["check", "-f", "qed", &name]);
        assert_eq!(code, 0, "qemu-img check {case:?}: {text}");
    }
}

// ---- 3. hand-broken headers ------------------------------------------------------------

/// The header every corpus case starts from: 64 KiB clusters, 4-cluster tables, 1 GiB,
/// raw backing file `base.raw`, in a file of exactly header cluster + L1 table.
fn good() -> (Vec<u8>, u64) {
    let p = plan(&QedCreateOptions {
        size: GIB,
        backing: Some(QedBacking {
            name: b"base.raw",
            format: b"raw",
        }),
        ..QedCreateOptions::default()
    })
    .unwrap();
    let mut bytes = vec![0u8; p.header_len as usize];
    p.write_header_area(&mut bytes).unwrap();
    (bytes, p.file_len)
}

struct Broken {
    what: &'static str,
    bytes: Vec<u8>,
    file_len: u64,
    expected: QedHeaderError,
}

fn broken(
    what: &'static str,
    expected: QedHeaderError,
    edit: impl FnOnce(&mut Vec<u8>, &mut u64),
) -> Broken {
    let (mut bytes, mut file_len) = good();
    edit(&mut bytes, &mut file_len);
    Broken {
        what,
        bytes,
        file_len,
        expected,
    }
}

fn corpus() -> Vec<Broken> {
    use QedHeaderError::*;
    let file = 5 * 64 * KIB;
    vec![
        broken(
            "63 bytes",
            TooShort {
                len: 63,
                needed: 64,
            },
            |b, _| b.truncate(63),
        ),
        broken("empty", TooShort { len: 0, needed: 64 }, |b, _| b.clear()),
        broken(
            "qcow2 magic",
            BadMagic {
                found: u32::from_le_bytes(*b"QFI\xfb"),
            },
            |b, _| b[..4].copy_from_slice(b"QFI\xfb"),
        ),
        broken(
            "FVD magic",
            BadMagic {
                found: u32::from_le_bytes(*b"FVD\0"),
            },
            |b, _| b[..4].copy_from_slice(b"FVD\0"),
        ),
        broken(
            "feature bit 3",
            UnknownIncompatibleFeature {
                bit: 3,
                features: 0xd,
            },
            |b, _| put64(b, off::FEATURES, 0xd),
        ),
        broken(
            "feature bit 63",
            UnknownIncompatibleFeature {
                bit: 63,
                features: (1 << 63) | 5,
            },
            |b, _| put64(b, off::FEATURES, (1 << 63) | 5),
        ),
        broken("cluster 2 KiB", BadClusterSize { size: 2048 }, |b, _| {
            put32(b, off::CLUSTER_SIZE, 2048)
        }),
        broken("cluster 0", BadClusterSize { size: 0 }, |b, _| {
            put32(b, off::CLUSTER_SIZE, 0)
        }),
        broken(
            "cluster 96 KiB",
            BadClusterSize { size: 96 << 10 },
            |b, _| put32(b, off::CLUSTER_SIZE, 96 << 10),
        ),
        broken(
            "cluster 128 MiB",
            BadClusterSize { size: 128 << 20 },
            |b, _| put32(b, off::CLUSTER_SIZE, 128 << 20),
        ),
        broken("table 0", BadTableSize { size: 0 }, |b, _| {
            put32(b, off::TABLE_SIZE, 0)
        }),
        broken("table 3", BadTableSize { size: 3 }, |b, _| {
            put32(b, off::TABLE_SIZE, 3)
        }),
        broken("table 32", BadTableSize { size: 32 }, |b, _| {
            put32(b, off::TABLE_SIZE, 32)
        }),
        broken(
            "header 0 clusters",
            BadHeaderSize {
                clusters: 0,
                cluster_size: 65536,
            },
            |b, _| put32(b, off::HEADER_SIZE, 0),
        ),
        broken(
            "header 4 GiB",
            BadHeaderSize {
                clusters: 65536,
                cluster_size: 65536,
            },
            |b, _| put32(b, off::HEADER_SIZE, 65536),
        ),
        broken(
            "header past the file",
            HeaderBeyondFile {
                header_len: 6 * 64 * KIB,
                file_len: file,
            },
            |b, _| put32(b, off::HEADER_SIZE, 6),
        ),
        broken(
            "file shorter than the header",
            HeaderBeyondFile {
                header_len: 64 * KIB,
                file_len: 4096,
            },
            |_, len| *len = 4096,
        ),
        broken("size 1000", ImageSizeUnaligned { size: 1000 }, |b, _| {
            put64(b, off::IMAGE_SIZE, 1000)
        }),
        broken(
            "size past 64 TiB",
            ImageSizeTooLarge {
                size: 64 * TIB + 512,
                max: 64 * TIB,
            },
            |b, _| put64(b, off::IMAGE_SIZE, 64 * TIB + 512),
        ),
        broken(
            "size past 1 GiB at 4 KiB x 1",
            ImageSizeTooLarge {
                size: GIB + 512,
                max: GIB,
            },
            |b, _| {
                put32(b, off::CLUSTER_SIZE, 4096);
                put32(b, off::TABLE_SIZE, 1);
                put64(b, off::L1_TABLE_OFFSET, 4096);
                put64(b, off::IMAGE_SIZE, GIB + 512);
            },
        ),
        broken(
            "L1 off by a sector",
            L1TableUnaligned {
                offset: 64 * KIB + 512,
                cluster_size: 65536,
            },
            |b, _| put64(b, off::L1_TABLE_OFFSET, 64 * KIB + 512),
        ),
        broken(
            "L1 at 0",
            L1TableInHeader {
                offset: 0,
                header_len: 64 * KIB,
            },
            |b, _| put64(b, off::L1_TABLE_OFFSET, 0),
        ),
        broken(
            "L1 in a 2-cluster header",
            L1TableInHeader {
                offset: 64 * KIB,
                header_len: 128 * KIB,
            },
            |b, len| {
                put32(b, off::HEADER_SIZE, 2);
                *len += 64 * KIB;
            },
        ),
        broken(
            "file one byte short of the L1",
            L1TableBeyondFile {
                offset: 64 * KIB,
                len: 256 * KIB,
                file_len: file - 1,
            },
            |_, len| *len -= 1,
        ),
        broken(
            "L1 at the end of u64",
            L1TableBeyondFile {
                offset: u64::MAX - (64 * KIB - 1),
                len: 256 * KIB,
                file_len: file,
            },
            |b, _| put64(b, off::L1_TABLE_OFFSET, u64::MAX - (64 * KIB - 1)),
        ),
        broken(
            "name without the feature",
            BackingNameWithoutFeature { size: 8 },
            |b, _| put64(b, off::FEATURES, 0),
        ),
        broken(
            "no-probe name without the feature",
            BackingNameWithoutFeature { size: 9 },
            |b, _| {
                put64(b, off::FEATURES, features::BACKING_FORMAT_NO_PROBE);
                put32(b, off::BACKING_FILENAME_SIZE, 9);
            },
        ),
        broken("feature without a name", BackingNameMissing, |b, _| {
            put32(b, off::BACKING_FILENAME_SIZE, 0)
        }),
        broken(
            "name of 4096 bytes",
            BackingNameTooLong {
                size: 4096,
                max: 4095,
            },
            |b, _| put32(b, off::BACKING_FILENAME_SIZE, 4096),
        ),
        broken(
            "name over the header fields",
            BackingNameOutsideHeader {
                offset: 8,
                size: 8,
                header_len: 64 * KIB,
            },
            |b, _| put32(b, off::BACKING_FILENAME_OFFSET, 8),
        ),
        broken(
            "name at 0",
            BackingNameOutsideHeader {
                offset: 0,
                size: 8,
                header_len: 64 * KIB,
            },
            |b, _| put32(b, off::BACKING_FILENAME_OFFSET, 0),
        ),
        broken(
            "name across the header cluster's end",
            BackingNameOutsideHeader {
                offset: 65532,
                size: 8,
                header_len: 64 * KIB,
            },
            |b, _| put32(b, off::BACKING_FILENAME_OFFSET, 65532),
        ),
        broken(
            "name at the end of u32",
            BackingNameOutsideHeader {
                offset: u32::MAX,
                size: 4095,
                header_len: 64 * KIB,
            },
            |b, _| {
                put32(b, off::BACKING_FILENAME_OFFSET, u32::MAX);
                put32(b, off::BACKING_FILENAME_SIZE, 4095);
            },
        ),
    ]
}

#[test]
fn broken_headers_each_yield_their_own_error() {
    let (bytes, file_len) = good();
    parse(&bytes, file_len).expect("the corpus base validates");

    let mut messages = HashSet::new();
    let mut variants = HashSet::new();
    for case in corpus() {
        let got = parse(&case.bytes, case.file_len).map(|(_, l)| l);
        assert_eq!(got, Err(case.expected), "{}", case.what);
        let message = case.expected.to_string();
        assert!(!message.is_empty() && message.len() < 200, "{message}");
        assert!(
            message.contains("QED"),
            "{}: message does not say what was being read: {message}",
            case.what
        );
        assert!(
            messages.insert(message.clone()),
            "{}: duplicate message {message}",
            case.what
        );
        variants.insert(std::mem::discriminant(&case.expected));
    }
    // Every rule has at least one case.
    assert_eq!(variants.len(), 16);
}

#[test]
fn error_messages_carry_the_numbers() {
    let e = QedHeaderError::UnknownIncompatibleFeature {
        bit: 3,
        features: 0xd,
    };
    assert!(e.to_string().contains("bit 3"), "{e}");
    let e = QedHeaderError::L1TableBeyondFile {
        offset: 65536,
        len: 262144,
        file_len: 100,
    };
    let m = e.to_string();
    assert!(
        m.contains("65536") && m.contains("262144") && m.contains("100"),
        "{m}"
    );
    let e: &dyn std::error::Error = &QedHeaderError::BackingNameMissing;
    assert!(e.to_string().contains("backing"));
    let e: &dyn std::error::Error = &QedCreateError::BadTableSize { size: 3 };
    assert!(e.to_string().contains('3'));
}

#[test]
fn lenient_fields_are_accepted_and_reported() {
    let (mut bytes, file_len) = good();
    // Unknown compatible bits: ignored.
    put64(&mut bytes, off::COMPAT_FEATURES, 0xF0);
    // Unknown auto-clear bits: reported so a writer can clear them.
    put64(&mut bytes, off::AUTOCLEAR_FEATURES, 0x8000_0000_0000_0001);
    // The need-check bit.
    put64(&mut bytes, off::FEATURES, 7);
    let (raw, layout) = parse(&bytes, file_len).unwrap();
    assert_eq!(layout.compat_features, 0xF0);
    assert_eq!(layout.unknown_autoclear_features, 0x8000_0000_0000_0001);
    assert!(layout.need_check);
    assert_eq!(layout.features, 7);
    let mut writer = raw.clone();
    assert!(writer.clear_unknown_autoclear());
    assert_eq!(writer.autoclear_features.get(), 0);
    assert!(!writer.clear_unknown_autoclear());
    let layout = validate(&writer, file_len).unwrap();
    assert_eq!(layout.unknown_autoclear_features, 0);

    // A file longer than the L1 table, and not a whole number of clusters.
    let (bytes, file_len) = good();
    assert!(parse(&bytes, file_len + 12345).is_ok());

    // No backing file, no-probe bit left over, stale name offset: QEMU ignores both.
    let (mut bytes, file_len) = good();
    put64(&mut bytes, off::FEATURES, features::BACKING_FORMAT_NO_PROBE);
    put32(&mut bytes, off::BACKING_FILENAME_SIZE, 0);
    let (_, layout) = parse(&bytes, file_len).unwrap();
    assert_eq!(layout.backing, None);

    // A name in the last bytes of a 2-cluster header area, L1 after it.
    let (mut bytes, file_len) = good();
    put32(&mut bytes, off::HEADER_SIZE, 2);
    put64(&mut bytes, off::L1_TABLE_OFFSET, 128 * KIB);
    put32(
        &mut bytes,
        off::BACKING_FILENAME_OFFSET,
        (128 * KIB - 4095) as u32,
    );
    put32(&mut bytes, off::BACKING_FILENAME_SIZE, 4095);
    let (_, layout) = parse(&bytes, file_len + 64 * KIB).unwrap();
    assert_eq!(
        layout.backing.unwrap().name,
        Region {
            offset: 128 * KIB - 4095,
            len: 4095
        }
    );
    // Only the first cluster at hand: the name cannot be sliced.
    assert_eq!(layout.backing_name(&bytes), None);

    // The largest geometry addresses more than u64: any sector-aligned size goes.
    let (mut bytes, _) = good();
    put32(&mut bytes, off::CLUSTER_SIZE, 64 << 20);
    put32(&mut bytes, off::TABLE_SIZE, 16);
    put64(&mut bytes, off::L1_TABLE_OFFSET, 64 << 20);
    put64(&mut bytes, off::IMAGE_SIZE, u64::MAX - 511);
    let (_, layout) = parse(&bytes, (64 << 20) * 17).unwrap();
    assert_eq!(layout.table_entries, 1 << 27);
    assert!(layout.index(u64::MAX - 511).is_some());
}

#[test]
fn probe_checks_the_magic_of_a_whole_header() {
    let (bytes, _) = good();
    assert!(probe(&bytes));
    assert!(probe(&bytes[..64]));
    assert!(!probe(&bytes[..63]));
    assert!(!probe(b"QED\0"));
    assert!(!probe(&[0u8; 512]));
    let mut fvd = bytes.clone();
    fvd[..4].copy_from_slice(b"FVD\0");
    assert!(!probe(&fvd));
    // Probing says nothing about validity.
    let mut broken = bytes;
    put32(&mut broken, off::CLUSTER_SIZE, 3);
    assert!(probe(&broken));
}

#[test]
fn layout_helpers_follow_the_tables() {
    let (bytes, file_len) = good();
    let (_, l) = parse(&bytes, file_len).unwrap();
    assert_eq!(l.backing_name(&bytes), Some(&b"base.raw"[..]));
    assert_eq!(l.decode_l1(0), L1Entry::Unallocated);
    assert_eq!(l.decode_l1(1), L1Entry::Invalid(1));
    assert_eq!(l.decode_l1(5 * 64 * KIB), L1Entry::Table(5 * 64 * KIB));
    assert_eq!(l.decode_l2(1), L2Entry::Zero);
    assert_eq!(l.decode_l2(4096), L2Entry::Invalid(4096));
    // Clusters and tables must lie after the header and inside the file.
    assert!(!l.cluster_in_file(0, file_len));
    assert!(l.cluster_in_file(64 * KIB, file_len));
    assert!(l.cluster_in_file(4 * 64 * KIB, file_len));
    assert!(!l.cluster_in_file(5 * 64 * KIB, file_len));
    assert!(!l.cluster_in_file(64 * KIB + 512, file_len));
    assert!(l.table_in_file(64 * KIB, file_len));
    assert!(!l.table_in_file(2 * 64 * KIB, file_len));
    assert!(!l.table_in_file(u64::MAX - (64 * KIB - 1), u64::MAX));
    // The last guest byte.
    let last = l.index(GIB - 1).unwrap();
    assert_eq!(last.l1, 0);
    assert_eq!(last.l2, GIB / (64 * KIB) - 1);
    assert_eq!(last.in_cluster, 64 * KIB - 1);
}

#[test]
fn create_refuses_what_it_cannot_make() {
    let with = |f: fn(&mut QedCreateOptions<'static>)| {
        let mut o = QedCreateOptions {
            size: GIB,
            ..QedCreateOptions::default()
        };
        f(&mut o);
        plan(&o).map(|_| ())
    };
    assert_eq!(
        with(|o| o.cluster_size = 2048),
        Err(QedCreateError::BadClusterSize { size: 2048 })
    );
    assert_eq!(
        with(|o| o.cluster_size = 1 << 32),
        Err(QedCreateError::BadClusterSize { size: 1 << 32 })
    );
    assert_eq!(
        with(|o| o.table_size = 32),
        Err(QedCreateError::BadTableSize { size: 32 })
    );
    assert_eq!(
        with(|o| o.table_size = 0),
        Err(QedCreateError::BadTableSize { size: 0 })
    );
    assert_eq!(
        with(|o| {
            o.cluster_size = 4096;
            o.table_size = 1;
            o.size = GIB + 1;
        }),
        Err(QedCreateError::SizeTooLarge {
            size: GIB + 1,
            max: GIB
        })
    );
    assert_eq!(
        with(|o| o.size = u64::MAX),
        Err(QedCreateError::SizeTooLarge {
            size: u64::MAX,
            max: 64 * TIB
        })
    );
    assert_eq!(
        with(|o| o.backing = Some(QedBacking {
            name: b"",
            format: b"raw"
        })),
        Err(QedCreateError::BackingNameEmpty)
    );
    assert_eq!(
        with(|o| o.backing = Some(QedBacking {
            name: b"a\0b",
            format: b"raw"
        })),
        Err(QedCreateError::BackingNameHasNul)
    );
    static LONG: [u8; 4096] = [b'x'; 4096];
    assert_eq!(
        with(|o| o.backing = Some(QedBacking {
            name: &LONG,
            format: b""
        })),
        Err(QedCreateError::BackingNameTooLong {
            len: 4096,
            max: 4095
        })
    );
    // Exactly at the limits.
    assert!(with(|o| {
        o.cluster_size = 4096;
        o.table_size = 1;
        o.size = GIB;
    })
    .is_ok());
    assert!(with(|o| o.backing = Some(QedBacking {
        name: &LONG[..4095],
        format: b"qed"
    }))
    .is_ok());
    // Geometries whose maximum overflows u64 (QEMU refuses them by mistake).
    assert!(with(|o| {
        o.cluster_size = 2 << 20;
        o.table_size = 16;
        o.size = 1 << 62;
    })
    .is_ok());
    // Too small a buffer for header + name.
    let p = plan(&QedCreateOptions {
        backing: Some(QedBacking {
            name: b"base.raw",
            format: b"raw",
        }),
        ..QedCreateOptions::default()
    })
    .unwrap();
    let mut small = [0u8; 71];
    assert_eq!(p.write_header_area(&mut small), None);
    assert_eq!(small, [0u8; 71]);
    let mut exact = [0u8; 72];
    assert_eq!(p.write_header_area(&mut exact), Some(72));
    assert_eq!(&exact[64..], b"base.raw");
}

// ---- 4. properties ---------------------------------------------------------------------

/// The invariants `validate` promises for every layout it returns.
fn assert_sane(l: &QedLayout, header: &[u8], file_len: u64) -> Result<(), TestCaseError> {
    prop_assert!(l.cluster_size.is_power_of_two());
    prop_assert!((4 * KIB..=64 * MIB).contains(&l.cluster_size));
    prop_assert_eq!(1u64 << l.cluster_bits, l.cluster_size);
    prop_assert!(l.table_size.is_power_of_two() && l.table_size <= 16);
    prop_assert_eq!(l.table_len, l.table_size * l.cluster_size);
    prop_assert_eq!(l.table_entries * 8, l.table_len);
    prop_assert!(l.header_len >= l.cluster_size && l.header_len <= u64::from(u32::MAX));
    prop_assert!(l.header_len <= file_len);
    prop_assert_eq!(l.l1_table.offset % l.cluster_size, 0);
    prop_assert!(l.l1_table.offset >= l.header_len);
    prop_assert!(l.l1_table.offset.checked_add(l.l1_table.len).unwrap() <= file_len);
    prop_assert!(l.table_in_file(l.l1_table.offset, file_len));
    prop_assert_eq!(l.image_size % 512, 0);
    if l.image_size > 0 {
        prop_assert!(l.index(l.image_size - 1).is_some());
    }
    prop_assert_eq!(l.features & !features::KNOWN_INCOMPATIBLE, 0);
    prop_assert_eq!(l.need_check, l.features & features::NEED_CHECK != 0);
    match l.backing {
        Some(b) => {
            prop_assert!(l.features & features::BACKING_FILE != 0);
            prop_assert!(b.name.len >= 1 && b.name.len <= u64::from(MAX_BACKING_NAME_LEN));
            prop_assert!(b.name.offset >= 64 && b.name.end() <= l.header_len);
            if b.name.end() <= header.len() as u64 {
                prop_assert_eq!(
                    l.backing_name(header).map(<[u8]>::len),
                    Some(b.name.len as usize)
                );
            }
        }
        None => prop_assert!(l.features & features::BACKING_FILE == 0),
    }
    Ok(())
}

fn arb_file_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..(2 * MIB),
        (1u64..64).prop_map(|n| n * 64 * KIB),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..160),
        file_len in arb_file_len(),
    ) {
        let _ = probe(&bytes);
        if let Ok((raw, layout)) = parse(&bytes, file_len) {
            prop_assert_eq!(raw.bytes(), &bytes[..64]);
            assert_sane(&layout, &bytes, file_len)?;
        }
    }

    #[test]
    fn near_valid_headers_never_panic(
        edits in proptest::collection::vec(
            (0usize..64, prop_oneof![any::<u8>(), Just(0u8), Just(0xFFu8), Just(1u8)]),
            1..6,
        ),
        extra_len in prop_oneof![Just(0u64), any::<u64>(), 0u64..(1 << 20)],
        truncate in prop_oneof![Just(None), (0usize..80).prop_map(Some)],
    ) {
        let (mut bytes, file_len) = good();
        for (at, value) in edits {
            bytes[at] = value;
        }
        if let Some(len) = truncate {
            bytes.truncate(len);
        }
        let file_len = file_len.saturating_add(extra_len);
        match parse(&bytes, file_len) {
            Ok((_, layout)) => assert_sane(&layout, &bytes, file_len)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn plans_validate_or_are_refused(
        cluster_bits in 10u32..28,
        table_size in prop_oneof![0u64..20, Just(u64::MAX)],
        size in prop_oneof![any::<u64>(), 0u64..(1 << 45)],
        backing in proptest::option::of((
            proptest::collection::vec(1u8..=255, 0..5000),
            prop_oneof![Just(&b"raw"[..]), Just(&b"qed"[..]), Just(&b""[..])],
        )),
    ) {
        let cluster_size = 1u64 << cluster_bits;
        let options = QedCreateOptions {
            size,
            cluster_size,
            table_size,
            backing: backing.as_ref().map(|(name, format)| QedBacking { name, format }),
        };
        match plan(&options) {
            Ok(p) => {
                // Only the used part of the header cluster: clusters go up to 64 MiB.
                let mut area = vec![0u8; p.header_used_len()];
                prop_assert_eq!(p.write_header_area(&mut area), Some(p.header_used_len()));
                let (_, layout) = parse(&area, p.file_len)
                    .map_err(|e| TestCaseError::fail(format!("plan does not validate: {e}")))?;
                assert_sane(&layout, &area, p.file_len)?;
                prop_assert_eq!(layout.cluster_size, cluster_size);
                prop_assert_eq!(layout.table_size, table_size);
                prop_assert_eq!(layout.image_size, size.div_ceil(512) * 512);
                prop_assert_eq!(layout.l1_table, p.l1_table);
                prop_assert_eq!(p.file_len, cluster_size * (1 + table_size));
                match &backing {
                    Some((name, format)) => {
                        prop_assert_eq!(layout.backing_name(&area), Some(&name[..]));
                        prop_assert_eq!(layout.backing.unwrap().raw, *format == b"raw");
                    }
                    None => prop_assert_eq!(layout.backing, None),
                }
            }
            Err(QedCreateError::BadClusterSize { .. }) => {
                prop_assert!(!(12..=26).contains(&cluster_bits));
            }
            Err(QedCreateError::BadTableSize { .. }) => {
                prop_assert!(!(table_size.is_power_of_two() && table_size <= 16));
            }
            Err(QedCreateError::SizeTooLarge { max, .. }) => {
                prop_assert!(size.div_ceil(512).checked_mul(512).is_none_or(|s| s > max));
            }
            Err(QedCreateError::BackingNameEmpty) => {
                prop_assert!(backing.as_ref().unwrap().0.is_empty());
            }
            Err(QedCreateError::BackingNameTooLong { len, max }) => {
                prop_assert!(len > max);
                prop_assert_eq!(max, (cluster_size - 64).min(4095));
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn index_math_round_trips(
        cluster_bits in 12u32..=26,
        table_bits in 0u32..=4,
        offset in any::<u64>(),
    ) {
        let cluster = 1u64 << cluster_bits;
        let tables = 1u64 << table_bits;
        let entries = table::entries_per_table(cluster, tables).unwrap();
        let max = table::max_image_size(cluster, tables);
        match TableIndex::split(offset, cluster, entries) {
            Some(index) => {
                prop_assert!(max.is_none_or(|max| offset < max));
                prop_assert!(index.l1 < entries && index.l2 < entries);
                prop_assert!(index.in_cluster < cluster);
                // The shift form QEMU uses gives the same answer.
                let l2_shift = cluster_bits;
                let l1_shift = l2_shift + entries.trailing_zeros();
                prop_assert_eq!(index.l1, offset >> l1_shift);
                prop_assert_eq!(index.l2, (offset >> l2_shift) & (entries - 1));
                prop_assert_eq!(index.in_cluster, offset & (cluster - 1));
                prop_assert_eq!(index.join(cluster, entries), Some(offset));
            }
            None => prop_assert!(max.is_some_and(|max| offset >= max)),
        }
    }

    #[test]
    fn entries_decode_totally(raw in any::<u64>(), cluster_bits in 0u32..64) {
        let cluster = 1u64 << cluster_bits;
        let l2 = L2Entry::decode(raw, cluster);
        prop_assert_eq!(l2.encode(), raw);
        let l1 = L1Entry::decode(raw, cluster);
        prop_assert_eq!(l1.encode(), raw);
        if let L2Entry::Cluster(at) = l2 {
            prop_assert!(at != 0 && at % cluster == 0);
        }
        if raw > 1 && raw % cluster != 0 {
            prop_assert_eq!(l2, L2Entry::Invalid(raw));
        }
        prop_assert_eq!(L2Entry::decode(raw, 0).encode(), raw);
    }
}

#[test]
fn header_struct_matches_the_hand_written_offsets() {
    let mut bytes = [0u8; 64];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    let h = QedHeader::view(&bytes).unwrap();
    let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(h.magic.get(), le32(off::MAGIC));
    assert_eq!(h.cluster_size.get(), le32(off::CLUSTER_SIZE));
    assert_eq!(h.table_size.get(), le32(off::TABLE_SIZE));
    assert_eq!(h.header_size.get(), le32(off::HEADER_SIZE));
    assert_eq!(h.features.get(), le64(off::FEATURES));
    assert_eq!(h.compat_features.get(), le64(off::COMPAT_FEATURES));
    assert_eq!(h.autoclear_features.get(), le64(off::AUTOCLEAR_FEATURES));
    assert_eq!(h.l1_table_offset.get(), le64(off::L1_TABLE_OFFSET));
    assert_eq!(h.image_size.get(), le64(off::IMAGE_SIZE));
    assert_eq!(
        h.backing_filename_offset.get(),
        le32(off::BACKING_FILENAME_OFFSET)
    );
    assert_eq!(
        h.backing_filename_size.get(),
        le32(off::BACKING_FILENAME_SIZE)
    );
    assert_eq!(h.bytes(), &bytes[..]);
    assert!(QedHeader::view(&bytes[..63]).is_none());
    assert_eq!(QedHeader::zeroed().bytes(), &[0u8; 64][..]);
}

#[test]
fn copy_on_read_is_the_rfc_compat_bit_and_needs_a_backing_file() {
    let mut bare = plan(&QedCreateOptions {
        size: 1 << 20,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        bare.set_copy_on_read(),
        Err(QedCreateError::CopyOnReadWithoutBacking)
    );
    assert_eq!(bare.header.compat_features.get(), 0);
    let mut with_base = plan(&QedCreateOptions {
        size: 1 << 20,
        backing: Some(QedBacking {
            name: b"base.raw",
            format: b"raw",
        }),
        ..Default::default()
    })
    .unwrap();
    with_base.set_copy_on_read().unwrap();
    assert_eq!(
        with_base.header.compat_features.get(),
        fvd_core::qed::features::COMPAT_COPY_ON_READ
    );
    // A known compatible bit: validation accepts it and reports it.
    let mut bytes = vec![0u8; with_base.file_len as usize];
    with_base.write_header_area(&mut bytes).unwrap();
    let (_, layout) = fvd_core::qed::parse(&bytes, bytes.len() as u64).unwrap();
    assert_eq!(layout.compat_features, 1);
}
