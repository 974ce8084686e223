//! Base-image chains through `fvd-img`: `io --cor/--no-cor`, `commit`, `rebase` (unsafe,
//! safe, onto nothing) and zero detection at create (`detect_sparse_hole`), driven as a
//! user would (the real binary in scratch directories) and checked against a model of the
//! guest disk, `fvd-img compare` and `map`, and the files' bytes.

mod common;

use common::{create_fvd, fails, header_of, header_str, info_data, map_json, ok, scratch};
use fvd_core::fvd::RawHeader;
use fvd_host::host::driver::DriverOptions;
use fvd_host::host::files::open_image;
use serde_json::Value;
use std::fs;
use std::mem::offset_of;
use std::os::unix::fs::FileExt;
use std::path::Path;

const K: u64 = 1024;

/// Deterministic bytes that differ from block to block and from seed to seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A raw file of `blocks` blocks of `block` bytes: block `i` is a hole of zeros when
/// `zero(i)`, otherwise pattern data of seed `seed + i`. Returns its bytes.
fn raw_base(
    path: &Path,
    block: u64,
    blocks: u64,
    seed: u64,
    zero: impl Fn(u64) -> bool,
) -> Vec<u8> {
    let mut bytes = vec![0u8; (block * blocks) as usize];
    let file = fs::File::create(path).unwrap();
    file.set_len(block * blocks).unwrap();
    for i in (0..blocks).filter(|&i| !zero(i)) {
        let data = pattern(seed + i, block as usize);
        file.write_all_at(&data, i * block).unwrap();
        bytes[(i * block) as usize..][..block as usize].copy_from_slice(&data);
    }
    bytes
}

/// The guest contents of `image`, via `fvd-img convert -O raw`.
fn guest(dir: &Path, image: &str) -> Vec<u8> {
    let snapshot = dir.join(".snapshot.raw");
    let _ = fs::remove_file(&snapshot);
    ok(
        dir,
        &["convert", "-O", "raw", image, snapshot.to_str().unwrap()],
    );
    let bytes = fs::read(&snapshot).unwrap();
    fs::remove_file(&snapshot).unwrap();
    bytes
}

/// Requires `fvd-img compare A B` to find the guest contents identical.
fn identical(dir: &Path, a: &str, b: &str) {
    let run = ok(dir, &["compare", a, b]);
    assert_eq!(run.stdout, "Images are identical.\n", "{a} vs {b}");
}

/// The `kind` of the map run holding guest byte `offset`.
fn kind_at(map: &[Value], offset: u64) -> String {
    map.iter()
        .find(|e| {
            let start = e["start"].as_u64().unwrap();
            start <= offset && offset < start + e["length"].as_u64().unwrap()
        })
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no run at {offset}: {map:?}"))
}

/// One guest change applied both to an image (through the engine) and to the model.
#[derive(Clone, Copy, Debug)]
enum Change {
    Write(u64, u64, u64),
    Zeroes(u64, u64),
    Discard(u64, u64),
}

/// Applies `changes` to `image` through the engine and to `model`, then closes cleanly.
fn apply(image: &Path, model: &mut [u8], changes: &[Change]) {
    let mut driver = open_image(image, DriverOptions::default()).unwrap();
    for &change in changes {
        match change {
            Change::Write(offset, len, seed) => {
                let data = pattern(seed, len as usize);
                driver.write(offset, &data).unwrap();
                model[offset as usize..][..len as usize].copy_from_slice(&data);
            }
            Change::Zeroes(offset, len) => {
                driver.write_zeroes(offset, len).unwrap();
                model[offset as usize..][..len as usize].fill(0);
            }
            Change::Discard(offset, len) => {
                driver.discard(offset, len).unwrap();
                model[offset as usize..][..len as usize].fill(0);
            }
        }
    }
    let (_, clean) = driver.close().unwrap();
    assert!(clean);
}

/// Changes at unaligned places: inside blocks, across block and chunk boundaries, past the
/// end of the base, zeroes and discards over base data.
fn overlay_changes(seed: u64) -> Vec<Change> {
    vec![
        Change::Write(0, 4 * K, seed),
        Change::Write(60 * K, 72 * K, seed + 1),
        Change::Zeroes(200 * K, 64 * K),
        Change::Discard(320 * K, 16 * K),
        Change::Write(511 * K, 2 * K, seed + 2),
        Change::Write(900 * K, 200 * K, seed + 3),
        Change::Write(1500 * K, 512, seed + 4),
        Change::Zeroes(1800 * K, 100 * K),
    ]
}

