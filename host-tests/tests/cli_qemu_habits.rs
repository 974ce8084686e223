//! Flags and commands scripts written for qemu-img use, run side by side with qemu-img on
//! the same inputs (qcow2 for qemu-img where it has no FVD): the exit status agrees and
//! the result is what the flag promises.

mod common;

use common::{assert_contains, create_fvd, fails, info_json, ok, qemu_img, scratch};

#[test]
fn create_u_records_a_base_that_does_not_exist_yet_as_qemu_img_does() {
    let dir = scratch();
    let d = dir.path();
    let qemu = qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "later.raw",
            "-F",
            "raw",
            "q.qcow2",
            "1M",
        ],
    );
    assert_eq!(qemu.code, 0, "{qemu:?}");
    for format in ["fvd", "qed"] {
        let file = format!("top.{format}");
        ok(
            d,
            &[
                "create",
                "-q",
                "-f",
                format,
                "-u",
                "-b",
                "later.raw",
                "-F",
                "raw",
                &file,
                "1M",
            ],
        );
        let info = info_json(d, &file);
        assert_eq!(info["backing-filename"], "later.raw");
        assert_eq!(info["backing-filename-format"], "raw");
        assert_eq!(info["virtual-size"], 1 << 20);
    }
    // Both refuse -u without a size or without a base format.
    for args in [
        &[
            "create",
            "-q",
            "-u",
            "-b",
            "later.raw",
            "-F",
            "raw",
            "x.fvd",
        ][..],
        &["create", "-q", "-u", "-b", "later.raw", "y.fvd", "1M"][..],
    ] {
        let message = fails(d, args);
        assert_contains(&message, "-u");
        assert!(!d.join(args[args.len() - 1]).exists() && !d.join("y.fvd").exists());
    }
    let qemu = qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "later.raw",
            "n.qcow2",
            "1M",
        ],
    );
    assert_eq!(qemu.code, 1, "{qemu:?}");
}

#[test]
fn amend_sets_the_same_fields_update_does() {
    let dir = scratch();
    let d = dir.path();
    std::fs::write(d.join("base.raw"), vec![7u8; 1 << 20]).unwrap();
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "a.fvd"]);
    create_fvd(d, &["-b", "base.raw", "-F", "raw", "b.fvd"]);
    ok(
        d,
        &[
            "amend",
            "-o",
            "copy_on_read=on,prefetch_start_delay=5",
            "a.fvd",
        ],
    );
    ok(
        d,
        &[
            "update",
            "b.fvd",
            "copy_on_read=on",
            "prefetch_start_delay=5",
        ],
    );
    let (a, b) = (info_json(d, "a.fvd"), info_json(d, "b.fvd"));
    assert_eq!(a["format-specific"]["data"]["copy_on_read"], true);
    assert_eq!(
        a["format-specific"]["data"]["prefetch_start_delay"],
        b["format-specific"]["data"]["prefetch_start_delay"]
    );
    assert_eq!(a["format-specific"], b["format-specific"]);
    let refused = fails(d, &["amend", "-o", "no_such_key=1", "a.fvd"]);
    assert_contains(&refused, "no_such_key");
}
