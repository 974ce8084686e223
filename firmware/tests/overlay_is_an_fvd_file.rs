//! The overlay the driver writes is an FVD image like any other: saved as `disk.fvd` beside
//! the factory image `base.img`, `fvd-img check` finds it clean, `fvd-img convert -O raw`
//! flattens it, and `fsck.fat -n` and `mtype` (dosfstools, mtools) read the FAT volume with
//! the file written through the overlay.

mod common;

use common::{factory_fat16, fvd_img_ok, run};
use embedded_sdmmc::{Mode, TimeSource, Timestamp, VolumeIdx, VolumeManager};
use fvd_firmware::medium::{Extent, Medium};
use fvd_firmware::ram::RamMedium;
use fvd_firmware::{Geometry, Layout, OverlayDisk};

const NEW: &[u8] = b"written by the firmware driver through its FVD overlay\n";

struct Clock;

impl TimeSource for Clock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp::from_calendar(2026, 12, 4, 12, 0, 0).unwrap()
    }
}

#[test]
fn the_overlay_the_driver_writes_is_an_image_fvd_img_checks_and_converts_to_a_clean_fat() {
    let dir = std::env::temp_dir().join(format!("fvd-fw-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rom = factory_fat16(&dir.join("base.img"), &[]);
    let base_blocks = (rom.len() / 512) as u32;
    let overlay_blocks = base_blocks + 512;
    let layout = Layout {
        base: Extent {
            first: 0,
            blocks: base_blocks,
        },
        overlay: Extent {
            first: base_blocks,
            blocks: overlay_blocks,
        },
    };
    let mut ram = vec![0u8; overlay_blocks as usize * 512];
    let medium = RamMedium::<64>::with_rom(&rom, &mut ram);
    let mut memory = vec![0u8; 96 << 10];
    let disk =
        OverlayDisk::open_or_create(&medium, layout, Geometry::default(), &mut memory, 16 << 10)
            .unwrap();
    {
        let manager = VolumeManager::new(disk, Clock);
        let volume = manager.open_volume(VolumeIdx(0)).unwrap();
        let root = volume.open_root_dir().unwrap();
        let file = root
            .open_file_in_dir("NEW.TXT", Mode::ReadWriteCreateOrTruncate)
            .unwrap();
        file.write(NEW).unwrap();
        file.close().unwrap();
        root.close().unwrap();
        volume.close().unwrap();
        let (disk, _) = manager.free();
        disk.flush().unwrap();
        assert!(disk.close().unwrap());
    }
    let overlay = medium.with_durable(|bytes| bytes.to_vec()).unwrap();
    let image = dir.join("disk.fvd");
    std::fs::write(&image, overlay).unwrap();
    let image = image.to_str().unwrap();
    let flat = dir.join("flat.raw");
    let flat = flat.to_str().unwrap();

    let report = fvd_img_ok(&["check", image]);
    assert!(report.contains("No errors"), "{report}");
    fvd_img_ok(&["convert", "-O", "raw", image, flat]);
    run("fsck.fat", &["-n", flat]);
    assert_eq!(run("mtype", &["-i", flat, "::NEW.TXT"]), NEW);
    // The base was only read.
    assert_eq!(std::fs::read(dir.join("base.img")).unwrap(), rom);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_overlay_over_a_factory_image_kept_as_fvd_is_a_two_image_chain_fvd_img_reads() {
    use fvd_firmware::factory::{create_factory, open_factory};
    use fvd_firmware::{create_over, BaseFormat, BaseSpecOf};
    let dir = std::env::temp_dir().join(format!("fvd-fw-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = factory_fat16(&dir.join("base.img"), &[]);
    let factory = Extent {
        first: 0,
        blocks: 512,
    };
    let overlay = Extent {
        first: 512,
        blocks: (raw.len() / 512) as u32 + 512,
    };
    let mut ram = vec![0u8; (overlay.first + overlay.blocks) as usize * 512];
    let medium = RamMedium::<64>::new(&mut ram);
    let geometry = Geometry::default();
    create_factory(&medium, factory, raw.len() as u64, geometry).unwrap();
    let mut base_memory = vec![0u8; 64 << 10];
    {
        let mut image = open_factory(&medium, factory, &mut base_memory, 8 << 10, true).unwrap();
        for (index, block) in raw.chunks(512).enumerate() {
            if block.iter().any(|b| *b != 0) {
                image.write(index as u64 * 512, block).unwrap();
            }
        }
        assert!(image.close().unwrap().3, "factory image closed clean");
    }
    let spec = BaseSpecOf {
        len: raw.len() as u64,
        format: BaseFormat::Fvd,
    };
    create_over(&medium, overlay, spec, geometry).unwrap();
    let mut memory = vec![0u8; 96 << 10];
    {
        let base = open_factory(&medium, factory, &mut base_memory, 8 << 10, false).unwrap();
        let disk =
            OverlayDisk::open_over(&medium, overlay, base, spec, &mut memory, 16 << 10).unwrap();
        let manager = VolumeManager::new(disk, Clock);
        let volume = manager.open_volume(VolumeIdx(0)).unwrap();
        let root = volume.open_root_dir().unwrap();
        let file = root
            .open_file_in_dir("NEW.TXT", Mode::ReadWriteCreateOrTruncate)
            .unwrap();
        file.write(NEW).unwrap();
        file.close().unwrap();
        root.close().unwrap();
        volume.close().unwrap();
        let (disk, _) = manager.free();
        assert!(disk.close().unwrap());
    }
    medium.flush().unwrap();
    let bytes = medium.with_durable(|b| b.to_vec()).unwrap();
    let (factory_bytes, overlay_bytes) = bytes.split_at(512 * 512);
    // The overlay's header names its base "base.img": the factory image goes there.
    std::fs::write(dir.join("base.img"), factory_bytes).unwrap();
    let image = dir.join("disk.fvd");
    std::fs::write(&image, overlay_bytes).unwrap();
    let image = image.to_str().unwrap();
    let base = dir.join("base.img");
    let flat = dir.join("flat.raw");
    let flat = flat.to_str().unwrap();

    assert!(fvd_img_ok(&["check", base.to_str().unwrap()]).contains("No errors"));
    assert!(fvd_img_ok(&["check", image]).contains("No errors"));
    let info = fvd_img_ok(&["info", image]);
    assert!(info.contains("backing file format: fvd"), "{info}");
    fvd_img_ok(&["convert", "-O", "raw", image, flat]);
    run("fsck.fat", &["-n", flat]);
    assert_eq!(run("mtype", &["-i", flat, "::NEW.TXT"]), NEW);
    std::fs::remove_dir_all(&dir).unwrap();
}