#[test]
fn io_cor_and_no_cor_override_the_header() {
    let dir = scratch();
    let d = dir.path();
    let base = raw_base(&d.join("base.raw"), 64 * K, 16, 1, |_| false);
    for (copy_on_read, flag, copies) in [
        ("on", None, true),
        ("on", Some("--no-cor"), false),
        ("off", None, false),
        ("off", Some("--cor"), true),
        ("off", Some("-C"), true),
    ] {
        let _ = fs::remove_file(d.join("top.fvd"));
        create_fvd(
            d,
            &[
                "-b",
                "base.raw",
                "-F",
                "raw",
                "-o",
                &format!("block_size=64k,copy_on_read={copy_on_read}"),
                "top.fvd",
            ],
        );
        let mut args = vec!["io"];
        args.extend(flag);
        args.extend(["-c", "read 0 64k", "-c", "read 128k 128k", "top.fvd"]);
        ok(d, &args);
        let map = map_json(d, "top.fvd");
        let want = if copies { "local" } else { "base" };
        for offset in [0, 128 * K, 192 * K] {
            assert_eq!(
                kind_at(&map, offset),
                want,
                "{copy_on_read} {flag:?} at {offset}: {map:?}"
            );
        }
        assert_eq!(kind_at(&map, 64 * K), "base");
        assert_eq!(kind_at(&map, 256 * K), "base");
        // Copied or not, the image reads like its base.
        let image = guest(d, "top.fvd");
        assert_eq!(&image[..base.len()], &base[..]);
    }
    let line = fails(
        d,
        &["io", "--cor", "--no-cor", "-c", "read 0 512", "top.fvd"],
    );
    assert!(line.contains("--no-cor"), "{line}");
    // Read-only opens never copy, whatever the flag.
    let _ = fs::remove_file(d.join("top.fvd"));
    create_fvd(d, &["-b", "base.raw", "-o", "block_size=64k", "top.fvd"]);
    ok(d, &["io", "-r", "--cor", "-c", "read 0 64k", "top.fvd"]);
    assert_eq!(kind_at(&map_json(d, "top.fvd"), 0), "base");
}

#[test]
fn commit_writes_the_overlay_into_a_smaller_raw_base_and_grows_it() {
    for compact in [false, true] {
        let dir = scratch();
        let d = dir.path();
        // A 1 MiB base under a 2 MiB image: the base grows to 2 MiB.
        let base = raw_base(&d.join("base.raw"), 64 * K, 16, 10, |i| i % 5 == 4);
        let mut options = String::from("block_size=16k");
        if compact {
            options += ",compact_image=on,chunk_size=64k";
        }
        create_fvd(
            d,
            &[
                "-b", "base.raw", "-F", "raw", "-o", &options, "top.fvd", "2M",
            ],
        );
        let mut model = base.clone();
        model.resize(2 << 20, 0);
        apply(&d.join("top.fvd"), &mut model, &overlay_changes(100));
        assert_eq!(guest(d, "top.fvd"), model);
        let top_bytes = fs::read(d.join("top.fvd")).unwrap();

        let run = ok(d, &["commit", "top.fvd"]);
        // The base file the header chose is named before it is written.
        let real = fs::canonicalize(d.join("base.raw")).unwrap();
        assert_eq!(
            run.stdout,
            format!(
                "Committing into base file '{}'\nImage committed.\n",
                real.display()
            )
        );
        assert_eq!(
            fs::read(d.join("base.raw")).unwrap(),
            model,
            "compact={compact}"
        );
        // The image is kept as it was and still reads the same.
        assert_eq!(fs::read(d.join("top.fvd")).unwrap(), top_bytes);
        assert_eq!(guest(d, "top.fvd"), model);
        identical(d, "top.fvd", "base.raw");
        // Committing again changes nothing; -q prints nothing; -d is accepted.
        let run = ok(d, &["commit", "-q", "-d", "-f", "fvd", "top.fvd"]);
        assert!(run.stdout.is_empty());
        assert_eq!(fs::read(d.join("base.raw")).unwrap(), model);
    }
}

