//! Request inputs -> model input: image files are decoded and resized exactly as in
//! training (`shared::image`), raw tensors are checked for shape and finiteness.

/// Why an input was refused (the caller's fault: a 4xx over HTTP).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    Image(String),
    #[error(
        "tensor has {got} values, expected a multiple of {per} ({side}x{side}x3 raw pixels, NHWC)"
    )]
    TensorSize { got: usize, per: usize, side: usize },
    #[error("tensor value {index} is {value}: values must be finite pixel values in [0, 255]")]
    TensorValue { index: usize, value: f32 },
    #[error("empty input")]
    Empty,
}

/// Decodes an image file (PNG, JPEG, PPM; any size) into `side x side x 3` raw pixel
/// values as f32, NHWC. `name` names the input in errors.
pub fn image_input(bytes: &[u8], name: &str, side: usize) -> Result<Vec<f32>, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    let img = shared::image::decode(bytes, name).map_err(|e| InputError::Image(e.to_string()))?;
    let px = if img.width == side && img.height == side {
        img.data
    } else {
        shared::image::resize_square(&img, side)
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
