//! A RELP server session (`protocol = "relp"` on a listener): the client
//! opens, sends `syslog` commands, and gets one `rsp` per command, in
//! order. A message is answered `rsp 200` only once its frame is durable in
//! the journal under the sync policy, so a SIGKILL of auditlb loses nothing
//! a client was told is safe: what was not answered, the client sends
//! again (at least once; duplicates are the price, as with rsyslog).
//!
//! Reading does not wait for answers: batches are handed to the journal
//! writer as they are read, each with a one-shot for the seq of its last
//! frame, and answered in order as the journal's durable mark passes them.
//! A client's window bounds what is unanswered; auditlb stops reading at
//! [`MAX_UNANSWERED`] whatever the client does.
//!
//! Memory per session: the read buffer (at most the decoder's
//! `max_buffer()`: `max(max-frame, 4KiB)` plus 53 bytes), the unanswered
//! transaction numbers (4 bytes each, at most [`MAX_UNANSWERED`]: 64 KiB)
//! and the response buffer (about 16 bytes per answer).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    flush_with, read_now, record_gap, timeouts, ClientStream, Close, Recheck, BATCH_FRAMES,
};
use crate::config::Oversize;
use crate::frame::{ConnMeta, Frame};
use crate::journal::Refused;
use crate::listener::SessionSettings;
use crate::relp::{self, Command};

/// Most commands read and not yet answered; reading waits beyond it.
pub(crate) const MAX_UNANSWERED: usize = 16 * 1024;
/// Smallest data limit of the decoder, whatever `max-frame`: an `open`'s
/// offers must fit.
const MIN_DATA: usize = 4096;
/// Longest read.
const READ_CHUNK: usize = 64 * 1024;
/// Answer buffer kept between writes; a larger one (after a burst) is let
/// go.
const KEEP_OUT: usize = 64 * 1024;
/// Queue of owed answers kept when empty; a larger one is let go.
const KEEP_OWED: usize = 256;
/// How long a closing session waits for the client to close after its
/// last answer (lingering close).
const LINGER: Duration = Duration::from_secs(1);
/// While stopping: how long what the client already sent is read ...
const DRAIN_READ: Duration = Duration::from_secs(1);
/// ... and how long the answers owed may take in all (well within the
/// default shutdown grace of 10 s, which the backends need too).
const DRAIN_ANSWERS: Duration = Duration::from_secs(3);

/// An answer owed, in command order.
enum Owed {
    /// `rsp` known already (open, a refused command).
    Now {
        txnr: u32,
        code: u16,
        text: &'static str,
        data: Vec<u8>,
    },
    /// Messages handed to the journal: answered once durable.
    Batch { txnrs: Vec<u32>, seq: Waiting },
    /// `close`: answered after everything before it; then the session ends.
    Close { txnr: u32 },
}

enum Waiting {
    /// The writer has not numbered the batch yet.
    Writer(oneshot::Receiver<Result<u64, Refused>>),
    /// The writer's answer.
    Answer(Result<u64, Refused>),
    /// The writer stopped without answering.
    Gone,
}

impl Waiting {
    /// Takes the writer's answer if it is there.
    fn poll_now(&mut self) {
        if let Waiting::Writer(rx) = self {
            match rx.try_recv() {
                Ok(a) => *self = Waiting::Answer(a),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => *self = Waiting::Gone,
            }
        }
    }
}