#[test]
fn commit_into_an_fvd_base_of_a_two_deep_chain() {
    let dir = scratch();
    let d = dir.path();
    let base = raw_base(&d.join("base.raw"), 64 * K, 32, 20, |i| i % 4 == 1);
    create_fvd(
        d,
        &[
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-o",
            "block_size=8k",
            "mid.fvd",
        ],
    );
    create_fvd(
        d,
        &[
            "-b",
            "mid.fvd",
            "-o",
            "block_size=32k,compact_image=on,chunk_size=64k",
            "top.fvd",
        ],
    );
    let mut mid_model = base.clone();
    apply(
        &d.join("mid.fvd"),
        &mut mid_model,
        &[
            Change::Write(40 * K, 100 * K, 200),
            Change::Zeroes(1000 * K, 24 * K),
            Change::Write(1900 * K, 48 * K, 201),
        ],
    );
    let mut top_model = mid_model.clone();
    apply(&d.join("top.fvd"), &mut top_model, &overlay_changes(300));
    assert_eq!(guest(d, "mid.fvd"), mid_model);
    assert_eq!(guest(d, "top.fvd"), top_model);

    ok(d, &["commit", "top.fvd"]);
    // The base alone now reads like the overlay did; its own base is untouched.
    assert_eq!(guest(d, "mid.fvd"), top_model);
    assert_eq!(guest(d, "top.fvd"), top_model);
    assert_eq!(fs::read(d.join("base.raw")).unwrap(), base);
    let run = ok(d, &["check", "mid.fvd"]);
    assert!(run.stdout.contains("No errors"), "{run:?}");

    // One level further down: the raw base ends up with the whole chain's content.
    ok(d, &["commit", "mid.fvd"]);
    assert_eq!(fs::read(d.join("base.raw")).unwrap(), top_model);
    identical(d, "top.fvd", "base.raw");
}

#[test]
fn commit_refuses_images_without_a_base_and_fvd_bases_that_cannot_grow() {
    let dir = scratch();
    let d = dir.path();
    create_fvd(d, &["plain.fvd", "1M"]);
    let line = fails(d, &["commit", "plain.fvd"]);
    assert_eq!(line, "fvd-img: Image does not have a backing file");
    fs::write(d.join("disk.raw"), vec![1u8; 4096]).unwrap();
    let line = fails(d, &["commit", "disk.raw"]);
    assert_eq!(line, "fvd-img: Image does not have a backing file");

    create_fvd(d, &["small.fvd", "1M"]);
    create_fvd(d, &["-b", "small.fvd", "top.fvd", "2M"]);
    ok(d, &["io", "-c", "write -P 7 0 64k", "top.fvd"]);
    let before = fs::read(d.join("small.fvd")).unwrap();
    let line = fails(d, &["commit", "top.fvd"]);
    assert!(
        line.contains("larger than its base") && line.contains("cannot grow"),
        "{line}"
    );
    assert_eq!(fs::read(d.join("small.fvd")).unwrap(), before);

    // A missing base is an open error.
    fs::write(d.join("gone.raw"), vec![3u8; 1 << 20]).unwrap();
    create_fvd(d, &["-b", "gone.raw", "-F", "raw", "orphan.fvd"]);
    fs::remove_file(d.join("gone.raw")).unwrap();
    let line = fails(d, &["commit", "orphan.fvd"]);
    assert!(line.contains("gone.raw"), "{line}");
}

#[test]
fn unsafe_rebase_rewrites_only_the_name() {
    let dir = scratch();
    let d = dir.path();
    raw_base(&d.join("base.raw"), 64 * K, 16, 30, |_| false);
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "top.fvd"]);
    ok(d, &["io", "-c", "write -P 0x5a 100k 20k", "top.fvd"]);
    let before_guest = guest(d, "top.fvd");
    let before = fs::read(d.join("top.fvd")).unwrap();
    fs::rename(d.join("base.raw"), d.join("moved.raw")).unwrap();

    ok(d, &["rebase", "-u", "-b", "moved.raw", "top.fvd"]);
    let after = fs::read(d.join("top.fvd")).unwrap();
    assert_eq!(after.len(), before.len());
    let names = offset_of!(RawHeader, base_img)..offset_of!(RawHeader, base_img_size);
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        assert!(a == b || names.contains(&i), "byte {i} changed");
    }
    let h = header_of(&d.join("top.fvd")).0;
    assert_eq!(header_str(&h.base_img), "moved.raw");
    assert_eq!(header_str(&h.base_img_fmt), "raw");
    assert_eq!(guest(d, "top.fvd"), before_guest);

    // -F names the format; without it, it is probed.
    ok(
        d,
        &["rebase", "-u", "-b", "moved.raw", "-F", "raw", "top.fvd"],
    );
    assert_eq!(fs::read(d.join("top.fvd")).unwrap(), after);

    // Refusals leave the file untouched.
    fs::write(d.join("short.raw"), vec![1u8; 512 * K as usize]).unwrap();
    for (args, needle) in [
        (
            vec!["rebase", "-u", "-b", "short.raw", "top.fvd"],
            "same size",
        ),
        (
            vec!["rebase", "-u", "-b", "", "top.fvd"],
            "cannot remove the base",
        ),
        (vec!["rebase", "-u", "top.fvd"], "cannot remove the base"),
        (
            vec!["rebase", "-u", "-b", "nowhere.raw", "top.fvd"],
            "Could not open new backing file 'nowhere.raw'",
        ),
        (
            vec!["rebase", "-u", "-b", "top.fvd", "top.fvd"],
            "onto itself",
        ),
        (
            vec!["rebase", "-u", "-b", "moved.raw", "-F", "vmdk", "top.fvd"],
            "vmdk",
        ),
        (vec!["rebase", "top.fvd"], "Must specify backing file (-b)"),
    ] {
        let line = fails(d, &args);
        assert!(line.contains(needle), "{args:?}: {line}");
        assert_eq!(fs::read(d.join("top.fvd")).unwrap(), after, "{args:?}");
    }
    create_fvd(d, &["plain.fvd", "1M"]);
    let line = fails(d, &["rebase", "-u", "-b", "moved.raw", "plain.fvd"]);
    assert!(line.contains("has no base image"), "{line}");
}

