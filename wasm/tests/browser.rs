//! The glue in a real browser (headless Chromium through wasm-bindgen-test-runner): images
//! built in memory by core's `create`, every file read fulfilled from those bytes the way
//! the page fulfils them from `File.slice`.
#![cfg(target_arch = "wasm32")]

use fvd_core::qed::{self, QedBacking, QedCreateOptions};
use fvd_wasm::{
    base_name, header_fields, probe_kind, qed_l2_tables, qed_need_check, regions, Check, Inspector,
    Partitions,
};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const MIB: usize = 1 << 20;

/// A QED image of 1 MiB over `base.raw` with nothing written: its whole file.
fn qed_over_raw_base() -> Vec<u8> {
    let plan = qed::plan(&QedCreateOptions {
        size: MIB as u64,
        backing: Some(QedBacking {
            name: b"base.raw",
            format: b"raw",
        }),
        ..QedCreateOptions::default()
    })
    .expect("a valid plan");
    let mut file = vec![0u8; plan.file_len as usize];
    plan.write_header_area(&mut file)
        .expect("room for the header");
    file
}

/// A raw base whose byte `i` is `i % 251`.
fn raw_base() -> Vec<u8> {
    (0..MIB).map(|i| (i % 251) as u8).collect()
}

/// Fulfils every read the inspector asks for from `image` and the raw `base`.
fn drive(inspector: &mut Inspector, image: &[u8], base: &[u8]) {
    while let Some(read) = inspector.next_read() {
        let file = if read.file() == "base" { base } else { image };
        let start = (read.offset as usize).min(file.len());
        let end = (start + read.len as usize).min(file.len());
        inspector
            .complete_read(&file[start..end])
            .expect("a read was outstanding");
    }
}

fn open(image: &[u8], base: Option<&[u8]>) -> Inspector {
    let mut inspector = Inspector::new();
    inspector
        .add_layer(
            &image[..image.len().min(65536)],
            image.len() as f64,
            None,
            0,
        )
        .expect("lengths are byte counts");
    inspector.start(base.is_some()).expect("one layer chains");
    drive(&mut inspector, image, base.unwrap_or_default());
    inspector
}

#[wasm_bindgen_test]
fn a_qed_image_names_the_base_file_its_header_records() {
    let image = qed_over_raw_base();
    assert_eq!(probe_kind(&image), "qed");
    assert_eq!(
        base_name(&image, image.len() as f64).as_deref(),
        Some("base.raw")
    );
    let fields = header_fields(&image).expect("a QED header");
    let size = fields
        .iter()
        .find(|f| f.name == "image_size")
        .expect("image_size");
    assert_eq!(size.value, MIB.to_string());
}

#[wasm_bindgen_test]
fn unwritten_bytes_of_an_overlay_are_read_from_its_raw_base() {
    let (image, base) = (qed_over_raw_base(), raw_base());
    let mut inspector = open(&image, Some(&base));
    assert!(inspector.open_result().is_ok());
    assert_eq!(inspector.virtual_size(), Some(MIB as f64));

    inspector.begin_map(0.0, MIB as f64).expect("open");
    drive(&mut inspector, &image, &base);
    let run = inspector.finish_map().map_err(|_| "map failed").unwrap();
    assert_eq!(
        (run.state(), run.offset, run.len),
        ("base".to_string(), 0.0, MIB as f64)
    );

    inspector.begin_read(4096.0, 1024).expect("open");
    drive(&mut inspector, &image, &base);
    let bytes = inspector.finish_read().map_err(|_| "read failed").unwrap();
    assert_eq!(bytes, base[4096..5120]);
}

#[wasm_bindgen_test]
fn an_overlay_whose_base_was_not_given_fails_to_open_with_a_message() {
    let image = qed_over_raw_base();
    let inspector = open(&image, None);
    assert!(inspector.open_result().is_err());
    let mut inspector = inspector;
    assert!(inspector.begin_read(0.0, 512).is_err());
}

