//! The written specification of the resize (docs/BUNDLE.md, "Image resizing") against the
//! code: `scripts/py/resize_spec.py` implements that text independently (NumPy, no image
//! library), and its output must equal `shared::image::resize_square` BIT FOR BIT on random
//! images of many sizes (upscales, downscales, one side already equal, 1-pixel sides, ratios
//! up to 4000 -> 32), on PPM files with unusual maxvals (decoded by the script itself), and
//! on all 3,870 real GTSRB photos of the official subset. Plus pure-Rust checks of the pass
//! order (horizontal first) and of the decoding rules the text states for PNG.
//!
//! Python is found through `EDGECP_PYTHON`, else `scripts/pyenv.sh`; if neither works the
//! tests fail (they never pass silently).

mod common;

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::image::{decode, read_image, resize_square, RgbImage};

/// One resize for the Python implementation.
enum Source {
    /// Raw RGB bytes, passed as they are.
    Pixels(RgbImage),
    /// A PPM file the script decodes itself (and Rust with `read_image`).
    Ppm(PathBuf),
}

struct Case {
    what: String,
    source: Source,
    width: usize,
    height: usize,
}

impl Case {
    fn square(what: impl Into<String>, img: RgbImage, side: usize) -> Case {
        Case {
            what: what.into(),
            source: Source::Pixels(img),
            width: side,
            height: side,
        }
    }

    /// What the Rust code answers: `resize_square` for square targets (the function under
    /// test), `RgbImage::resize` otherwise.
    fn rust(&self) -> Vec<u8> {
        let img = match &self.source {
            Source::Pixels(img) => img.clone(),
            Source::Ppm(path) => read_image(path).unwrap(),
        };
        if self.width == self.height {
            resize_square(&img, self.width)
        } else {
            img.resize(self.width, self.height).data
        }
    }
}

