//! The framer (`src/framer.rs`) over arbitrary bytes, fed as the session
//! feeds it (decode until it asks for more, `finish` at end of stream).
//!
//! Input: byte 0 picks framing and oversize policy, byte 1 a small
//! max-frame (1..=64), byte 2 how many chunk lengths follow (0..=15), then
//! those lengths; the rest is the stream. Properties:
//! - fed whole, fed in the chunks the input names, and fed byte by byte,
//!   the events and the error are the same;
//! - they are what a plain reference model of RFC 6587 (below) says;
//! - no frame is longer than max-frame; after "need more" the buffer holds
//!   at most `max_buffer()` bytes; no call loops (events <= bytes fed + 1).
#![no_main]

use auditlb::config::{Framing, Oversize};
use auditlb::framer::{Decoder, Event};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// What one stream decodes to, with the error collapsed to "closed".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    closed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Frame(Vec<u8>),
    Truncated(Vec<u8>),
    Dropped,
}

/// Feeds `chunks` like the session's read loop, checking every step.
fn feed(framing: Framing, max: usize, over: Oversize, chunks: &[&[u8]]) -> (Vec<Event>, bool) {
    let mut dec = Decoder::new(framing, max, over);
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let step = |e: Event, events: &mut Vec<Event>| {
        events.push(e);
        assert!(
            events.len() <= total + 1,
            "more events than bytes: the decoder loops"
        );
    };
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(e)) => step(e, &mut events),
                Ok(None) => {
                    assert!(
                        buf.len() <= dec.max_buffer(),
                        "holds {} bytes after asking for more (bound {})",
                        buf.len(),
                        dec.max_buffer()
                    );
                    break;
                }
                Err(_) => return (events, true),
            }
        }
    }
    loop {
        match dec.finish(&mut buf) {
            Ok(Some(e)) => step(e, &mut events),
            Ok(None) => return (events, false),
            Err(_) => return (events, true),
        }
    }
}

fn outcome(max: usize, (events, closed): (Vec<Event>, bool)) -> Outcome {
    let events = events
        .into_iter()
        .map(|e| match e {
            Event::Frame(f) => {
                assert!(f.len() <= max, "frame of {} > max-frame {max}", f.len());
                Ev::Frame(f.to_vec())
            }
            Event::Truncated { frame, len } => {
                assert_eq!(frame.len(), max, "a truncated frame keeps max-frame bytes");
                assert!(len > max as u64, "truncated at {len} <= max-frame {max}");
                Ev::Truncated(frame.to_vec())
            }
            Event::Dropped { len } => {
                assert!(len > max as u64, "dropped at {len} <= max-frame {max}");
                Ev::Dropped
            }
        })
        .collect();
    Outcome { events, closed }
}

/// What a frame longer than `max` becomes; `None` closes the connection.
fn oversize(frame: &[u8], max: usize, over: Oversize) -> Option<Ev> {
    match over {
        Oversize::Truncate => Some(Ev::Truncated(frame[..max].to_vec())),
        Oversize::Drop => Some(Ev::Dropped),
        Oversize::Close => None,
    }
}

/// LF framing, from the whole stream: lines, one CR before the LF dropped,
/// empty lines skipped, the last line delivered without its LF.
fn reference_lf(input: &[u8], max: usize, over: Oversize) -> Outcome {
    let mut events = Vec::new();
    for line in input.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.len() <= max {
            events.push(Ev::Frame(line.to_vec()));
        } else {
            match oversize(line, max, over) {
                Some(e) => events.push(e),
                None => {
                    return Outcome {
                        events,
                        closed: true,
                    }
                }
            }
        }
    }
    Outcome {
        events,
        closed: false,
    }
}

/// Octet counting, from the whole stream: CR/LF between frames skipped,
/// `LEN SP MSG` with LEN 1-10 digits and no leading zero. A frame cut short
/// by the end of the stream closes with an error, except the skipped tail
/// of an oversize frame (already reported).
fn reference_octet(input: &[u8], max: usize, over: Oversize) -> Outcome {
    let mut events = Vec::new();
    let closed = |events: Vec<Ev>| Outcome {
        events,
        closed: true,
    };
    let mut i = 0;
    loop {
        while i < input.len() && (input[i] == b'\n' || input[i] == b'\r') {
            i += 1;
        }
        if i == input.len() {
            return Outcome {
                events,
                closed: false,
            };
        }
        let digits = input[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || input[i] == b'0' || digits > 10 || input.get(i + digits) != Some(&b' ') {
            return closed(events);
        }
        let len: u64 = std::str::from_utf8(&input[i..i + digits])
            .unwrap()
            .parse()
            .unwrap();
        i += digits + 1;
        let left = (input.len() - i) as u64;
        if len <= max as u64 {
            if left < len {
                return closed(events);
            }
            events.push(Ev::Frame(input[i..i + len as usize].to_vec()));
            i += len as usize;
            continue;
        }
        match over {
            Oversize::Close => return closed(events),
            Oversize::Drop => events.push(Ev::Dropped),
            Oversize::Truncate => {
                if left < max as u64 {
                    return closed(events);
                }
                events.push(oversize(&input[i..], max, over).unwrap());
            }
        }
        if left <= len {
            return Outcome {
                events,
                closed: false,
            };
        }
        i += len as usize;
    }
}

fn reference(framing: Framing, input: &[u8], max: usize, over: Oversize) -> Outcome {
    let octet = match framing {
        Framing::OctetCounted => true,
        Framing::Lf => false,
        Framing::Auto => matches!(input.first(), Some(b'1'..=b'9')),
    };
    if octet {
        reference_octet(input, max, over)
    } else {
        reference_lf(input, max, over)
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, max, nsplit, rest @ ..] = data else {
        return;
    };
    let framing = [Framing::Auto, Framing::OctetCounted, Framing::Lf][usize::from(mode % 3)];
    let over = [Oversize::Truncate, Oversize::Drop, Oversize::Close][usize::from(mode / 3 % 3)];
    let max = usize::from(max % 64) + 1;
    let nsplit = usize::from(nsplit % 16).min(rest.len());
    let (lens, input) = rest.split_at(nsplit);

    let whole = outcome(max, feed(framing, max, over, &[input]));

    // Chunk lengths cycle through `lens`; a 0 feeds nothing new (the
    // decoder is called again on what it has).
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    for &n in lens.iter().cycle().take(input.len() + lens.len()) {
        let n = usize::from(n).min(input.len() - at);
        chunks.push(&input[at..at + n]);
        at += n;
    }
    chunks.push(&input[at..]);
    let split = outcome(max, feed(framing, max, over, &chunks));
    assert_eq!(split, whole, "split at {lens:?} differs from whole");

    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let bbb = outcome(max, feed(framing, max, over, &bytes));
    assert_eq!(bbb, whole, "byte by byte differs from whole");

    let want = reference(framing, input, max, over);
    assert_eq!(whole, want, "decoder differs from the reference model");
});
