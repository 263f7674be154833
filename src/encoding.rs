//! gzip for the expositions (`/metrics`, `/scrape`), when the client asks for it.
//!
//! Prometheus sends `Accept-Encoding: gzip` on every scrape unless its scrape config says
//! `enable_compression: false`. A thousand targets make ~20 MB of text that compresses about
//! 13 to 1, so the network, the kernel on both sides and the client all handle a fraction of
//! the bytes.
//!
//! A large exposition is produced in windows ([`crate::metrics::WINDOW`]). Each window is
//! compressed on its own into a [`Segment`]: raw deflate blocks that end on a byte boundary
//! with a sync flush and refer to nothing before them, so each window is compressed as soon as
//! it is merged (on the thread that merges ahead, while the last one is being sent) and the
//! segments are written one after another. (Several threads could compress windows at once;
//! by hand at 1000 targets that gave a p50 of 22 ms against 31 ms but held 7.2 MiB more at
//! the peak, so they do not.)
//! [`GzipStream`] frames them as one gzip member: the header before the first, then one final
//! empty block and the trailer, whose CRC-32 is combined from the segments' (as pigz does).
//! Level 1: measured by hand on a 17.7 MB, 1000-target exposition cut in 1 MB windows, it
//! compressed ~770 MB/s on one core of the 2-vCPU test machine, 13.6 to 1; level 2 ~250 MB/s,
//! 15.4 to 1.

use flate2::{Compress, Compression, Crc, FlushCompress};
use std::cell::RefCell;

thread_local! {
    /// One level-1 raw deflate compressor per thread that compresses (the runtime's workers for
    /// small expositions, the merge-ahead threads for large ones), reused from segment to
    /// segment.
    static COMPRESSOR: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Whether an `Accept-Encoding` header value accepts gzip: `gzip` (or `x-gzip`) listed with a
/// non-zero weight, or not listed and `*` with a non-zero weight (RFC 9110 §12.5.3).
pub fn accepts_gzip(header: &str) -> bool {
    let mut star = None;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let weight = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .next()
            .map_or(1.0, |q| q.parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return weight > 0.0;
        }
        if coding == "*" {
            star = Some(weight > 0.0);
        }
    }
    star.unwrap_or(false)
}

/// One window compressed on its own: deflate blocks ending with a sync flush (byte-aligned,
/// not final), the CRC-32 and length of the input.
pub struct Segment {
    deflate: Vec<u8>,
    crc: Crc,
}

impl Segment {
    pub fn new(input: &[u8]) -> Self {
        let mut crc = Crc::new();
        crc.update(input);
        let deflate = COMPRESSOR.with_borrow_mut(|z| {
            // Reset, not made anew: a new compressor allocates and zeroes its tables, which
            // measured 150 µs more per 40 KB exposition, about three times its compression
            // after a reset (53 µs).
            let z = z.get_or_insert_with(|| Compress::new(Compression::fast(), false));
            z.reset();
            // Level 1 rarely does worse than 1:4 on exposition text; grown when it does.
            let mut deflate = Vec::with_capacity(input.len() / 4 + 64);
            loop {
                let done = z.total_in() as usize;
                // Only a bad flush sequence errors, and this one is always the same.
                let _ = z.compress_vec(&input[done..], &mut deflate, FlushCompress::Sync);
                // A sync flush is complete when it left room in the output.
                if z.total_in() as usize == input.len() && deflate.len() < deflate.capacity() {
                    break deflate;
                }
                deflate.reserve(deflate.capacity().max(64));
            }
        });
        Segment { deflate, crc }
    }
}

/// One gzip member written segment by segment.
#[derive(Default)]
pub struct GzipStream {
    /// The CRC-32 and length of everything pushed so far.
    crc: Crc,
    /// Whether the header has been sent (with the first segment).
    started: bool,
}

/// The gzip header: deflate, no name or time, "unknown" OS (RFC 1952).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// An empty final block with fixed Huffman codes: BFINAL=1, BTYPE=01, end-of-block.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

impl GzipStream {
    /// The bytes to send for the next segment (the header first, before the first one).
    pub fn push(&mut self, segment: Segment) -> Vec<u8> {
        self.crc.combine(&segment.crc);
        if std::mem::replace(&mut self.started, true) {
            return segment.deflate;
        }
        let mut out = Vec::with_capacity(HEADER.len() + segment.deflate.len());
        out.extend_from_slice(&HEADER);
        out.extend_from_slice(&segment.deflate);
        out
    }