/// Runs `resize_spec.py` on all cases; returns its outputs in case order.
fn python(cases: &[Case]) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut input = Vec::new();
    let mut json = Vec::new();
    for case in cases {
        let dst = serde_json::json!([case.width, case.height]);
        json.push(match &case.source {
            Source::Pixels(img) => {
                let offset = input.len();
                input.extend_from_slice(&img.data);
                serde_json::json!({"src": [img.width, img.height], "offset": offset, "dst": dst})
            }
            Source::Ppm(path) => serde_json::json!({"file": path, "dst": dst}),
        });
    }
    std::fs::write(d.join("input.u8"), &input).unwrap();
    std::fs::write(d.join("cases.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    common::run_reference_script("resize_spec.py", d);
    let out = std::fs::read(d.join("output.u8")).unwrap();
    let mut at = 0;
    let parts = cases
        .iter()
        .map(|c| {
            let n = c.width * c.height * 3;
            at += n;
            out[at - n..at].to_vec()
        })
        .collect();
    assert_eq!(at, out.len(), "resize_spec.py wrote {} bytes", out.len());
    parts
}

/// Asserts that Python and Rust agree on every byte of every case; the message lists each
/// case that does not (how many values differ, by how much, and where first).
fn assert_spec_matches(cases: &[Case]) {
    let expected = python(cases);
    let mut failures = Vec::new();
    for (case, want) in cases.iter().zip(&expected) {
        let got = case.rust();
        assert_eq!(got.len(), want.len(), "{}", case.what);
        let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        if let Some(&first) = diff.first() {
            let max = diff
                .iter()
                .map(|&i| got[i].abs_diff(want[i]))
                .max()
                .unwrap();
            let (px, ch) = (first / 3, first % 3);
            failures.push(format!(
                "{} -> {}x{}: {} of {} values differ (max by {max}); first at x={} y={} \
                 channel {ch}: Rust {} spec {}",
                case.what,
                case.width,
                case.height,
                diff.len(),
                got.len(),
                px % case.width,
                px / case.width,
                got[first],
                want[first]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the spec (scripts/py/resize_spec.py) and shared::image disagree in {} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn noise(rng: &mut ChaCha8Rng, w: usize, h: usize) -> RgbImage {
    let mut data = vec![0u8; w * h * 3];
    rng.fill(&mut data[..]);
    RgbImage::new(w, h, data).unwrap()
}

/// Smooth content with a little noise and saturated patches (0 and 255), closer to a photo
/// than pure noise and exercising the clamp.
fn photo_like(rng: &mut ChaCha8Rng, w: usize, h: usize) -> RgbImage {
    let (fx, fy): (f64, f64) = (rng.random_range(0.01..0.3), rng.random_range(0.01..0.3));
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = 128.0
                    + 150.0 * ((x as f64 * fx + c as f64).sin() * (y as f64 * fy).cos())
                    + rng.random_range(-6.0..6.0);
                data.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    RgbImage::new(w, h, data).unwrap()
}

#[test]
fn spec_matches_on_synthetic_images() {
    let mut rng = ChaCha8Rng::seed_from_u64(169);
    let mut cases = Vec::new();
    // (source width, height) -> side, chosen to cover each branch of the text
    let fixed: &[(usize, usize, usize, &str)] = &[
        (1, 1, 32, "1x1 upscale"),
        (1, 5, 32, "1-pixel wide upscale"),
        (7, 3, 32, "small upscale"),
        (16, 16, 32, "2x upscale"),
        (31, 31, 32, "upscale by 32/31"),
        (5, 40, 32, "upscale one side, downscale the other"),
        (33, 33, 32, "downscale by 33/32"),
        (64, 64, 32, "2x downscale"),
        (100, 37, 32, "downscale / upscale"),
        (250, 199, 32, "downscale"),
        (1000, 1000, 32, "1000 -> 32"),
        (1000, 13, 32, "1000 wide, 13 high"),
        (13, 1000, 32, "13 wide, 1000 high"),
        (1000, 1, 32, "1000x1"),
        (1, 1000, 32, "1x1000"),
        (4000, 3, 32, "4000 -> 32"),
        (997, 1009, 17, "odd sizes -> 17"),
        (32, 100, 32, "width already 32"),
        (100, 32, 32, "height already 32"),
        (32, 1, 32, "width 32, 1 row"),
        (1, 32, 32, "1 column, height 32"),
        (32, 32, 32, "identity"),
        (1000, 1000, 1, "to 1x1"),
        (50, 3, 1, "to 1x1"),
        (3, 3, 1, "3x3 to 1x1"),
        (2, 2, 1, "2x2 to 1x1"),
        (40, 30, 7, "to 7"),
        (45, 61, 64, "upscale to 64"),
        (29, 31, 100, "upscale to 100"),
        (300, 220, 224, "to 224"),
        (64, 64, 48, "ratio 4/3"),
        (96, 96, 32, "3x downscale"),
        // above a factor of about 73 the precision reaches its cap of 21 bits
        (6000, 20, 24, "6000 -> 24, 21 bits"),
        (20, 6000, 24, "6000 -> 24, 21 bits"),
        (3000, 2000, 2, "to 2x2, 21 bits"),
    ];
    for &(w, h, side, what) in fixed {
        cases.push(Case::square(
            format!("noise {w}x{h} ({what})"),
            noise(&mut rng, w, h),
            side,
        ));
        cases.push(Case::square(
            format!("photo-like {w}x{h} ({what})"),
            photo_like(&mut rng, w, h),
            side,
        ));
    }
    // random sizes, mostly around GTSRB's 25..200 pixels
    for i in 0..60 {
        let w = rng.random_range(1..=260);
        let h = rng.random_range(1..=260);
        let side = [32, 32, 32, rng.random_range(1..=80)][i % 4];
        let img = if i % 2 == 0 {
            noise(&mut rng, w, h)
        } else {
            photo_like(&mut rng, w, h)
        };
        cases.push(Case::square(format!("random #{i} {w}x{h}"), img, side));
    }
    // non-square targets, through RgbImage::resize (same code path)
    for &(w, h, tw, th) in &[
        (100, 80, 40, 25),
        (30, 30, 30, 64),
        (30, 30, 90, 30),
        (1, 1, 3, 2),
        (640, 480, 32, 24),
        // 2 -> 32768: every weight times 2^14 ends in exactly .5, so these tell rounding
        // half away from zero from other tie rules
        (2, 3, 32768, 3),
        (3, 2, 3, 32768),
    ] {
        cases.push(Case {
            what: format!("noise {w}x{h} (non-square target)"),
            source: Source::Pixels(noise(&mut rng, w, h)),
            width: tw,
            height: th,
        });
    }
    assert_spec_matches(&cases);
}

#[test]
fn spec_matches_on_ppm_files_with_other_maxvals() {
    // The script decodes these itself, as the text says (maxval scaling, P3, comments);
    // each is resized to 32 and also "resized" to its own size (the decoded pixels).
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut cases = Vec::new();
    for (i, &(w, h, maxval, plain)) in [
        (20usize, 11usize, 255u32, false),
        (20, 11, 1000, false),
        (9, 40, 65535, false),
        (50, 50, 7, false),
        (13, 17, 300, true),
        (6, 5, 1, true),
    ]
    .iter()
    .enumerate()
    {
        let samples: Vec<u32> = (0..w * h * 3)
            .map(|_| rng.random_range(0..=maxval))
            .collect();
        let mut bytes = if plain {
            format!("P3\n# a comment\n{w} {h}\n{maxval}\n").into_bytes()
        } else {
            format!("P6 {w}\n# a comment\n{h} {maxval}\n").into_bytes()
        };
        for (k, &s) in samples.iter().enumerate() {
            if plain {
                bytes.extend_from_slice(
                    format!("{s}{}", if k % 7 == 6 { "\n" } else { " " }).as_bytes(),
                );
            } else if maxval < 256 {
                bytes.push(s as u8);
            } else {
                bytes.extend_from_slice(&(s as u16).to_be_bytes());
            }
        }
        let path = dir.path().join(format!("m{i}.ppm"));
        std::fs::write(&path, bytes).unwrap();
        for (tw, th) in [(32, 32), (w, h)] {
            cases.push(Case {
                what: format!(
                    "{} maxval {maxval} {w}x{h}",
                    if plain { "P3" } else { "P6" }
                ),
                source: Source::Ppm(path.clone()),
                width: tw,
                height: th,
            });
        }
    }
    assert_spec_matches(&cases);
}

/// Every PPM of the official GTSRB subset (3,870 photos, 25x25 to about 200x200).
fn gtsrb_photos() -> Vec<PathBuf> {
    let images = common::data_dir().join("gtsrb-official-subset/GTSRB/Final_Training/Images");
    let mut paths = Vec::new();
    for class in std::fs::read_dir(&images).unwrap() {
        for f in std::fs::read_dir(class.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "ppm") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    assert!(
        paths.len() >= 3_000,
        "{} PPMs under {}",
        paths.len(),
        images.display()
    );
    paths
}

#[test]
fn spec_matches_on_real_gtsrb_photos() {
    let photos = gtsrb_photos();
    let mut cases: Vec<Case> = photos
        .iter()
        .map(|p| Case {
            what: p.display().to_string(),
            source: Source::Ppm(p.clone()),
            width: 32,
            height: 32,
        })
        .collect();
    // and a few at other sizes, and a few crops (the ROI without its border)
    for p in photos.iter().step_by(400) {
        for side in [1, 24, 48, 64] {
            cases.push(Case {
                what: format!("{} -> {side}", p.display()),
                source: Source::Ppm(p.clone()),
                width: side,
                height: side,
            });
        }
        let img = read_image(p).unwrap();
        let crop = img
            .crop(5, 5, img.width - 5, img.height - 5)
            .expect("photos are bigger than 10x10");
        cases.push(Case::square(format!("{} cropped", p.display()), crop, 32));
    }
    assert_spec_matches(&cases);
}

/// Horizontal pass first: on these images the two orders give different answers, and
/// `resize_square` must give the horizontal-first one. Each one-axis resize is a single
/// pass (see the text), so the two orders can be written with `RgbImage::resize`.
#[test]
fn horizontal_pass_comes_first() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (w, h, side) in [(100, 77, 32), (45, 45, 32), (20, 9, 32), (300, 3, 7)] {
        let img = noise(&mut rng, w, h);
        let horizontal_first = img.resize(side, h).resize(side, side).data;
        let vertical_first = img.resize(w, side).resize(side, side).data;
        assert_ne!(
            horizontal_first, vertical_first,
            "{w}x{h} -> {side} does not tell the orders apart"
        );
        assert!(
            resize_square(&img, side) == horizontal_first,
            "{w}x{h} -> {side}: resize_square is not horizontal-first"
        );
    }
}

/// What the text says about decoding PNG: grey expanded to RGB, alpha dropped (not
/// composited), 16-bit samples reduced with `(v + 128) / 257`.
#[test]
fn png_decoding_rules() {
    fn png<P: image::PixelWithColorType>(img: image::ImageBuffer<P, Vec<P::Subpixel>>) -> Vec<u8>
    where
        [P::Subpixel]: image::EncodableLayout,
    {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        buf.into_inner()
    }
    let samples16: Vec<u16> = (0..=65535u32)
        .step_by(37)
        .map(|v| v as u16)
        .chain([128, 129, 385, 386, 65535])
        .collect();
    let n = samples16.len() / 4 * 4;
    let reduce = |v: u16| ((v as u32 + 128) / 257) as u8;

    // RGBA 16: alpha dropped, each channel reduced
    let rgba16 = image::ImageBuffer::<image::Rgba<u16>, _>::from_raw(
        (n / 4) as u32,
        1,
        samples16[..n].to_vec(),
    )
    .unwrap();
    let got = decode(&png(rgba16), "rgba16.png").unwrap();
    let want: Vec<u8> = samples16[..n]
        .chunks(4)
        .flat_map(|p| [reduce(p[0]), reduce(p[1]), reduce(p[2])])
        .collect();
    assert_eq!(got.data, want);

    // grey 16 and grey+alpha 8: expanded to (g, g, g)
    let l16 =
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(n as u32, 1, samples16[..n].to_vec())
            .unwrap();
    let got = decode(&png(l16), "l16.png").unwrap();
    let want: Vec<u8> = samples16[..n]
        .iter()
        .flat_map(|&g| [reduce(g); 3])
        .collect();
    assert_eq!(got.data, want);
    let la8 = image::ImageBuffer::<image::LumaA<u8>, _>::from_raw(
        128,
        1,
        (0..=255u8).collect::<Vec<u8>>(),
    )
    .unwrap();
    let got = decode(&png(la8), "la8.png").unwrap();
    let want: Vec<u8> = (0..128u8).flat_map(|i| [2 * i; 3]).collect();
    assert_eq!(got.data, want);
    // a pixel with alpha 0 keeps its colour (no compositing onto a background)
    let rgba8 =
        image::ImageBuffer::<image::Rgba<u8>, _>::from_raw(1, 1, vec![200, 10, 30, 0]).unwrap();
    assert_eq!(
        decode(&png(rgba8), "a.png").unwrap().data,
        vec![200, 10, 30]
    );
}
