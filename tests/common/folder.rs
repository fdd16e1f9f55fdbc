//! A small image folder with a layout file and one of each data problem, built on the fly (tests, and
//! `cargo run --example image_folder -- DIR` for trying `wick data check` by hand).

use std::path::Path;

/// Classes of [`image_folder`]: folder names = shape names, so the shapes renderer draws them.
pub const FOLDER_CLASSES: [&str; 3] = ["circle", "square", "triangle"];

/// Builds an image folder under `root` the way a user's might look: `root/<class>/NNN.{png,jpg}` with
/// `per_class` images per class (shapes drawn by the procedural renderer, one object each; every third image
/// upscaled to a non-square 48×40), a `layouts.jsonl` of pixel boxes, and one of each problem: a truncated
/// PNG, a zero-byte file, a text file, a duplicate, a layout line for a missing file, a box out of range and
/// an unknown class. Returns the layout file's path.
pub fn image_folder(root: &Path, per_class: usize) -> std::path::PathBuf {
    use std::fmt::Write as _;
    let config = wick::config::DatasetConfig { min_objects: 1, max_objects: 1, ..Default::default() };
    let shapes = wick::data::ShapesDataset::new(&config, 32, 4, 4);
    let mut counts = [0usize; 3];
    let mut layouts = String::new();
    let mut index = 0u64;
    while counts.iter().any(|&c| c < per_class) {
        let sample = shapes.sample(index);
        index += 1;
        let class = sample.label as usize;
        if class >= 3 || counts[class] >= per_class {
            continue;
        }
        let n = counts[class];
        counts[class] += 1;
        let rgb = image::RgbImage::from_raw(32, 32, wick::data::to_rgb8(&sample.image, 32)).unwrap();
        let (rgb, width, height) = if n % 3 == 2 {
            (image::imageops::resize(&rgb, 48, 40, image::imageops::FilterType::Triangle), 48.0, 40.0)
        } else {
            (rgb, 32.0, 32.0)
        };
        let dir = root.join(FOLDER_CLASSES[class]);
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!("{n:03}.{}", if n % 2 == 0 { "png" } else { "jpg" });
        rgb.save(dir.join(&name)).unwrap();
        let b = sample.objects[0].bbox;
        writeln!(
            layouts,
            r#"{{"image": "{}/{name}", "objects": [{{"class": "{}", "bbox": [{:.1}, {:.1}, {:.1}, {:.1}]}}]}}"#,
            FOLDER_CLASSES[class],
            FOLDER_CLASSES[class],
            b[0] * width,
            b[1] * height,
            b[2] * width,
            b[3] * height
        )
        .unwrap();
    }
    let png = std::fs::read(root.join("circle/000.png")).unwrap();
    std::fs::write(root.join("circle/truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(root.join("circle/copy-of-000.png"), &png).unwrap();
    std::fs::write(root.join("square/empty.png"), b"").unwrap();
    std::fs::write(root.join("triangle/notes.txt"), b"labelled by hand, batch 3").unwrap();
    let mut lines: Vec<String> = layouts
        .lines()
        .map(|line| match line {
            l if l.contains("\"square/001.jpg\"") => {
                r#"{"image": "square/001.jpg", "objects": [{"class": "square", "bbox": [-6, 2, 40, 30]}]}"#.to_string()
            }
            l if l.contains("\"triangle/001.jpg\"") => {
                r#"{"image": "triangle/001.jpg", "objects": [{"class": "hexagon", "bbox": [2, 2, 20, 20]}]}"#
                    .to_string()
            }
            l => l.to_string(),
        })
        .collect();
    lines.push(
        r#"{"image": "circle/missing.png", "objects": [{"class": "circle", "bbox": [1, 1, 20, 20]}]}"#.to_string(),
    );
    // Beside the folder, as a labelling tool writes it.
    let file = root.with_file_name("layout_dataset.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file
}
