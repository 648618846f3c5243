//! PNG charts for the report: a small raster canvas (lines, shaded fault windows, axis labels in
//! a built-in 3x5 pixel font) written as an RGB PNG. No font files, no system libraries: the
//! report must render the same on any machine and open offline.

use crate::nemesis::Window;

/// An RGB image.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

/// An RGB colour.
pub type Rgb = [u8; 3];

impl Canvas {
    /// A white canvas.
    pub fn new(w: usize, h: usize) -> Canvas {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// The colour at (x, y) (tests).
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    /// Fills the rectangle [x0, x1) x [y0, y1).
    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.set(x, y, c);
            }
        }
    }

    /// A line two pixels wide from (x0, y0) to (x1, y1).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for s in 0..=steps {
            let x = x0 + (x1 - x0) * s / steps;
            let y = y0 + (y1 - y0) * s / steps;
            self.set(x, y, c);
            self.set(x, y + 1, c);
        }
    }

    /// Text in the built-in font, `scale` pixels per font pixel; unknown characters are blank.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        let (px, py) = (x + (k as i64 * 4 + col) * scale, y + r as i64 * scale);
                        self.rect(px, py, px + scale, py + scale, c);
                    }
                }
            }
        }
    }

    /// The image as a PNG file (8-bit RGB, no interlace).
    pub fn png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.h * (self.w * 3 + 1));
        for row in self.px.chunks(self.w * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6));
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crate::workload::crc(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// 3x5 glyphs: five rows of three bits, high bit leftmost.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '/' => [1, 1, 2, 4, 4],
        '-' => [0, 0, 7, 0, 0],
        '%' => [5, 1, 2, 4, 5],
        'a' => [0, 6, 1, 7, 7],
        'c' => [0, 7, 4, 4, 7],
        'e' => [7, 5, 7, 4, 7],
        'f' => [3, 4, 7, 4, 4],
        'i' => [2, 0, 2, 2, 2],
        'k' => [4, 5, 6, 5, 5],
        'l' => [6, 2, 2, 2, 7],
        'm' => [0, 7, 7, 5, 5],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 7, 5, 5, 7],
        'p' => [0, 7, 5, 7, 4],
        'r' => [0, 7, 4, 4, 4],
        's' => [0, 7, 6, 1, 7],
        't' => [4, 7, 4, 4, 3],
        'u' => [0, 5, 5, 5, 7],
        'y' => [5, 5, 7, 1, 7],
        _ => [0; 5],
    }
}

/// A chart of `series` (one value per second) with `windows` shaded, as a PNG.
pub fn chart_png(series: &[(&Vec<f64>, Rgb)], windows: &[Window], secs: usize, unit: &str) -> Vec<u8> {
    let (w, h, pad) = (960i64, 280i64, 44i64);
    let mut c = Canvas::new(w as usize, h as usize);
    let max = series.iter().flat_map(|(v, _)| v.iter().copied()).fold(1.0f64, f64::max);
    let x = |t: f64| pad + (t / secs.max(1) as f64 * (w - 2 * pad) as f64) as i64;
    let y = |v: f64| h - pad - (v / max * (h - 2 * pad) as f64) as i64;
    for win in windows {
        let (a, b) = (x(win.start_ns as f64 / 1e9), x(win.end_ns as f64 / 1e9));
        c.rect(a, pad, b.max(a + 1), h - pad, [255, 221, 221]);
    }
    c.line((pad, h - pad), (w - pad, h - pad), [136, 136, 136]);
    c.line((pad, pad), (pad, h - pad), [136, 136, 136]);
    for tick in 0..=10 {
        let t = secs as f64 * tick as f64 / 10.0;
        c.line((x(t), h - pad), (x(t), h - pad + 4), [136, 136, 136]);
        c.text(x(t) - 6, h - pad + 10, &format!("{t:.0}"), 2, [60, 60, 60]);
    }
    c.text(w - pad - 8, h - pad + 24, "s", 2, [60, 60, 60]);
    c.text(4, pad - 16, &format!("{max:.0} {unit}"), 2, [60, 60, 60]);
    c.text(4, h - pad - 10, "0", 2, [60, 60, 60]);
    for (v, color) in series {
        for i in 1..v.len() {
            c.line((x((i - 1) as f64), y(v[i - 1])), (x(i as f64), y(v[i])), *color);
        }
    }
    c.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_a_well_formed_png_with_its_fault_window_shaded() {
        let ok: Vec<f64> = (0..60).map(|i| i as f64).collect();
        let windows = vec![Window {
            name: "kill".into(),
            detail: String::new(),
            start_ns: 10_000_000_000,
            end_ns: 20_000_000_000,
        }];
        let png = chart_png(&[(&ok, [34, 170, 34])], &windows, 60, "ops/s");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 960);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // The IDAT inflates back to one filter byte plus 960 RGB pixels per row.
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&png[41..41 + idat_len]).unwrap();
        assert_eq!(raw.len(), 280 * (960 * 3 + 1));
        // A pixel inside the window (15 s, mid-height, off the line) is shaded.
        let mut c = Canvas::new(4, 4);
        c.rect(1, 1, 3, 3, [1, 2, 3]);
        assert_eq!(c.get(2, 2), [1, 2, 3]);
        assert_eq!(c.get(0, 0), [255, 255, 255]);
        let row = 140usize;
        let x = 44 + (15.0 / 60.0 * (960.0 - 88.0)) as usize;
        let at = row * (960 * 3 + 1) + 1 + x * 3;
        assert_eq!(&raw[at..at + 3], &[255, 221, 221]);
    }
}
