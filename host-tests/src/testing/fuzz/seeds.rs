//! The committed seed corpus of each fuzz target (`fuzz/seeds/<target>/`): inputs built
//! from valid images of every kind and from the malformed corpus ([`crate::testing::malformed`]),
//! encoded the way each target decodes its input, so fuzzing starts deep in the engine
//! instead of at the magic. `tests/fuzz_seeds.rs` keeps the committed files equal to
//! these and runs every seed (and every saved crash) through its target.

use super::fvd::{self, Shape};
use super::input::Encoder;
use super::model::Kind;
use super::qed::{self, QedShape};
use crate::testing::malformed;

/// FVD shapes the seeds start from.
fn shapes() -> Vec<Shape> {
    (0u8..16)
        .map(|i| Shape::from_byte(i.wrapping_mul(0x4B) ^ (0x10 * (i & 1))))
        .chain([0x00, 0x01, 0x03, 0x13, 0x23, 0x43, 0x83].map(Shape::from_byte))
        .collect()
}

/// Journal scripts for [`fvd::encode`]: (name, epoch byte, stored chunks, op count, ops).
fn journal_scripts() -> Vec<(&'static str, u8, u8, u8, Vec<u8>)> {
    let cat = |ops: &[Vec<u8>]| ops.concat();
    vec![
        ("empty", 5, 4, 0, Vec::new()),
        ("table", 5, 4, 1, fvd::table_sector_op(0, 1, &[0, 1])),
        (
            "table-bitmap",
            5,
            4,
            2,
            cat(&[
                fvd::table_sector_op(0, 2, &[3]),
                fvd::bitmap_sector_op(1, 0, &[0xff, 0x0f]),
            ]),
        ),
        (
            "torn",
            5,
            4,
            2,
            cat(&[fvd::table_sector_op(0, 1, &[2]), fvd::tear_op(0, 300)]),
        ),
        (
            "shared-via-journal",
            5,
            4,
            2,
            cat(&[fvd::table_patch_op(0, 0), fvd::table_sector_op(0, 3, &[0])]),
        ),
        (
            "conflict",
            5,
            4,
            2,
            cat(&[fvd::table_patch_op(1, 2), fvd::table_sector_op(0, 1, &[3])]),
        ),
        (
            "past-table",
            5,
            4,
            1,
            fvd::table_sector_op(0, 15, &[1, 2, 3]),
        ),
        ("past-storage", 5, 2, 1, fvd::table_sector_op(0, 0, &[30])),
        ("edge-epoch", 0xC1, 4, 1, fvd::table_sector_op(0, 0, &[1])),
        ("bad-epoch", 0xC5, 4, 1, fvd::table_sector_op(0, 0, &[1])),
        (
            "future-epoch",
            5,
            4,
            2,
            cat(&[
                fvd::table_sector_op(0, 0, &[1]),
                // High bits 6: sealed for the next epoch.
                {
                    let mut op = fvd::table_sector_op(1, 1, &[1]);
                    op[0] = 0xC0;
                    op
                },
            ]),
        ),
    ]
}

/// Every FVD case seed: each journal script on a few shapes.
fn fvd_cases() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let shapes = shapes();
    for (i, (name, epoch, stored, count, ops)) in journal_scripts().into_iter().enumerate() {
        for (j, shape) in [shapes[i % shapes.len()], shapes[(i + 7) % shapes.len()]]
            .into_iter()
            .enumerate()
        {
            let shape = Shape {
                compact: true,
                clean: false,
                ..shape
            };
            out.push((
                format!("fvd-{name}-{j}-{:02x}", shape.to_byte()),
                fvd::encode(shape, epoch, stored, count, &ops),
            ));
        }
    }
    for shape in shapes.iter().take(6) {
        out.push((
            format!("fvd-plain-{:02x}", shape.to_byte()),
            fvd::encode(*shape, 3, 4, 0, &[]),
        ));
    }
    out
}