pub(super) async fn session<S: ClientStream + AsyncWrite>(
    mut stream: S,
    meta: &Arc<ConnMeta>,
    s: &SessionSettings,
    stop: &CancellationToken,
    recheck: &mut Recheck,
) -> Close {
    let mut dec = relp::Decoder::new(s.max_frame.max(MIN_DATA));
    let mut buf = BytesMut::new();
    let mut st = State {
        meta,
        s,
        opened: false,
        owed: VecDeque::new(),
        unanswered: 0,
        batch: Vec::new(),
        txnrs: Vec::new(),
        out: Vec::new(),
        closing: false,
        durable: s.durable.subscribe(),
    };
    let close = st.run(&mut stream, &mut dec, &mut buf, stop, recheck).await;
    // After `close` nothing more is taken: bytes after it are not a cut
    // command.
    // An EOF inside a command cuts it too: RELP has no last frame
    // without its trailer.
    if !st.closing && (close.cuts_a_frame() || matches!(close, Close::Eof)) && dec.in_frame(&buf) {
        // A command cut off: the client sends it again (never answered).
        s.metrics.refused_incomplete.inc();
        record_gap(s, meta, "incomplete").await;
    }
    if matches!(close, Close::Shutdown | Close::Eof) {
        // A lingering close: our side ends (FIN, after close_notify over
        // TLS), then what the client still sends is read and dropped (it
        // was not answered; the client sends it again) until it closes
        // too. Closing with unread data would reset the connection, and a
        // reset makes the client's kernel drop the answers (and the
        // serverclose) it has not read yet.
        let _ = tokio::time::timeout(LINGER, async {
            stream.shutdown().await?;
            loop {
                buf.clear();
                if stream.read_some(&mut buf, READ_CHUNK).await? == 0 {
                    return Ok::<(), io::Error>(());
                }
            }
        })
        .await;
    }
    close
}

struct State<'a> {
    meta: &'a Arc<ConnMeta>,
    s: &'a SessionSettings,
    opened: bool,
    owed: VecDeque<Owed>,
    /// Commands read and not yet answered.
    unanswered: usize,
    /// Messages read, not yet handed to the writer, and their txnrs.
    batch: Vec<Frame>,
    txnrs: Vec<u32>,
    /// Answers encoded and not yet written.
    out: Vec<u8>,
    /// `close` received: nothing more is read.
    closing: bool,
    durable: tokio::sync::watch::Receiver<u64>,
}

/// What a read brought.
enum Step {
    Read(io::Result<usize>),
    Answered,
}

