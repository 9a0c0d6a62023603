//! The RELP decoder (`src/relp.rs`) over arbitrary bytes.
//!
//! Input: byte 0 picks a small `max_data` (0..=63), byte 1 a chunk length
//! (1..=16); the rest is the stream. Properties:
//! - fed whole, in those chunks, and byte by byte, the frames and the error
//!   are the same;
//! - after "need more" the buffer holds at most `max_buffer()` bytes;
//! - every frame encodes back to bytes that decode to the same frame (a
//!   frame cut to `max_data` to its cut data), and none holds more data
//!   than `max_data`;
//! - response and offer parsing of any frame's data never panics.
#![no_main]

use auditlb::relp::{encode, parse_offers, parse_rsp, Decoder, Error, Frame};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn feed(max_data: usize, chunks: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Frame>, Option<Error>) {
    let mut dec = Decoder::new(max_data);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.data.len() <= max_data && f.data.len() <= f.len);
                    frames.push(f)
                }
                Ok(None) => {
                    assert!(buf.len() <= dec.max_buffer(), "buffer grew to {}", buf.len());
                    break;
                }
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_data = usize::from(data[0] % 64);
    let chunk = usize::from(data[1] % 16) + 1;
    let stream = &data[2..];
    let whole = feed(max_data, &mut std::iter::once(stream));
    let chunked = feed(max_data, &mut stream.chunks(chunk));
    let bytewise = feed(max_data, &mut stream.chunks(1));
    assert_eq!(whole, chunked);
    assert_eq!(whole, bytewise);
    for f in &whole.0 {
        let _ = parse_rsp(&f.data);
        let _ = parse_offers(&f.data);
        let mut out = Vec::new();
        encode(f.txnr, f.command.name(), &f.data, &mut out);
        let mut buf = BytesMut::from(&out[..]);
        let again = Decoder::new(f.data.len()).decode(&mut buf);
        let want = Frame {
            len: f.data.len(),
            ..f.clone()
        };
        assert_eq!(again, Ok(Some(want)));
        assert!(buf.is_empty());
    }
});
