//! The inspector's JSON exports equal `fvd-img info|map|check --output json` for the same
//! images: the exports run natively here (fvd-wasm is an rlib too), fed with the file
//! bytes through the same next_read / complete_read protocol the page uses; fvd-img runs
//! in-process in the images' directory, so names are the same relative names the page
//! has. Image files are written without holes: a `File` in the browser has none, and
//! `fvd-img map` reports a hole in stored data as zeros.
#![cfg(not(target_arch = "wasm32"))]

use fvd_wasm::export::{CheckExport, InfoExport, MapExport};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// fvd-img runs in the images' directory: one test at a time changes it.
static CWD: Mutex<()> = Mutex::new(());

fn fvd_img(dir: &Path, args: &[&str]) -> (u8, String) {
    let _held = CWD.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_current_dir(dir).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = std::iter::once("fvd-img").chain(args.iter().copied());
    let code = fvd_host::cli::run_with(args, &mut out, &mut err);
    assert!(
        err.is_empty() || code != 0,
        "{}",
        String::from_utf8_lossy(&err)
    );
    (code, String::from_utf8(out).unwrap())
}

fn qemu(dir: &Path, tool: &str, args: &[&str]) {
    let run = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Rewrites `name` with every byte stored (no holes), as the browser sees any file.
fn unsparse(dir: &Path, name: &str) {
    let bytes = fs::read(dir.join(name)).unwrap();
    fs::remove_file(dir.join(name)).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn read(dir: &Path, name: &str, offset: f64, len: u32) -> Vec<u8> {
    let file = fs::File::open(dir.join(name)).unwrap();
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file
            .read_at(&mut buf[filled..], offset as u64 + filled as u64)
            .unwrap()
        {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
    buf
}

fn first(dir: &Path, name: &str) -> Vec<u8> {
    read(dir, name, 0.0, 65536)
}

fn len(dir: &Path, name: &str) -> f64 {
    fs::metadata(dir.join(name)).unwrap().len() as f64
}

fn info_export(dir: &Path, name: &str, data: Option<&str>) -> String {
    let data_len = data.map(|d| len(dir, d));
    let mut export = InfoExport::new(
        &first(dir, name),
        name.into(),
        len(dir, name),
        data.map(str::to_string),
        data_len,
    )
    .unwrap_or_else(|_| panic!("{name}: the info export refused the image"));
    while let Some(r) = export.next_read() {
        export.complete_read(&read(dir, name, r.offset, r.len));
    }
    export
        .json()
        .unwrap_or_else(|_| panic!("{name}: no info document"))
}

fn check_export(dir: &Path, name: &str, data: Option<&str>) -> String {
    let mut export = CheckExport::new(
        &first(dir, name),
        name.into(),
        len(dir, name),
        data.map(|d| len(dir, d)),
    )
    .unwrap_or_else(|_| panic!("{name}: the check export refused the image"));
    while let Some(r) = export
        .next_read()
        .unwrap_or_else(|_| panic!("{name}: check failed"))
    {
        let file = if r.data { data.unwrap() } else { name };
        export
            .complete_read(&read(dir, file, r.offset, r.len))
            .unwrap_or_else(|_| panic!("read"));
    }
    export
        .json()
        .unwrap_or_else(|_| panic!("{name}: no check document"))
}

/// The map export of the chain `layers` (image first), on `raw_base` when given.
fn map_export(dir: &Path, layers: &[&str], raw_base: Option<&str>) -> String {
    let mut export = MapExport::new();
    for (key, name) in layers.iter().enumerate() {
        export.add_layer(&first(dir, name), len(dir, name), None, key as u32);
    }
    export
        .start(raw_base.map(|b| len(dir, b)))
        .unwrap_or_else(|_| panic!("start"));
    while let Some(r) = export.next_read().unwrap_or_else(|_| panic!("map failed")) {
        let name = match r.file().as_str() {
            "base" => raw_base.unwrap(),
            _ => layers[r.layer as usize],
        };
        export
            .complete_read(&read(dir, name, r.offset, r.len))
            .unwrap_or_else(|_| panic!("read"));
    }
    export.json().unwrap_or_else(|_| panic!("no map document"))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `info` documents equal but for what a browser cannot know: the allocated sizes (the
/// export gives the file lengths).
fn assert_info_equal(cli: &str, export: &str) {
    let (mut cli, mut export) = (parse(cli), parse(export));
    for doc in [&mut cli, &mut export] {
        doc["actual-size"] = Value::Null;
        if let Some(data) = doc["format-specific"]["data"].as_object_mut() {
            data.remove("data_file_actual_size");
        }
    }
    assert_eq!(cli, export);
}

/// The images: a raw base; FVD plain, FVD over the raw base, compact FVD over it, QED
/// (qemu-img) over it, a chain FVD → QED → raw, all written without holes.
fn images(dir: &Path) {
    fs::write(dir.join("base.raw"), vec![0x42u8; 4 << 20]).unwrap();
    let ok = |args: &[&str]| assert_eq!(fvd_img(dir, args).0, 0, "{args:?}");
    ok(&["create", "-f", "fvd", "plain.fvd", "4M"]);
    ok(&["io", "-c", "write -P 0x11 64k 64k", "plain.fvd"]);
    ok(&[
        "create", "-f", "fvd", "-b", "base.raw", "-F", "raw", "over.fvd",
    ]);
    ok(&["io", "-c", "write -P 0xab 0 64k", "over.fvd"]);
    ok(&[
        "create",
        "-f",
        "fvd",
        "-o",
        "compact_image=on",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "compact.fvd",
    ]);
    ok(&["io", "-c", "write -P 0xcd 1M 128k", "compact.fvd"]);
    qemu(
        dir,
        "qemu-img",
        &[
            "create", "-q", "-f", "qed", "-b", "base.raw", "-F", "raw", "over.qed",
        ],
    );
    qemu(
        dir,
        "qemu-io",
        &[
            "-f",
            "qed",
            "-c",
            "write -P 0x55 2M 64k",
            "-c",
            "write -z 3M 64k",
            "over.qed",
        ],
    );
    ok(&[
        "create", "-f", "fvd", "-b", "over.qed", "-F", "qed", "top.fvd",
    ]);
    ok(&["io", "-c", "write -P 0x77 3M 64k", "top.fvd"]);
    for name in [
        "plain.fvd",
        "over.fvd",
        "compact.fvd",
        "over.qed",
        "top.fvd",
    ] {
        unsparse(dir, name);
    }
}

#[test]
fn info_export_equals_fvd_img_info_json_but_for_allocated_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    images(d);
    for name in [
        "plain.fvd",
        "over.fvd",
        "compact.fvd",
        "over.qed",
        "top.fvd",
    ] {
        let (code, cli) = fvd_img(d, &["info", "--output", "json", name]);
        assert_eq!(code, 0, "{name}");
        assert_info_equal(&cli, &info_export(d, name, None));
    }
}

#[test]
fn map_export_is_the_fvd_img_map_json_text_through_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    images(d);
    let chains: [(&[&str], Option<&str>); 5] = [
        (&["plain.fvd"], None),
        (&["over.fvd"], Some("base.raw")),
        (&["compact.fvd"], Some("base.raw")),
        (&["over.qed"], Some("base.raw")),
        (&["top.fvd", "over.qed"], Some("base.raw")),
    ];
    for (layers, raw) in chains {
        let (code, cli) = fvd_img(d, &["map", "--output", "json", layers[0]]);
        assert_eq!(code, 0, "{layers:?}");
        let export = map_export(d, layers, raw);
        assert_eq!(cli, export, "{layers:?}");
        assert!(
            parse(&export)
                .as_array()
                .is_some_and(|runs| runs.len() >= 2),
            "{export}"
        );
    }
}

#[test]
fn check_export_is_the_fvd_img_check_json_text_of_clean_and_damaged_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    images(d);
    // A leaked cluster at the end of a QED image, and an FVD table entry (the first,
    // never allocated) with its corrupt bit set.
    let mut leaky = fs::read(d.join("over.qed")).unwrap();
    leaky.extend(std::iter::repeat_n(0u8, 65536));
    fs::write(d.join("leaky.qed"), leaky).unwrap();
    let compact = fs::read(d.join("compact.fvd")).unwrap();
    let (_, info) = fvd_img(d, &["info", "--output", "json", "compact.fvd"]);
    let table = parse(&info)["format-specific"]["data"]["table_offset"]
        .as_u64()
        .unwrap() as usize;
    let mut bad = compact.clone();
    bad[table..table + 4].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    fs::write(d.join("bad.fvd"), bad).unwrap();
    for (name, status) in [
        ("plain.fvd", 0),
        ("over.fvd", 0),
        ("compact.fvd", 0),
        ("over.qed", 0),
        ("leaky.qed", 3),
        ("bad.fvd", 2),
    ] {
        let (code, cli) = fvd_img(d, &["check", "--output", "json", name]);
        assert_eq!(code, status, "{name}: {cli}");
        assert_eq!(cli, check_export(d, name, None), "{name}");
    }
}