#[test]
fn safe_rebase_keeps_the_guest_content() {
    let dir = scratch();
    let d = dir.path();
    let mut base = raw_base(&d.join("base.raw"), 64 * K, 16, 40, |i| i % 3 == 0);
    // Same data in odd blocks, different elsewhere, and a different size each time.
    let other = |path: &str, blocks: u64, extra: usize| {
        let mut bytes = raw_base(&d.join(path), 64 * K, blocks, 40, |i| i % 3 == 0);
        for i in (0..blocks).step_by(2) {
            bytes[(i * 64 * K) as usize + 100] ^= 0xff;
        }
        bytes.extend(pattern(999, extra));
        fs::write(d.join(path), &bytes).unwrap();
    };
    other("same-size.raw", 16, 0);
    other("larger.raw", 24, 1000);
    other("smaller.raw", 7, 12345);
    // The old base ends inside a block, with the data the larger base has there: that
    // block must still be made local, since the rest of it comes from the image.
    let larger = fs::read(d.join("larger.raw")).unwrap();
    base.extend_from_slice(&larger[1 << 20..(1 << 20) + 1024]);
    fs::write(d.join("base.raw"), &base).unwrap();
    create_fvd(d, &["-b", "larger.raw", "mid-base.raw.fvd", "3M"]);
    ok(d, &["io", "-c", "write -P 0x21 1M 64k", "mid-base.raw.fvd"]);

    for compact in [false, true] {
        let _ = fs::remove_file(d.join("top.fvd"));
        let mut options = String::from("block_size=32k");
        if compact {
            options += ",compact_image=on,chunk_size=64k";
        }
        create_fvd(
            d,
            &[
                "-b", "base.raw", "-F", "raw", "-o", &options, "top.fvd", "2M",
            ],
        );
        let mut model = base.clone();
        model.resize(2 << 20, 0);
        // Nothing written over the end of the old base: that block keeps its bit 0.
        let changes: Vec<Change> = overlay_changes(400)
            .into_iter()
            .filter(|c| !matches!(c, Change::Write(offset, ..) if *offset == 900 * K))
            .collect();
        apply(&d.join("top.fvd"), &mut model, &changes);
        assert_eq!(guest(d, "top.fvd"), model);
        fs::write(d.join("model.raw"), &model).unwrap();

        for (new, format) in [
            ("larger.raw", None),
            ("same-size.raw", Some("raw")),
            ("smaller.raw", Some("raw")),
            ("mid-base.raw.fvd", Some("fvd")),
            ("base.raw", None),
        ] {
            let mut args = vec!["rebase", "-b", new];
            if let Some(format) = format {
                args.extend(["-F", format]);
            }
            args.push("top.fvd");
            let run = ok(d, &args);
            assert!(run.stdout.is_empty());
            identical(d, "model.raw", "top.fvd");
            let h = header_of(&d.join("top.fvd")).0;
            assert_eq!(header_str(&h.base_img), new);
            let new_size = fs::metadata(d.join(new)).unwrap().len();
            let new_size = if new.ends_with(".fvd") {
                3 << 20
            } else {
                new_size
            };
            assert_eq!(
                h.base_img_size.get(),
                new_size.min(2 << 20).div_ceil(512) * 512,
                "{new}"
            );
            let check = ok(d, &["check", "top.fvd"]);
            assert!(check.stdout.contains("No errors"), "{new}: {check:?}");
        }
        // Blocks that agree with the new base stay in the base.
        let map = map_json(d, "top.fvd");
        assert!(map.iter().any(|e| e["kind"] == "base"), "{map:?}");
    }
}

