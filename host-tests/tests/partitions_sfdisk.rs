//! Core's partition table reader against `sfdisk` (util-linux): a raw disk partitioned by
//! `sfdisk`, wrapped in an FVD or QED image by `fvd-img convert`, read back through the
//! engine and listed by `fvd_core::partition`, must show the partitions `sfdisk --json`
//! lists for the raw disk (start, size, type, and for GPT the GUIDs and names).

mod common;

use common::{ok, run_tool, scratch};
use fvd_core::partition::{Feed, Scan, Table};
use fvd_host::host::driver::DriverOptions;
use fvd_host::host::files::open_image;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// `sfdisk`, wherever Debian puts it (/usr/sbin is not on every user's PATH).
fn sfdisk() -> &'static str {
    ["/usr/sbin/sfdisk", "/sbin/sfdisk"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("sfdisk")
}

/// A 64 MiB sparse raw disk partitioned by `sfdisk` from `script`.
fn partitioned(dir: &Path, script: &str) {
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut child = Command::new(sfdisk())
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (util-linux's fdisk package) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk refused {script}");
}

/// What `sfdisk --json` says about the raw disk.
fn sfdisk_json(dir: &Path) -> Value {
    let run = run_tool(sfdisk(), dir, &["--json", "disk.raw"]);
    assert_eq!(run.code, 0, "{run:#?}");
    serde_json::from_str::<Value>(&run.stdout).unwrap()["partitiontable"].clone()
}

/// Our listing of the image's virtual disk, in sfdisk's JSON shape.
fn listed(image: &Path) -> Value {
    let options = DriverOptions {
        writable: false,
        ..DriverOptions::default()
    };
    let mut driver = open_image(image, options).unwrap();
    let size = driver.engine().virtual_size().unwrap();
    let mut scan = Scan::new(size);
    let mut read = scan.first_read().unwrap();
    let (table, last) = loop {
        let bytes = driver.read(read.offset, read.len).unwrap();
        match scan.feed(&bytes).unwrap() {
            Feed::Read(next) => read = next,
            Feed::Done(table) => break (table, bytes),
        }
    };
    match table {
        Table::Mbr(mbr) => {
            let parts: Vec<Value> = mbr
                .partitions()
                .map(|p| {
                    serde_json::json!({
                        "start": p.first_lba, "size": p.sectors,
                        "type": format!("{:x}", p.kind), "bootable": p.bootable,
                        "extended": p.is_extended(),
                    })
                })
                .collect();
            serde_json::json!({ "label": "dos", "id": format!("{:#010x}", mbr.disk_id), "partitions": parts })
        }
        Table::Gpt { header, .. } => {
            let parts: Vec<Value> = header
                .entries(&last)
                .unwrap()
                .map(|p| {
                    let p = p.unwrap();
                    serde_json::json!({
                        "start": p.first_lba, "size": p.sectors(),
                        "type": p.type_guid.to_string(), "uuid": p.unique_guid.to_string(),
                        "name": p.name().to_string(),
                    })
                })
                .collect();
            serde_json::json!({
                "label": "gpt", "id": header.disk_guid.to_string(),
                "firstlba": header.first_usable_lba, "lastlba": header.last_usable_lba,
                "partitions": parts,
            })
        }
        Table::None => serde_json::json!({ "label": "none" }),
    }
}

/// sfdisk's entries with only the keys we compare.
fn entries(table: &Value, keys: &[&str]) -> Vec<Value> {
    table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut kept = serde_json::Map::new();
            for k in keys {
                if let Some(v) = p.get(*k) {
                    kept.insert((*k).into(), v.clone());
                }
            }
            Value::Object(kept)
        })
        .collect()
}

#[test]
fn mbr_partitions_of_an_fvd_and_a_qed_image_match_sfdisk() {
    let dir = scratch();
    partitioned(
        dir.path(),
        "label: dos\nlabel-id: 0x1234abcd\n\
         start=2048, size=20480, type=83, bootable\n\
         start=22528, size=10240, type=82\n\
         start=40960, size=40960, type=5\n",
    );
    let theirs = sfdisk_json(dir.path());
    assert_eq!(theirs["label"], "dos");
    for format in ["fvd", "qed"] {
        let image = format!("disk.{format}");
        ok(
            dir.path(),
            &[
                "convert", "-q", "-f", "raw", "-O", format, "disk.raw", &image,
            ],
        );
        let ours = listed(&dir.path().join(&image));
        assert_eq!(ours["id"], theirs["id"], "{format}");
        let mut mine = entries(&ours, &["start", "size", "type", "bootable"]);
        // sfdisk omits "bootable" when it is false.
        for p in &mut mine {
            if p["bootable"] == false {
                p.as_object_mut().unwrap().remove("bootable");
            }
        }
        assert_eq!(
            mine,
            entries(&theirs, &["start", "size", "type", "bootable"]),
            "{format}"
        );
        assert_eq!(ours["partitions"][2]["extended"], true);
        assert_eq!(ours["partitions"][0]["extended"], false);
    }
}

#[test]
fn gpt_partitions_of_an_fvd_and_a_qed_image_match_sfdisk() {
    let dir = scratch();
    partitioned(
        dir.path(),
        "label: gpt\nlabel-id: 01234567-89AB-CDEF-0123-456789ABCDEF\n\
         start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI system\", uuid=11111111-2222-3333-4444-555555555555\n\
         start=6144, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n\
         start=80000, size=2048, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n",
    );
    let theirs = sfdisk_json(dir.path());
    assert_eq!(theirs["label"], "gpt");
    for format in ["fvd", "qed"] {
        let image = format!("disk.{format}");
        ok(
            dir.path(),
            &[
                "convert", "-q", "-f", "raw", "-O", format, "disk.raw", &image,
            ],
        );
        let ours = listed(&dir.path().join(&image));
        for key in ["id", "firstlba", "lastlba"] {
            assert_eq!(ours[key], theirs[key], "{format} {key}");
        }
        let keys = ["start", "size", "type", "uuid", "name"];
        let mut mine = entries(&ours, &keys);
        // sfdisk omits an empty name.
        for p in &mut mine {
            if p["name"] == "" {
                p.as_object_mut().unwrap().remove("name");
            }
        }
        assert_eq!(mine.len(), 3, "{format}");
        assert_eq!(mine, entries(&theirs, &keys), "{format}");
    }
}
