//! Test support: a real signed bundle built with the exporter library from a randomly
//! initialised network (the same files `trainer demo` ships, in seconds instead of a
//! training run), with a crafted reference file whose centroids and calibration scores make
//! the prediction sets predictable; a minimal HTTP/1.1 client; the agent binary.
#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use shared::bundle::keys;
use trainer::training::config::ModelConfig;
use trainer::training::model::{Arch, Backbone};

pub const DIM: usize = 32;
pub const CLASSES: usize = 43;
pub const N_CAL: usize = 50;

/// Random unit-norm centroids, `CLASSES x DIM`.
pub fn centroids(seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut c = vec![0f32; CLASSES * DIM];
    for row in c.chunks_exact_mut(DIM) {
        for v in row.iter_mut() {
            *v = rng.random_range(-1.0..1.0);
        }
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    c
}

/// Calibration scores `i * 1.2 / N_CAL`: a score of 1 (half way between two centroids)
/// gets p = 9/51.
pub fn calibration_scores() -> Vec<f64> {
    (0..N_CAL).map(|i| i as f64 * 1.2 / N_CAL as f64).collect()
}

/// reference.safetensors as the trainer writes it (centroids, nearest-centroid scores,
/// label-free scores, calibration labels).
pub fn reference_bytes(seed: u64) -> Vec<u8> {
    let c: Vec<u8> = centroids(seed)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let s: Vec<u8> = calibration_scores()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let l: Vec<u8> = (0..N_CAL as u16)
        .map(|i| i % CLASSES as u16)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // label-free scores in [0, 0.9] for the drift monitor
    let f: Vec<u8> = (0..N_CAL)
        .map(|i| i as f64 * 0.9 / N_CAL as f64)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let views = vec![
        (
            "calibration_label_free.nearest_centroid",
            TensorView::new(safetensors::Dtype::F64, vec![N_CAL], &f).unwrap(),
        ),
        (
            "centroids",
            TensorView::new(safetensors::Dtype::F32, vec![CLASSES, DIM], &c).unwrap(),
        ),
        (
            "calibration_scores.nearest_centroid",
            TensorView::new(safetensors::Dtype::F64, vec![N_CAL], &s).unwrap(),
        ),
        (
            "calibration_labels",
            TensorView::new(safetensors::Dtype::U16, vec![N_CAL], &l).unwrap(),
        ),
    ];
    safetensors::serialize(views, None).unwrap()
}

/// A run folder: random weights (`model.safetensors`) and the reference file.
fn run_folder(dir: &Path) {
    let m = ModelConfig {
        embedding_dim: DIM,
        batch_norm: false,
        dropout: 0.0,
        l2_normalize: true,
    };
    let arch = Arch::new(32, &m).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let net = Backbone::new(arch, &Device::Cpu, &mut rng).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    net.save(&dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("reference.safetensors"), reference_bytes(3)).unwrap();
}

/// A signed bundle in `root/bundle` and its public key in `root/fleet.pub`; returns
/// (bundle dir, public key file, signing key).
pub fn built_bundle(root: &Path) -> (PathBuf, PathBuf, ed25519_dalek::SigningKey) {
    let run = root.join("run");
    run_folder(&run);
    let src = exporter::source::open_run(run.to_str().unwrap(), "sqlite::memory:").unwrap();
    let golden = exporter::golden::synthetic(&src.net).unwrap();
    let key = keys::generate().unwrap();
    let out = root.join("bundle");
    exporter::bundle::build(&src, &golden, &key, &out, shared::data::gtsrb_class_names()).unwrap();
    let public = root.join("fleet.pub");
    std::fs::write(&public, keys::public_pem(&key.verifying_key())).unwrap();
    (out, public, key)
}

/// Copies a bundle directory (to tamper with the copy).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A PNG of `w x h` pixels.
pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed.wrapping_mul(3)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A JPEG of `w x h` pixels.
pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A binary PPM (P6) of `w x h` pixels.
pub fn ppm(w: usize, h: usize) -> Vec<u8> {
    let mut v = format!("P6\n{w} {h}\n255\n").into_bytes();
    v.extend((0..w * h * 3).map(|i| (i % 251) as u8));
    v
}

/// The agent binary.
pub fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    c.env("RUST_LOG", "warn");
    c
}

