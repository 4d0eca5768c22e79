//! The thumbnail computation of the reference pipeline (docs/design.md §6), apart from the
//! function that runs it so that benchmarks measure the same code as their floor,
//! and sample photos for the demo, tests and benchmarks.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageDecoder as _, ImageEncoder as _, ImageReader, RgbImage};

pub use image;

/// Thumbnails fit in a square of this side.
pub const MAX_SIDE: u32 = 256;

const JPEG_QUALITY: u8 = 85;

#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// The photo's size as displayed, after its EXIF orientation.
    pub original_width: u32,
    pub original_height: u32,
}

/// Decodes a JPEG or PNG, turns it upright by its EXIF orientation, fits it in
/// `MAX_SIDE`×`MAX_SIDE` keeping the aspect ratio and encodes it as JPEG.
pub fn make_thumbnail(bytes: &[u8]) -> Result<Thumbnail, image::ImageError> {
    let mut decoder = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::IoError)?
        .into_decoder()?;
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    let (original_width, original_height) = (image.width(), image.height());
    let small = if original_width > MAX_SIDE || original_height > MAX_SIDE {
        image.thumbnail(MAX_SIDE, MAX_SIDE)
    } else {
        image
    };
    let rgb = small.to_rgb8();
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY).write_image(
        rgb.as_raw(),
        rgb.width(),
        rgb.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(Thumbnail {
        jpeg,
        width: rgb.width(),
        height: rgb.height(),
        original_width,
        original_height,
    })
}

/// A JPEG "photo" of `width`×`height` stored pixels with an EXIF orientation tag
/// (1–8; 6 and 8 display rotated, so width and height swap). A gradient with noise,
/// so it decodes about as slowly as a camera's photo of that size.
pub fn sample_photo(width: u32, height: u32, orientation: u8) -> Vec<u8> {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let image = RgbImage::from_fn(width, height, |x, y| {
        let noise: u8 = rng.random_range(0..48);
        image::Rgb([
            ((x * 200 / width.max(1)) as u8).saturating_add(noise),
            ((y * 200 / height.max(1)) as u8).saturating_add(noise),
            noise.wrapping_mul(3),
        ])
    });
    let mut jpeg = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut jpeg, 90);
    if orientation != 1 {
        // Little-endian TIFF with one IFD entry: Orientation (0x0112), SHORT, count 1.
        let mut exif =
            b"II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00".to_vec();
        exif.extend_from_slice(&[orientation, 0, 0, 0, 0, 0, 0, 0]);
        // JPEG always takes EXIF; an error here would be a bug in the encoder.
        let _ = encoder.set_exif_metadata(exif);
    }
    // Encoding a well-formed RGB buffer into memory cannot fail.
    let _ = encoder.write_image(
        image.as_raw(),
        width,
        height,
        image::ExtendedColorType::Rgb8,
    );
    jpeg
}

/// `photo_meta` ids: the photo's path when it fits the id alphabet (`/` as `:`),
/// else a SHA-256 prefix of it — stable either way, which makes the write idempotent.
pub fn document_id(path: &str) -> String {
    let readable = path.replace('/', ":");
    let fits = readable.len() <= 255
        && readable
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@".contains(&b));
    if fits {
        readable
    } else {
        use sha2::Digest as _;
        format!("h:{}", hex::encode(&sha2::Sha256::digest(path)[..16]))
    }
}

/// `<uid>/<name>.<ext>` → `<uid>/<name>.jpg`.
pub fn thumbnail_path(path: &str) -> String {
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    if dir.is_empty() {
        format!("{stem}.jpg")
    } else {
        format!("{dir}/{stem}.jpg")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_in_the_square_keeping_the_aspect_ratio() {
        let thumbnail = make_thumbnail(&sample_photo(1200, 600, 1)).unwrap();
        assert_eq!((thumbnail.width, thumbnail.height), (256, 128));
        assert_eq!(
            (thumbnail.original_width, thumbnail.original_height),
            (1200, 600)
        );
        let decoded = image::load_from_memory(&thumbnail.jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (256, 128));
    }

    #[test]
    fn exif_orientation_turns_the_photo_upright() {
        // Stored landscape, displayed portrait: orientations 6 and 8 rotate by 90°.
        for orientation in [6, 8] {
            let thumbnail = make_thumbnail(&sample_photo(1000, 500, orientation)).unwrap();
            assert_eq!(
                (thumbnail.original_width, thumbnail.original_height),
                (500, 1000),
                "orientation {orientation}"
            );
            assert_eq!((thumbnail.width, thumbnail.height), (128, 256));
        }
        let flipped = make_thumbnail(&sample_photo(1000, 500, 3)).unwrap();
        assert_eq!((flipped.width, flipped.height), (256, 128));
    }

    #[test]
    fn small_photos_keep_their_size() {
        let thumbnail = make_thumbnail(&sample_photo(100, 40, 1)).unwrap();
        assert_eq!((thumbnail.width, thumbnail.height), (100, 40));
    }

    #[test]
    fn what_is_not_an_image_is_an_error() {
        assert!(make_thumbnail(b"hello, not a photo").is_err());
        // A JPEG signature over garbage. (A JPEG cut short inside its scan data still
        // decodes: the decoder fills the missing blocks, as browsers do.)
        let mut corrupt = b"\xff\xd8\xff\xe0".to_vec();
        corrupt.extend(std::iter::repeat_n(0x5au8, 2000));
        assert!(make_thumbnail(&corrupt).is_err(), "a corrupt JPEG fails");
        assert!(make_thumbnail(b"").is_err());
    }

    #[test]
    fn thumbnail_paths_keep_the_directory_and_end_in_jpg() {
        assert_eq!(thumbnail_path("u1/cat.png"), "u1/cat.jpg");
        assert_eq!(thumbnail_path("u1/a.b.jpeg"), "u1/a.b.jpg");
        assert_eq!(thumbnail_path("u1/noext"), "u1/noext.jpg");
        assert_eq!(thumbnail_path("top.jpg"), "top.jpg");
    }

    #[test]
    fn document_ids_are_stable_and_valid() {
        assert_eq!(document_id("u1/cat.jpg"), "u1:cat.jpg");
        let odd = document_id("u1/ça va?.jpg");
        assert!(odd.starts_with("h:") && odd.len() == 34, "{odd}");
        assert_eq!(odd, document_id("u1/ça va?.jpg"));
        assert_ne!(odd, document_id("u1/ça va!.jpg"));
    }
}
