//! Request inputs -> model input: image files are decoded and resized exactly as in
//! training (`shared::image`), raw tensors are checked for shape and finiteness.
//!
//! Untrusted images are decoded within [`shared::image::DecodeLimits`] (the header is read
//! first; an image too large to decode is refused before anything is allocated), and a
//! decode running on the blocking pool stops between its steps once its request is gone
//! ([`image_input_limited`]'s `cancel` flag).

use std::sync::atomic::{AtomicBool, Ordering};

use shared::image::{DecodeError, DecodeLimits};

/// Why an input was refused (the caller's fault: a 4xx over HTTP), or why its work stopped.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    Image(String),
    /// The image is larger than the decode limits allow (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    #[error(
        "tensor has {got} values, expected a multiple of {per} ({side}x{side}x3 raw pixels, NHWC)"
    )]
    TensorSize { got: usize, per: usize, side: usize },
    #[error("tensor value {index} is {value}: values must be finite pixel values in [0, 255]")]
    TensorValue { index: usize, value: f32 },
    #[error("empty input")]
    Empty,
    /// The request this work was for is gone (timed out, or the client left).
    #[error("cancelled: the request is gone")]
    Cancelled,
}

impl From<DecodeError> for InputError {
    fn from(e: DecodeError) -> InputError {
        match e {
            DecodeError::TooLarge { .. } => InputError::TooLarge(e.to_string()),
            DecodeError::Malformed(_) => InputError::Image(e.to_string()),
        }
    }
}

/// Decodes an image file (PNG, JPEG, PPM; any size) into `side x side x 3` raw pixel
/// values as f32, NHWC. `name` names the input in errors. For files from the device
/// itself (`predict`, `bench`): generous limits ([`DecodeLimits::GENEROUS`]).
pub fn image_input(bytes: &[u8], name: &str, side: usize) -> Result<Vec<f32>, InputError> {
    image_input_limited(
        bytes,
        name,
        side,
        &DecodeLimits::GENEROUS,
        &AtomicBool::new(false),
    )
}

/// [`image_input`] within `limits`, checking `cancel` before the decode, before the resize
/// and before the conversion: once it is set, the work stops with
/// [`InputError::Cancelled`] at the next step (the decode itself cannot be interrupted,
/// which is why its size is bounded).
pub fn image_input_limited(
    bytes: &[u8],
    name: &str,
    side: usize,
    limits: &DecodeLimits,
    cancel: &AtomicBool,
) -> Result<Vec<f32>, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    let check = || {
        if cancel.load(Ordering::Relaxed) {
            Err(InputError::Cancelled)
        } else {
            Ok(())
        }
    };
    check()?;
    let img = shared::image::decode_limited(bytes, name, limits)?;
    check()?;
    let px = if img.width == side && img.height == side {
        img.data
    } else {
        let out = shared::image::resize_square(&img, side);
        drop(img);
        check()?;
        out
    };
    Ok(px.into_iter().map(f32::from).collect())
}

/// Checks a raw NHWC tensor of one or more images; returns the number of images.
pub fn check_tensor(values: &[f32], side: usize) -> Result<usize, InputError> {
    let per = side * side * 3;
    if values.is_empty() || !values.len().is_multiple_of(per) {
        return Err(InputError::TensorSize {
            got: values.len(),
            per,
            side,
        });
    }
    if let Some((index, &value)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || !(-1.0..=256.0).contains(*v))
    {
        return Err(InputError::TensorValue { index, value });
    }
    Ok(values.len() / per)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn limits_and_cancellation_stop_the_work() {
        let file = png(64, 48);
        let x = image_input(&file, "a.png", 32).unwrap();
        assert_eq!(x.len(), 32 * 32 * 3);
        let small = DecodeLimits {
            max_width: 63,
            max_height: 4096,
            max_bytes: 1 << 20,
        };
        let e = image_input_limited(&file, "a.png", 32, &small, &AtomicBool::new(false));
        assert!(matches!(e, Err(InputError::TooLarge(_))), "{e:?}");
        let e = image_input_limited(
            &file,
            "a.png",
            32,
            &DecodeLimits::GENEROUS,
            &AtomicBool::new(true),
        );
        assert!(matches!(e, Err(InputError::Cancelled)), "{e:?}");
        let e = image_input(b"nope", "b.png", 32);
        assert!(matches!(e, Err(InputError::Image(_))), "{e:?}");
    }
}