/// The server once `child` printed its "listening http://ADDR" line; the child back if it
/// printed something else (it is exiting: the caller reports why).
fn listening(mut child: Child) -> Result<Server, Child> {
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    match line.trim().strip_prefix("listening http://") {
        Some(addr) => Ok(Server {
            addr: addr.to_string(),
            child,
        }),
        None => Err(child),
    }
}

/// A running `edge-agent serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// Starts `serve` on a free loopback port; `Err(stderr)` if it exits instead.
    pub fn start(bundle: &Path, key: &Path, extra: &[&str]) -> Result<Server, String> {
        let child = agent()
            .args(["serve", "--listen", "127.0.0.1:0", "--bundle"])
            .arg(bundle)
            .arg("--key")
            .arg(key)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = match listening(child) {
            Ok(server) => return Ok(server),
            Err(child) => child,
        };
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        Err(format!("{status}: {err}"))
    }

    pub fn request(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
        http(&self.addr, method, path, ctype, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (Connection: close); returns status and body.
pub fn http(addr: &str, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A PNG of `w x h` RGB pixels, all one colour but for a short stripe in the first row,
/// streamed row by row (no `w * h * 3` buffer): a decompression bomb of a few hundred KB
/// that decodes to `w * h * 3` bytes.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Balanced);
        let mut writer = enc.write_header().unwrap();
        let mut stream = writer.stream_writer().unwrap();
        let mut row = vec![90u8; w as usize * 3];
        for (i, v) in row.iter_mut().take(300).enumerate() {
            *v = (i * 7) as u8;
        }
        stream.write_all(&row).unwrap();
        let flat = vec![90u8; w as usize * 3];
        for _ in 1..h {
            stream.write_all(&flat).unwrap();
        }
        stream.finish().unwrap();
    }
    out
}

/// An image that exists only as a function: one colour, `w x h`.
struct Flat(u32, u32);

impl image::GenericImageView for Flat {
    type Pixel = image::Rgb<u8>;
    fn dimensions(&self) -> (u32, u32) {
        (self.0, self.1)
    }
    fn get_pixel(&self, x: u32, y: u32) -> image::Rgb<u8> {
        image::Rgb([(x / 64) as u8, (y / 64) as u8, 128])
    }
}

/// A baseline JPEG of `w x h` smooth pixels, encoded block by block (no `w * h * 3`
/// buffer): a few MB that decode to `w * h * 3` bytes.
pub fn jpeg_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 10)
        .encode_image(&Flat(w, h))
        .unwrap();
    out
}

/// `serve` under an address-space limit (`RLIMIT_AS`, bytes) with its stderr written to
/// `log`; `Err(log)` if it exits instead of listening.
pub fn start_limited(
    bundle: &Path,
    key: &Path,
    extra: &[&str],
    address_space: u64,
    log: &Path,
) -> Result<Server, String> {
    use std::os::unix::process::CommandExt;
    let err = std::fs::File::create(log).unwrap();
    let mut cmd = agent();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--bundle"])
        .arg(bundle)
        .arg("--key")
        .arg(key)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(err);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: address_space as libc::rlim_t,
                rlim_max: address_space as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match listening(cmd.spawn().unwrap()) {
        Ok(server) => return Ok(server),
        Err(child) => child,
    };
    let status = child.wait().unwrap();
    Err(format!(
        "{status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    ))
}

/// A field of `/proc/<pid>/status` in kB (`VmHWM`: peak resident memory, `VmRSS`).
pub fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One HTTP/1.1 request (Connection: close) with extra header lines (each ending in
/// `\r\n`) and a time limit for the whole exchange; errors instead of panics.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    extra_headers: &str,
    ctype: &str,
    body: &[u8],
    limit: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // the server may answer (413) and close before the whole body is sent
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of a metric line that starts with `prefix` (name and labels), if present.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