/// QED case seeds: shapes with a few allocations, zero clusters and patches.
fn qed_cases() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for b in [0x00u8, 0x01, 0x03, 0x08, 0x09, 0x11, 0x20, 0x25, 0x2B] {
        let shape = QedShape::from_byte(b);
        out.push((
            format!("qed-{b:02x}"),
            qed::encode(
                shape,
                &[(0, false), (5, false), (40, true), (600, false)],
                &[],
                0,
            ),
        ));
    }
    // L1 entry 1 pointing at cluster 4 (a data cluster); an L2 entry past EOF; a short file.
    let shape = QedShape::from_byte(0x08);
    let patches = Encoder::new()
        .u8(4)
        .u8(4)
        .u8(1)
        .u8(0)
        .u16(1)
        .u8(60)
        .u8(3 | (3 << 2))
        .finish();
    out.push((
        "qed-patched".into(),
        qed::encode(shape, &[(0, false), (1, false)], &patches, 3),
    ));
    out
}

/// The malformed corpus's files.
fn corpus_files() -> Vec<(String, Vec<u8>)> {
    malformed::corpus()
        .into_iter()
        .map(|e| (format!("corpus-{}", e.file), e.bytes))
        .collect()
}

fn header_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in corpus_files()
        .into_iter()
        .chain(shapes().into_iter().take(8).map(|s| {
            let bytes = crate::testing::newimage::initial_metadata(&s.header());
            (format!("shape-{:02x}", s.to_byte()), bytes)
        }))
    {
        let head = &bytes[..bytes.len().min(fvd_core::fvd::RAW_HEADER_LEN)];
        out.push((
            name,
            Encoder::new()
                .u8(0)
                .u64(bytes.len() as u64)
                .raw(head)
                .finish(),
        ));
    }
    for mode in [1u8, 3, 5, 7] {
        // Edits: data_offset's low byte, the table size, the journal epoch's top byte.
        let edits = Encoder::new()
            .u16(24)
            .u8(0x10)
            .u16(2196)
            .u8(0x01)
            .u16(2171)
            .u8(0x80)
            .finish();
        out.push((
            format!("edits-{mode}"),
            Encoder::new().u8(mode).u64(64 << 20).raw(&edits).finish(),
        ));
    }
    out
}

fn qed_header_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let images = corpus_files()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".qed"))
        .chain(qed_cases().into_iter().map(|(name, input)| {
            let case = qed::build(&mut super::input::Input::new(&input));
            (name, case.image)
        }));
    let planned = [
        (4096u64, 1u64),
        (65536, 4),
        (1 << 20, 16),
        (64 << 20, 16),
        (4096, 16),
    ]
    .into_iter()
    .map(|(cluster_size, table_size)| {
        let plan = fvd_core::qed::plan(&fvd_core::qed::QedCreateOptions {
            size: 1 << 30,
            cluster_size,
            table_size,
            backing: Some(fvd_core::qed::QedBacking {
                name: b"base",
                format: b"",
            }),
        })
        .expect("valid QED options");
        let mut bytes = vec![0u8; 256];
        plan.write_header_area(&mut bytes)
            .expect("room for the header");
        (format!("plan-{cluster_size}-{table_size}"), bytes)
    });
    for (i, (name, bytes)) in images.chain(planned).enumerate() {
        let head = &bytes[..bytes.len().min(4096)];
        let offset = (i as u64) * 0x1_2345_6000;
        out.push((
            name,
            Encoder::new()
                .u64(bytes.len() as u64)
                .u64(offset)
                .raw(head)
                .finish(),
        ));
    }
    out
}

fn engine_image_seeds() -> Vec<(String, Vec<u8>)> {
    // Writes, zeroes, discards, maps, reads and a flush.
    let ops: Vec<u8> = [
        [1u8, 0, 0, 8],
        [1, 40, 0, 16],
        [2, 8, 0, 4],
        [3, 0, 1, 32],
        [4, 0, 0, 63],
        [0, 0, 0, 63],
        [5, 0, 0, 0],
        [0, 30, 0, 40],
    ]
    .concat();
    let mut out = Vec::new();
    for (name, bytes) in corpus_files() {
        let mut e = Encoder::new();
        e.u8(8).raw(&ops).u8(0).raw(&bytes);
        out.push((name, e.finish()));
    }
    for kind in 1u8..5 {
        // A journal sector's worth of metadata bytes after the header.
        let mut e = Encoder::new();
        e.u8(8)
            .raw(&ops)
            .u8(kind)
            .raw(&[0xFF; 64])
            .raw(&[0, 0, 0, 0]);
        out.push((format!("kind-{kind}"), e.finish()));
    }
    out
}

