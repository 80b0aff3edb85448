//! Light training-time augmentation, applied while a batch is converted to the network's
//! input: a random shift of up to [`MAX_SHIFT`] pixels (edges replicated), brightness
//! as a gain `x [1-BRIGHTNESS, 1+BRIGHTNESS]` (an additive shift clipped GTSRB's many dark
//! images to black) and contrast `x [1-CONTRAST, 1+CONTRAST]` around the image mean. No flips:
//! mirrored signs change meaning (keep left / keep right).

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shared::data::ImageSet;

use super::model::{INPUT_OFFSET, INPUT_SCALE};

/// Largest shift in pixels, each axis.
pub const MAX_SHIFT: i64 = 2;
/// Largest brightness change, as a fraction of the full range.
pub const BRIGHTNESS: f32 = 0.1;
/// Largest relative contrast change.
pub const CONTRAST: f32 = 0.2;

/// NCHW f32 input for the images at `indices`, each randomly shifted and jittered with
/// numbers from `rng`, then normalised like [`super::model::normalize_pixel`].
pub fn augmented_batch(
    set: &ImageSet,
    indices: &[usize],
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<Tensor> {
    let s = set.side;
    let plane = s * s;
    let mut data = vec![0f32; indices.len() * 3 * plane];
    for (b, &i) in indices.iter().enumerate() {
        let img = set.image(i);
        let dx = rng.random_range(-MAX_SHIFT..=MAX_SHIFT);
        let dy = rng.random_range(-MAX_SHIFT..=MAX_SHIFT);
        let bright = rng.random_range(-BRIGHTNESS..=BRIGHTNESS);
        let contrast = rng.random_range(1.0 - CONTRAST..=1.0 + CONTRAST);
        let mean = img.iter().map(|&v| f32::from(v)).sum::<f32>() / img.len() as f32 * INPUT_SCALE;
        let out = &mut data[b * 3 * plane..(b + 1) * 3 * plane];
        let clampi = |v: i64| v.clamp(0, s as i64 - 1) as usize;
        for y in 0..s {
            let sy = clampi(y as i64 - dy);
            for x in 0..s {
                let sx = clampi(x as i64 - dx);
                let px = &img[(sy * s + sx) * 3..(sy * s + sx) * 3 + 3];
                for c in 0..3 {
                    let v = f32::from(px[c]) * INPUT_SCALE;
                    let v = (((v - mean) * contrast + mean) * (1.0 + bright)).clamp(0.0, 1.0);
                    out[c * plane + y * s + x] = v + INPUT_OFFSET;
                }
            }
        }
    }
    Ok(Tensor::from_vec(data, (indices.len(), 3, s, s), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn augmentation_is_seeded_bounded_and_changes_pixels() {
        let mut set = ImageSet::new(8);
        let px: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 7 % 256) as u8).collect();
        set.push(&px, 0, "t".into(), "f".into());
        let dev = Device::Cpu;
        let a = augmented_batch(&set, &[0, 0], &mut ChaCha8Rng::seed_from_u64(1), &dev).unwrap();
        let b = augmented_batch(&set, &[0, 0], &mut ChaCha8Rng::seed_from_u64(1), &dev).unwrap();
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|v| (-0.5..=0.5).contains(v)));
        let plain = super::super::model::batch_tensor(&set, &[0], &dev).unwrap();
        let plain: Vec<f32> = plain.flatten_all().unwrap().to_vec1().unwrap();
        assert_ne!(&a[..plain.len()], plain.as_slice());
    }
}