impl State<'_> {
    async fn run<S: ClientStream + AsyncWrite>(
        &mut self,
        stream: &mut S,
        dec: &mut relp::Decoder,
        buf: &mut BytesMut,
        stop: &CancellationToken,
        recheck: &mut Recheck,
    ) -> Close {
        let s = self.s;
        // Last read or answer written: the idle timeout counts from here.
        let mut last_active = Instant::now();
        let mut partial_since: Option<Instant> = None;
        let mut draining: Option<Instant> = None;
        // While stopping: what the client had already sent is read.
        let mut input_done = false;
        // The client half-closed: what it is owed is still answered.
        let mut eof = false;
        loop {
            // Every whole command read so far, up to the cap.
            let mut completed = false;
            // Decoding stopped at the cap: whole commands may still be in
            // `buf`, to be decoded (not read past) once answers make room.
            let mut capped = false;
            while !self.closing {
                if self.unanswered >= MAX_UNANSWERED {
                    capped = !buf.is_empty();
                    break;
                }
                match dec.decode(buf) {
                    Ok(Some(f)) => {
                        completed = true;
                        if let Err(close) = self.command(f).await {
                            // What is due now, and the answer that goes
                            // with a refusal (an open refused with 500),
                            // are sent first.
                            let _ = self.answer();
                            self.write_out(stream).await;
                            return close;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let close = self.malformed(format!("RELP: {e} ({})", e.reason())).await;
                        let _ = self.answer();
                        self.write_out(stream).await;
                        return close;
                    }
                }
            }
            if !self.hand_over().await {
                return Close::Downstream;
            }
            // Answers whose turn has come.
            let end = match self.answer() {
                Ok(end) => end,
                Err(close) => return close,
            };
            if !self.out.is_empty() {
                if let Err(close) = self.write_answers(stream, stop, &mut draining).await {
                    return close;
                }
                last_active = Instant::now();
            }
            if capped && self.unanswered < MAX_UNANSWERED {
                // Room again: what is buffered is decoded before anything
                // is read or the session is taken as over.
                continue;
            }
            if end || (eof && !capped && self.owed.is_empty()) {
                // The client's `close` is answered, or it half-closed and
                // has every answer: the session is over.
                return Close::Eof;
            }
            if let Some(since) = draining {
                // Stopping: what was read is answered (or the wait ran
                // out), then the client is told the server closes.
                let quiet = (input_done || self.closing || eof) && !capped;
                if (quiet && self.owed.is_empty()) || since.elapsed() >= DRAIN_ANSWERS {
                    let mut hint = Vec::new();
                    relp::encode(0, "serverclose", b"", &mut hint);
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        stream.write_all(&hint).await?;
                        stream.flush().await
                    })
                    .await;
                    return Close::Shutdown;
                }
            }
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
            if draining.is_some_and(|t| t.elapsed() >= DRAIN_READ) {
                // A client that keeps sending is not read for ever.
                input_done = true;
            }
            let may_read =
                !self.closing && !eof && !input_done && !capped && self.unanswered < MAX_UNANSWERED;
            // A frame is timed only while it is being read: not while
            // reading waits for answers (a blocked journal).
            let deadline;
            (partial_since, deadline) = timeouts(
                s,
                may_read && dec.in_frame(buf),
                completed,
                partial_since,
                last_active,
            );
            let owing = !self.owed.is_empty();
            let step = if draining.is_some() {
                if may_read {
                    match read_now(stream, buf, READ_CHUNK).await {
                        Some(r) => Step::Read(r),
                        None => {
                            input_done = true;
                            Step::Answered
                        }
                    }
                } else {
                    self.wait_answer(DRAIN_ANSWERS / 10).await;
                    Step::Answered
                }
            } else {
                tokio::select! {
                    _ = stop.cancelled() => {
                        draining = Some(Instant::now());
                        continue;
                    }
                    _ = recheck.changed() => {
                        if let Err(why) = recheck.check() {
                            return Close::Revalidation(why);
                        }
                        continue;
                    }
                    // Idle only when nothing is owed: an answer waits on
                    // the journal.
                    _ = tokio::time::sleep_until(deadline), if !owing || partial_since.is_some() => {
                        return if partial_since.is_some_and(|t| t + s.frame_timeout <= Instant::now()) {
                            Close::FrameTimeout
                        } else {
                            Close::Idle
                        };
                    }
                    _ = self.wait_answer(Duration::MAX), if owing => Step::Answered,
                    r = stream.read_some(buf, READ_CHUNK), if may_read => Step::Read(r),
                }
            };
            match step {
                Step::Answered => {}
                Step::Read(Ok(0)) => {
                    // The client sends no more: what it is owed is still
                    // answered (a client may half-close and read them).
                    // What it sent and was not answered it sends again.
                    if self.owed.is_empty() {
                        return Close::Eof;
                    }
                    eof = true;
                }
                Step::Read(Ok(n)) => {
                    s.metrics.bytes_in.inc_by(n as u64);
                    last_active = Instant::now();
                }
                Step::Read(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    if self.owed.is_empty() {
                        return Close::Eof;
                    }
                    eof = true;
                }
                Step::Read(Err(e)) => return Close::Error(e),
            }
        }
    }

    /// Writes the answers encoded, within `idle-timeout` (a client that
    /// does not take them is cut off); a stop during the write, or one
    /// already under way, bounds it by what is left of [`DRAIN_ANSWERS`].
    async fn write_answers<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        stop: &CancellationToken,
        draining: &mut Option<Instant>,
    ) -> Result<(), Close> {
        let s = self.s;
        let mut out = std::mem::take(&mut self.out);
        let w = async {
            stream.write_all(&out).await?;
            stream.flush().await
        };
        tokio::pin!(w);
        let first = match *draining {
            Some(_) => None,
            None => tokio::select! {
                r = tokio::time::timeout(s.idle_timeout, &mut w) => Some(r),
                _ = stop.cancelled() => None,
            },
        };
        let r = match first {
            Some(Ok(r)) => r,
            Some(Err(_)) => {
                return Err(Close::Error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("answers not taken within {:?}", s.idle_timeout),
                )))
            }
            None => {
                let since = *draining.get_or_insert_with(Instant::now);
                match tokio::time::timeout(DRAIN_ANSWERS.saturating_sub(since.elapsed()), &mut w)
                    .await
                {
                    Ok(r) => r,
                    // Stopping, and the client does not take its answers.
                    Err(_) => return Err(Close::Shutdown),
                }
            }
        };
        r.map_err(Close::Error)?;
        out.clear();
        // A burst's buffer is not kept for the life of the session.
        if out.capacity() <= KEEP_OUT {
            self.out = out;
        }
        Ok(())
    }

    /// Takes one command.
    async fn command(&mut self, f: relp::Frame) -> Result<(), Close> {
        let s = self.s;
        tracing::trace!(
            txnr = f.txnr,
            command = f.command.name(),
            len = f.len,
            "RELP command"
        );
        if !self.opened && f.command != Command::Open {
            return Err(self
                .malformed(format!(
                    "RELP: the first command must be open, not {:?}",
                    f.command.name()
                ))
                .await);
        }
        match f.command {
            Command::Open => {
                if self.opened {
                    return Err(self.malformed("RELP: a second open".into()).await);
                }
                if !relp::offers_syslog(&f.data) {
                    relp::encode_rsp(
                        f.txnr,
                        500,
                        "auditlb takes only the syslog command",
                        b"",
                        &mut self.out,
                    );
                    s.metrics.relp_nack("command", 1);
                    return Err(self
                        .malformed("RELP: the client does not offer the syslog command".into())
                        .await);
                }
                self.opened = true;
                s.metrics.relp_sessions.inc();
                self.owe(Owed::Now {
                    txnr: f.txnr,
                    code: 200,
                    text: "OK",
                    data: relp::offers(),
                });
            }
            Command::Syslog if f.len == 0 => {
                // An empty message carries nothing to record or route (the
                // syslog framer skips empty lines too): answered in its
                // turn, after the messages read before it.
                if !self.hand_over().await {
                    return Err(Close::Downstream);
                }
                s.metrics.relp_acks.inc();
                self.owe(Owed::Now {
                    txnr: f.txnr,
                    code: 200,
                    text: "OK",
                    data: Vec::new(),
                });
            }
            Command::Syslog => {
                let mut data: Bytes = f.data.clone();
                if f.len > s.max_frame {
                    match s.oversize {
                        Oversize::Truncate => {
                            data.truncate(s.max_frame);
                            s.metrics.truncated.inc();
                            if let Some(skipped) = s.warn_limit.allow() {
                                tracing::warn!(listener = %s.name, client = %self.meta.peer, len = f.len, max_frame = s.max_frame, skipped, "RELP message truncated to max-frame");
                            }
                        }
                        Oversize::Drop => {
                            if !self.hand_over().await {
                                return Err(Close::Downstream);
                            }
                            s.metrics.refused_oversize.inc();
                            s.metrics.relp_nack("oversize", 1);
                            record_gap(s, self.meta, "oversize").await;
                            if let Some(skipped) = s.warn_limit.allow() {
                                tracing::warn!(listener = %s.name, client = %self.meta.peer, len = f.len, max_frame = s.max_frame, skipped, "oversize RELP message refused");
                            }
                            self.owe(Owed::Now {
                                txnr: f.txnr,
                                code: 500,
                                text: "message longer than max-frame",
                                data: Vec::new(),
                            });
                            return Ok(());
                        }
                        Oversize::Close => {
                            if !self.hand_over().await {
                                return Err(Close::Downstream);
                            }
                            s.metrics.refused_oversize.inc();
                            record_gap(s, self.meta, "oversize").await;
                            return Err(Close::Oversize(format!(
                                "RELP message of {} bytes is over max-frame {}",
                                f.len, s.max_frame
                            )));
                        }
                    }
                }
                self.batch.push(Frame::new(data, self.meta.clone()));
                self.txnrs.push(f.txnr);
                self.unanswered += 1;
                if self.batch.len() >= BATCH_FRAMES && !self.hand_over().await {
                    return Err(Close::Downstream);
                }
            }
            Command::Close => {
                if !self.hand_over().await {
                    return Err(Close::Downstream);
                }
                self.closing = true;
                self.owe(Owed::Close { txnr: f.txnr });
            }
            Command::Rsp | Command::ServerClose => {
                return Err(self
                    .malformed(format!("RELP: a client sent {}", f.command.name()))
                    .await);
            }
            Command::Other(_) => {
                if !self.hand_over().await {
                    return Err(Close::Downstream);
                }
                s.metrics.relp_nack("command", 1);
                self.owe(Owed::Now {
                    txnr: f.txnr,
                    code: 500,
                    text: "command not supported",
                    data: Vec::new(),
                });
            }
        }
        Ok(())
    }

    /// Writes the answers encoded so far, briefly (the session is ending).
    async fn write_out<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) {
        if self.out.is_empty() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        })
        .await;
        self.out.clear();
    }

    fn owe(&mut self, o: Owed) {
        if !matches!(o, Owed::Batch { .. }) {
            self.unanswered += 1;
        }
        self.owed.push_back(o);
    }

    /// A protocol error: what was read before it is journaled, the error is
    /// counted and recorded, and the session ends.
    async fn malformed(&mut self, why: String) -> Close {
        if !self.hand_over().await {
            return Close::Downstream;
        }
        self.s.metrics.refused_malformed.inc();
        record_gap(self.s, self.meta, "malformed").await;
        Close::Malformed(why)
    }

    /// Hands the messages read to the journal writer, asking for their
    /// seq. False when the writer is gone.
    async fn hand_over(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        if !flush_with(&mut self.batch, self.s, Some(tx)).await {
            return false;
        }
        self.owed.push_back(Owed::Batch {
            txnrs: std::mem::take(&mut self.txnrs),
            seq: Waiting::Writer(rx),
        });
        true
    }

    /// Encodes every answer whose turn has come. `Ok(true)` once `close`
    /// is answered.
    fn answer(&mut self) -> Result<bool, Close> {
        let s = self.s;
        let durable = *self.durable.borrow_and_update();
        while let Some(front) = self.owed.front_mut() {
            match front {
                Owed::Now {
                    txnr,
                    code,
                    text,
                    data,
                } => {
                    relp::encode_rsp(*txnr, *code, text, data, &mut self.out);
                    self.unanswered -= 1;
                }
                Owed::Close { txnr } => {
                    // As librelp's server answers: an empty rsp, then the
                    // serverclose hint.
                    relp::encode(*txnr, "rsp", b"", &mut self.out);
                    relp::encode(0, "serverclose", b"", &mut self.out);
                    self.unanswered -= 1;
                    self.owed.pop_front();
                    return Ok(true);
                }
                Owed::Batch { txnrs, seq } => {
                    seq.poll_now();
                    match seq {
                        Waiting::Writer(_) => break,
                        Waiting::Gone => return Err(Close::Downstream),
                        Waiting::Answer(Err(why)) => {
                            for &t in txnrs.iter() {
                                relp::encode_rsp(t, 500, "journal full", b"", &mut self.out);
                            }
                            s.metrics.relp_nack(why.label(), txnrs.len() as u64);
                        }
                        Waiting::Answer(Ok(last)) => {
                            if *last > durable {
                                break;
                            }
                            for &t in txnrs.iter() {
                                relp::encode_rsp(t, 200, "OK", b"", &mut self.out);
                            }
                            s.metrics.relp_acks.inc_by(txnrs.len() as u64);
                        }
                    }
                    self.unanswered -= txnrs.len();
                }
            }
            self.owed.pop_front();
        }
        if self.owed.is_empty() && self.owed.capacity() > KEEP_OWED {
            self.owed = VecDeque::new();
        }
        Ok(false)
    }

    /// Waits until the first answer owed may have become ready (the
    /// writer numbered its batch, or the durable mark moved), at most
    /// `limit`.
    async fn wait_answer(&mut self, limit: Duration) {
        let wait = async {
            match self.owed.front_mut() {
                Some(Owed::Batch { seq, .. }) if matches!(seq, Waiting::Writer(_)) => {
                    let Waiting::Writer(rx) = seq else {
                        unreachable!("matched")
                    };
                    // Kept in the same poll that takes it: a cancelled
                    // wait leaves it in the channel.
                    *seq = match rx.await {
                        Ok(a) => Waiting::Answer(a),
                        Err(_) => Waiting::Gone,
                    };
                }
                Some(Owed::Batch { .. }) => {
                    let _ = self.durable.changed().await;
                }
                // Answerable now.
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        };
        let _ = tokio::time::timeout(limit.min(Duration::from_secs(3600)), wait).await;
    }
}