fn check_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, input) in fvd_cases() {
        out.push((name, [&[0u8][..], &input].concat()));
    }
    for (name, input) in qed_cases() {
        out.push((name, [&[1u8][..], &input].concat()));
    }
    for (name, bytes) in corpus_files() {
        out.push((name, [&[2u8][..], &bytes].concat()));
    }
    out
}

fn inspect_seeds() -> Vec<(String, Vec<u8>)> {
    let reads = Encoder::new()
        .u8(4)
        .u32(0)
        .u8(63)
        .u32(100)
        .u8(8)
        .u32(400)
        .u8(1)
        .u32(u32::MAX)
        .u8(0)
        .finish();
    let mut out = Vec::new();
    for (i, (name, input)) in fvd_cases().into_iter().enumerate() {
        // Every third over a base that is itself an image (FVD, then QED).
        let base: Vec<u8> = match i % 3 {
            0 => vec![0],
            1 => [
                &[1u8][..],
                &fvd::encode(Shape::from_byte(0x01), 2, 4, 0, &[]),
            ]
            .concat(),
            _ => [
                &[2u8][..],
                &qed::encode(QedShape::default(), &[(1, false)], &[], 0),
            ]
            .concat(),
        };
        out.push((name, [&[0u8][..], &input, &base, &reads].concat()));
    }
    for (name, input) in qed_cases() {
        out.push((name, [&[1u8][..], &input, &[0u8][..], &reads].concat()));
    }
    for (name, bytes) in corpus_files() {
        let len = (bytes.len() as u16).to_le_bytes();
        let bytes = &bytes[..bytes.len().min(usize::from(u16::MAX))];
        out.push((name, [&[2u8][..], &len, bytes, &[0u8][..], &reads].concat()));
    }
    out
}

fn model_seeds() -> Vec<(String, Vec<u8>)> {
    let ops = |salt: u8| -> Vec<u8> {
        let mut e = Encoder::new();
        for (i, (op, sector, count)) in [
            (0u8, 0u16, 8u8),
            (1, 33, 63),
            (5, 0, 63),
            (2, 8, 16),
            (3, 100, 40),
            (4, 0, 0),
            (0, 480, 63),
            (7, 0, 0),
            (6, 90, 63),
            (0, 250, 9),
            (3, 0, 200),
            (5, 200, 63),
        ]
        .into_iter()
        .enumerate()
        {
            let op = op | (salt.wrapping_add(i as u8) << 3);
            e.u8(op).u16(sector.wrapping_add(u16::from(salt))).u8(count);
        }
        e.finish()
    };
    let mut out = Vec::new();
    for (i, kind) in Kind::ALL.iter().enumerate() {
        for variant in 0u8..3 {
            let small = variant == 1;
            let kind_byte = i as u8 | if small { 0x80 } else { 0 };
            // Options: cache pages, copy-on-read on odd kinds, completions shuffled with
            // up to 3 or 6 commands pending in variants 1 and 2.
            let flags = (i as u8 % 8) | (u8::from(i % 2 == 1) << 4) | ((variant * 3) << 5);
            let salt = (i as u8) * 17 + variant;
            out.push((
                format!("{kind:?}-{variant}").to_lowercase(),
                [&[kind_byte, flags, salt][..], &ops(salt)].concat(),
            ));
        }
    }
    out
}

/// The seeds of `target`: (file name, input).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut seeds = match target {
        "fvd_header" => header_seeds(),
        "qed_header" => qed_header_seeds(),
        "engine_image" => engine_image_seeds(),
        "fvd_replay" => fvd_cases(),
        "check" => check_seeds(),
        "inspect" => inspect_seeds(),
        "model" => model_seeds(),
        _ => Vec::new(),
    };
    for (name, _) in &mut seeds {
        *name = format!("gen-{name}");
    }
    seeds
}