#[test]
fn rebase_onto_nothing_makes_the_image_independent_of_its_base() {
    for compact in [false, true] {
        let dir = scratch();
        let d = dir.path();
        let base = raw_base(&d.join("base.raw"), 64 * K, 16, 50, |i| i == 3);
        let options = if compact {
            "compact_image=on,chunk_size=128k"
        } else {
            "block_size=64k"
        };
        create_fvd(d, &["-b", "base.raw", "-o", options, "top.fvd"]);
        let mut model = base.clone();
        apply(&d.join("top.fvd"), &mut model, &overlay_changes(500)[..5]);
        let before = guest(d, "top.fvd");
        assert_eq!(before, model);

        ok(d, &["rebase", "-b", "", "top.fvd"]);
        let data = info_data(d, "top.fvd");
        assert_eq!(data["base_img_fully_prefetched"], true, "{data}");
        fs::remove_file(d.join("base.raw")).unwrap();
        assert_eq!(guest(d, "top.fvd"), model);
        assert!(map_json(d, "top.fvd").iter().all(|e| e["kind"] != "base"));
        let check = ok(d, &["check", "top.fvd"]);
        assert!(check.stdout.contains("No errors"), "{check:?}");
        // Still writable without the base.
        ok(
            d,
            &[
                "io",
                "-c",
                "write -P 0x77 3k 1k",
                "-c",
                "read -P 0x77 3k 1k",
                "top.fvd",
            ],
        );
        model[3 * K as usize..4 * K as usize].fill(0x77);
        assert_eq!(guest(d, "top.fvd"), model);
        // Onto a new base afterwards: the image reads only itself, whatever the base says.
        fs::write(d.join("new.raw"), vec![0xabu8; 1 << 20]).unwrap();
        ok(d, &["rebase", "-b", "new.raw", "top.fvd"]);
        assert_eq!(guest(d, "top.fvd"), model);
    }
}

#[test]
fn relative_names_resolve_against_the_image_directory() {
    let dir = scratch();
    let root = dir.path();
    let images = root.join("vm");
    fs::create_dir(&images).unwrap();
    let base = raw_base(&images.join("base.raw"), 64 * K, 8, 60, |_| false);
    // Created from the image directory with a bare base name, used from elsewhere.
    create_fvd(&images, &["-b", "base.raw", "-F", "raw", "top.fvd"]);
    ok(root, &["io", "-c", "write -P 0x66 0 64k", "vm/top.fvd"]);
    let mut model = base.clone();
    model[..64 * K as usize].fill(0x66);

    let other = raw_base(&images.join("other.raw"), 64 * K, 8, 61, |_| false);
    ok(root, &["rebase", "-b", "other.raw", "vm/top.fvd"]);
    assert_eq!(
        header_str(&header_of(&images.join("top.fvd")).0.base_img),
        "other.raw"
    );
    assert_eq!(guest(root, "vm/top.fvd"), model);

    fs::copy(images.join("other.raw"), images.join("copy.raw")).unwrap();
    ok(root, &["rebase", "-u", "-b", "copy.raw", "vm/top.fvd"]);
    assert_eq!(
        header_str(&header_of(&images.join("top.fvd")).0.base_img),
        "copy.raw"
    );
    assert_eq!(guest(root, "vm/top.fvd"), model);
    // A name that only exists relative to the working directory is not found.
    fs::write(root.join("cwd-only.raw"), &other).unwrap();
    let line = fails(root, &["rebase", "-u", "-b", "cwd-only.raw", "vm/top.fvd"]);
    assert!(line.contains("vm/cwd-only.raw"), "{line}");

    ok(root, &["commit", "vm/top.fvd"]);
    assert_eq!(fs::read(images.join("copy.raw")).unwrap(), model);
    assert_eq!(fs::read(images.join("other.raw")).unwrap(), other);
}