    /// The last bytes: the header if nothing was pushed, the final block and the trailer
    /// (CRC-32, length mod 2^32).
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER.len() + FINAL_BLOCK.len() + 8);
        if !self.started {
            out.extend_from_slice(&HEADER);
        }
        out.extend_from_slice(&FINAL_BLOCK);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        out
    }
}

/// A whole body as one gzip member.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut stream = GzipStream::default();
    let mut out = stream.push(Segment::new(body));
    out.extend_from_slice(&stream.finish());
    out
}

/// The inverse of [`gzip`], strict: exactly one gzip member and nothing after it (a decoder
/// that stops at the first member's end would hide a stream split in two). For the tests and
/// tools that check what the exporter sends.
pub fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    // bufread, not read: read::GzDecoder buffers ahead, so its inner slice would not show
    // what follows the member.
    let mut decoder = flate2::bufread::GzDecoder::new(data);
    decoder.read_to_end(&mut out)?;
    let rest = decoder.into_inner().len();
    if rest > 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{rest} bytes after the gzip member"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gunzip_ok(data: &[u8]) -> Vec<u8> {
        gunzip(data).expect("exactly one valid gzip member")
    }

    #[test]
    fn accept_encoding_follows_the_weights() {
        for (header, want) in [
            ("gzip", true),
            ("GZIP", true),
            ("x-gzip", true),
            ("gzip, deflate, br", true),
            ("br;q=1.0, gzip;q=0.8, *;q=0.1", true),
            ("identity", false),
            ("", false),
            ("gzip;q=0", false),
            ("gzip; q=0.000", false),
            ("*", true),
            ("*;q=0", false),
            ("gzip;q=0, *", false),
            ("deflate, *;q=0.5", true),
            ("gzip;q=bogus", false),
        ] {
            assert_eq!(accepts_gzip(header), want, "Accept-Encoding: {header:?}");
        }
    }

    #[test]
    fn gunzip_refuses_anything_after_the_member() {
        let two = [gzip(b"a"), gzip(b"b")].concat();
        assert!(gunzip(&two).is_err());
        assert!(gunzip(&gzip(b"a")[..10]).is_err());
        assert_eq!(gunzip_ok(&gzip(b"a")), b"a");
    }

    #[test]
    fn an_empty_body_is_a_valid_member() {
        assert_eq!(gunzip_ok(&GzipStream::default().finish()), b"");
        assert_eq!(gunzip_ok(&gzip(b"")), b"");
    }

    #[test]
    fn incompressible_input_grows_the_output() {
        // Pseudo-random bytes do not compress: the output outgrows the first guess.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let seg = Segment::new(&data);
        assert_eq!(seg.crc.amount() as usize, data.len());
        assert!(seg.deflate.len() > data.len() / 4);
        assert_eq!(gunzip_ok(&gzip(&data)), data);
    }

    proptest! {
        /// Any header value gets an answer, and one that names gzip first with no weight (as
        /// Prometheus sends it) always accepts it.
        #[test]
        fn any_accept_encoding_is_answered(rest in "\\PC{0,80}") {
            let _ = accepts_gzip(&rest);
            let header = format!("gzip,{rest}");
            prop_assert!(accepts_gzip(&header), "{:?}", header);
        }

        /// Segments compressed apart and framed as one member decode to the input, whatever
        /// the cuts, with one decoder that stops at the first member (no multi-member help).
        #[test]
        fn segments_make_one_member(
            text in proptest::collection::vec(
                prop_oneof![Just(b"redis_up{target=\"a\"} 1\n".to_vec()),
                            proptest::collection::vec(any::<u8>(), 0..200)], 0..60),
            cuts in proptest::collection::vec(0usize..4000, 0..8),
        ) {
            let data: Vec<u8> = text.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            let mut stream = GzipStream::default();
            let mut out = Vec::new();
            for w in cuts.windows(2) {
                out.extend(stream.push(Segment::new(&data[w[0]..w[1]])));
            }
            out.extend(stream.finish());
            prop_assert_eq!(gunzip_ok(&out), data);
        }
    }
}
