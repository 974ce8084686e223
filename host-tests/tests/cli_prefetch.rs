//! `fvd-img prefetch`: after it, the image reads the same without its base.

mod common;

use common::{fvd_img, scratch};

#[test]
fn prefetch_makes_the_base_unnecessary() {
    let dir = scratch();
    let base: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("base.raw"), &base).unwrap();
    for (name, opts) in [
        ("plain.fvd", "block_size=65536"),
        ("compact.fvd", "compact_image=on,block_size=65536"),
    ] {
        let out = fvd_img(
            dir.path(),
            &[
                "create", "-q", "-f", "fvd", "-b", "base.raw", "-F", "raw", "-o", opts, name,
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let out = fvd_img(dir.path(), &["io", "-c", "write -P 0x5a 1M 64k", name]);
        assert_eq!(out.code, 0);
        let out = fvd_img(dir.path(), &["prefetch", "-r", "64M", name]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("no longer needs its base"));
        let out = fvd_img(dir.path(), &["prefetch", name]);
        assert_eq!(out.stdout.trim(), "Image is already fully prefetched.");
    }
    // Without the base, both images read as base + the write.
    let mut expected = base.clone();
    expected[1 << 20..(1 << 20) + 65536].fill(0x5a);
    std::fs::write(dir.path().join("expected.raw"), &expected).unwrap();
    std::fs::remove_file(dir.path().join("base.raw")).unwrap();
    for name in ["plain.fvd", "compact.fvd"] {
        let out = fvd_img(dir.path(), &["compare", "-F", "raw", name, "expected.raw"]);
        assert_eq!(out.code, 0, "{name}: {}{}", out.stdout, out.stderr);
    }
}

#[test]
fn prefetch_refuses_images_without_a_base_and_bad_rates() {
    let dir = scratch();
    assert_eq!(
        fvd_img(dir.path(), &["create", "-q", "-f", "fvd", "x.fvd", "1M"]).code,
        0
    );
    let out = fvd_img(dir.path(), &["prefetch", "x.fvd"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no base image"));
    let out = fvd_img(dir.path(), &["prefetch", "-r", "abc", "x.fvd"]);
    assert_eq!(out.code, 1);
}