#[test]
fn detect_sparse_hole_marks_zero_blocks_as_local() {
    for compact in [false, true] {
        let dir = scratch();
        let d = dir.path();
        let zero = |i: u64| i % 3 == 0;
        let base = raw_base(&d.join("base.raw"), 64 * K, 16, 70, zero);
        // A zero block that is not all a hole of the file (zeros written): read and
        // found zero too.
        fs::OpenOptions::new()
            .write(true)
            .open(d.join("base.raw"))
            .unwrap()
            .write_all_at(&[0u8; 512], 3 * 64 * K + 4096)
            .unwrap();
        let mut options = String::from("block_size=64k,detect_sparse_hole=on");
        if compact {
            options += ",compact_image=on,chunk_size=128k";
        }
        let run = ok(
            d,
            &[
                "create", "-f", "fvd", "-b", "base.raw", "-o", &options, "top.fvd",
            ],
        );
        assert!(run.stdout.contains("detect_sparse_hole=on"), "{run:?}");
        assert_eq!(header_of(&d.join("top.fvd")).0.need_zero_init.get(), 1);

        let map = map_json(d, "top.fvd");
        let local = if compact { "zero" } else { "local" };
        for block in 0..16 {
            let want = if zero(block) { local } else { "base" };
            assert_eq!(
                kind_at(&map, block * 64 * K),
                want,
                "block {block}: {map:?}"
            );
        }
        assert_eq!(guest(d, "top.fvd"), base);
        identical(d, "base.raw", "top.fvd");
        let check = ok(d, &["check", "top.fvd"]);
        assert!(check.stdout.contains("No errors"), "{check:?}");

        // The zero blocks are never read from the base again: scribble over them there.
        let file = fs::OpenOptions::new()
            .write(true)
            .open(d.join("base.raw"))
            .unwrap();
        for block in (0..16).filter(|&b| zero(b)) {
            file.write_all_at(&vec![0xeeu8; 64 * K as usize], block * 64 * K)
                .unwrap();
        }
        assert_eq!(guest(d, "top.fvd"), base);
        // A partial write into such a block copies nothing from the base either.
        ok(d, &["io", "-c", "write -P 0x42 196k 4k", "top.fvd"]);
        let mut model = base.clone();
        model[196 * K as usize..200 * K as usize].fill(0x42);
        // And a write into a base block next to it (same chunk when compact).
        ok(d, &["io", "-c", "write -P 0x43 260k 4k", "top.fvd"]);
        model[260 * K as usize..264 * K as usize].fill(0x43);
        assert_eq!(guest(d, "top.fvd"), model);
    }
}

#[test]
fn detect_sparse_hole_over_an_fvd_base_and_its_refusals() {
    let dir = scratch();
    let d = dir.path();
    // An FVD base whose guest view has zeros in unwritten, written-zero and base places.
    let base = raw_base(&d.join("base.raw"), 64 * K, 8, 80, |i| i == 1);
    create_fvd(
        d,
        &["-b", "base.raw", "-o", "block_size=64k", "mid.fvd", "1M"],
    );
    ok(
        d,
        &[
            "io",
            "-c",
            "write -z 128k 64k",
            "-c",
            "write -P 9 256k 64k",
            "mid.fvd",
        ],
    );
    let mut model = base.clone();
    model.resize(1 << 20, 0);
    model[128 * K as usize..192 * K as usize].fill(0);
    model[256 * K as usize..320 * K as usize].fill(9);
    create_fvd(
        d,
        &[
            "-b",
            "mid.fvd",
            "-o",
            "block_size=64k,detect_sparse_hole=on",
            "top.fvd",
        ],
    );
    let map = map_json(d, "top.fvd");
    for block in 0..16u64 {
        let start = (block * 64 * K) as usize;
        let is_zero = model[start..start + 64 * K as usize]
            .iter()
            .all(|&b| b == 0);
        let want = if is_zero { "local" } else { "base" };
        assert_eq!(kind_at(&map, block * 64 * K), want, "block {block}");
    }
    assert_eq!(guest(d, "top.fvd"), model);

    for (args, needle) in [
        (
            vec!["create", "-o", "detect_sparse_hole=on", "x.fvd", "1M"],
            "needs a backing file",
        ),
        (
            vec![
                "create",
                "-b",
                "base.raw",
                "-o",
                "detect_sparse_hole=on,need_zero_init=off",
                "x.fvd",
            ],
            "need_zero_init",
        ),
    ] {
        let line = fails(d, &args);
        assert!(line.contains(needle), "{line}");
        assert!(!d.join("x.fvd").exists());
    }
}