#[wasm_bindgen_test]
fn random_bytes_are_refused_with_errors_never_a_trap() {
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(probe_kind(&junk), "raw");
    assert!(header_fields(&junk).is_err());
    assert!(Check::new(&junk, junk.len() as f64, None).is_err());
    let inspector = open(&junk, None);
    assert!(inspector.open_result().is_err());
    let mut inspector = Inspector::new();
    assert!(inspector.add_layer(&junk, -1.0, None, 0).is_err());
    assert!(inspector.add_layer(&junk, f64::NAN, None, 0).is_err());
}

#[wasm_bindgen_test]
fn a_read_larger_than_the_guest_buffer_bound_is_refused() {
    let (image, base) = (qed_over_raw_base(), raw_base());
    let mut inspector = open(&image, Some(&base));
    assert!(inspector.begin_read(0.0, 2 * MIB as u32).is_err());
    assert!(inspector.finish_read().is_err());
}

#[wasm_bindgen_test]
fn a_fresh_qed_image_checks_clean() {
    let image = qed_over_raw_base();
    let mut check = Check::new(&image, image.len() as f64, None).expect("a QED header");
    while let Some(read) = check.next_read().map_err(|_| "check step failed").unwrap() {
        let start = (read.offset as usize).min(image.len());
        let end = (start + read.len as usize).min(image.len());
        check
            .complete_read(&image[start..end])
            .expect("a read was outstanding");
    }
    assert_eq!((check.errors(), check.leaks()), (0.0, 0.0));
    assert!(check.findings().is_empty());
}

#[wasm_bindgen_test]
fn the_mbr_of_a_raw_base_is_listed_through_the_overlay_above_it() {
    let image = qed_over_raw_base();
    let mut base = raw_base();
    base[..512].fill(0);
    // Partition 1: type 0x83 from sector 2048 (1 MiB) for 8 sectors, boot flag set.
    base[446] = 0x80;
    base[446 + 4] = 0x83;
    base[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    base[446 + 12..446 + 16].copy_from_slice(&8u32.to_le_bytes());
    base[510] = 0x55;
    base[511] = 0xaa;
    let mut inspector = open(&image, Some(&base));
    let mut scan = Partitions::new(MIB as f64).map_err(|_| "size").unwrap();
    while let Some(offset) = scan.want_offset() {
        inspector.begin_read(offset, scan.want_len()).expect("open");
        drive(&mut inspector, &image, &base);
        let bytes = inspector.finish_read().map_err(|_| "read failed").unwrap();
        scan.give(&bytes).map_err(|_| "scan failed").unwrap();
    }
    assert!(scan.label().starts_with("MBR"));
    let rows = scan.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].index, rows[0].start, rows[0].size),
        (1, MIB as f64, 4096.0)
    );
    assert!(rows[0].kind.starts_with("Linux"));
    // A short read is an error, not a trap.
    let mut scan = Partitions::new(MIB as f64).map_err(|_| "size").unwrap();
    assert!(scan.give(&[0u8; 10]).is_err());
    assert!(Partitions::new(-5.0).is_err());
}

#[wasm_bindgen_test]
fn a_fresh_qed_image_has_a_header_and_an_l1_table_and_no_need_check() {
    let image = qed_over_raw_base();
    let len = image.len() as f64;
    let rows = regions(&image, len).map_err(|_| "regions").unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["header", "L1 table"]);
    assert_eq!(rows[0].offset, 0.0);
    let l1 = &image[rows[1].offset as usize..(rows[1].offset + rows[1].len) as usize];
    assert!(qed_l2_tables(&image, len, l1)
        .map_err(|_| "l2")
        .unwrap()
        .is_empty());
    assert_eq!(qed_need_check(&image, len).ok(), Some(false));
    assert!(regions(&[0u8; 100], 100.0).is_err());
}
