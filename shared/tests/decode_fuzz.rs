//! Image decoding will take bytes from the network (the edge agent's HTTP API): arbitrary
//! and mutated inputs must give `Ok` or a clear error, never a panic or a hang.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::image::decode;

fn valid_ppm(w: usize, h: usize) -> Vec<u8> {
    let mut b = format!("P6\n# comment\n{w} {h}\n255\n").into_bytes();
    b.extend((0..w * h * 3).map(|i| (i * 31 % 251) as u8));
    b
}

fn valid_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn mutate(rng: &mut ChaCha8Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    match rng.random_range(0..4) {
        0 => b.truncate(rng.random_range(0..=b.len())),
        1 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
        }
        2 => {
            let i = rng.random_range(0..=b.len());
            let junk: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            b.splice(i..i, junk);
        }
        _ => {
            b = (0..rng.random_range(0..256))
                .map(|_| rng.random())
                .collect()
        }
    }
    b
}

#[test]
fn mutated_images_never_panic() {
    let seeds = [valid_ppm(7, 5), valid_png(6, 4)];
    for s in &seeds {
        assert!(decode(s, "seed").is_ok(), "the unmutated seed must decode");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut ok, mut err) = (0, 0);
    for i in 0..4000 {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        match std::panic::catch_unwind(|| decode(&input, "fuzz.bin")) {
            Ok(Ok(img)) => {
                assert_eq!(img.data.len(), img.width * img.height * 3);
                ok += 1;
            }
            Ok(Err(e)) => {
                assert!(
                    e.to_string().contains("fuzz.bin"),
                    "error must name the input: {e}"
                );
                err += 1;
            }
            Err(_) => panic!("decode panicked on input #{i}: {input:?}"),
        }
    }
    assert!(
        err > 1000,
        "mutations should mostly be rejected ({ok} ok, {err} errors)"
    );
}

#[test]
fn absurd_dimensions_are_refused_without_allocating() {
    // A header that promises a 100000 x 100000 image with a few bytes of payload.
    let b = b"P6\n100000 100000\n255\n\x00\x01\x02".to_vec();
    let e = decode(&b, "huge.ppm").unwrap_err().to_string();
    assert!(e.contains("huge.ppm"), "{e}");
}
