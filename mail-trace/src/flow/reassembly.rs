//! One direction of a TCP connection, reassembled by sequence number.
//!
//! Offsets are `u64` counted from the first byte of the direction (ISN + 1, or the first
//! sequence number seen when the handshake was missed), so wrap-around of the 32-bit
//! sequence space is handled once, in [`Half::rel`], relative to the delivery point.
//!
//! In-order bytes are handed out straight from the segment; only data beyond a hole is copied
//! and held, up to a byte bound. A hole becomes a gap when the caller says so: the peer
//! acknowledged past it ([`Half::skip_to`]), the bound was hit, or the connection ends
//! ([`Half::flush`]).
//!
//! Held bytes keep the capture time of the segment that brought them: handed out later (when
//! the hole is filled or declared), they still say when they crossed the wire, so what a peer
//! sent after a loss is timed as it was sent, not when the hole was given up.
use std::collections::BTreeMap;

use crate::time::Ts;

/// Bookkeeping cost charged per held segment on top of its bytes, so that a flood of empty
/// (fully snaplen-cut) segments is bounded too.
pub const HELD_OVERHEAD: usize = 32;

/// A segment jumping further than this past the delivery point is not believed (a window is
/// at most 1 GiB); it is dropped and reported.
pub const MAX_SEQ_JUMP: u64 = 1 << 30;

/// What a direction hands out, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum Out<'a> {
    /// In-order bytes; with the capture time of their segment when they were held (else they
    /// came with the segment being taken).
    Data(&'a [u8], Option<Ts>),
    /// Bytes that will never be seen.
    Gap(u64),
    /// Bytes that crossed the wire but were deliberately not copied (the kernel sends
    /// encrypted flows header-only): in step, not lost.
    Skipped(u64),
    /// A retransmission carried bytes different from the ones first seen (which were kept).
    Mismatch,
    /// A segment far outside any window was dropped.
    OutOfWindow,
}

/// Bytes held beyond a hole: `data`, then `lost` bytes the capture cut off (or, when
/// `suppressed`, chose not to copy).
#[derive(Debug)]
struct Held {
    data: Vec<u8>,
    lost: u64,
    suppressed: bool,
    /// Capture time of the segment that brought the bytes.
    ts: Ts,
}

impl Held {
    fn len(&self) -> u64 {
        self.data.len() as u64 + self.lost
    }
    fn cost(&self) -> usize {
        self.data.len() + HELD_OVERHEAD
    }
}

/// One direction's reassembly state.
#[derive(Debug, Default)]
pub struct Half {
    /// Sequence number of offset 0; `None` until this direction is first seen.
    base: Option<u32>,
    /// Next offset to hand out.
    next: u64,
    held: BTreeMap<u64, Held>,
    /// Sum of [`Held::cost`].
    buffered: usize,
    /// Offset of the FIN, once seen.
    fin: Option<u64>,
}

impl Half {
    pub fn is_based(&self) -> bool {
        self.base.is_some()
    }

    /// Sets offset 0 at `seq` (only the first call counts).
    pub fn set_base(&mut self, seq: u32) {
        if self.base.is_none() {
            self.base = Some(seq);
        }
    }

    pub fn base(&self) -> Option<u32> {
        self.base
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Bytes are held beyond a hole.
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    pub fn fin(&self) -> Option<u64> {
        self.fin
    }

    /// Everything up to the FIN was handed out.
    pub fn is_done(&self) -> bool {
        self.fin.is_some_and(|f| self.next >= f)
    }

    /// The offset of `seq`, taken as the nearest one to the delivery point (±2 GiB).
    pub fn rel(&self, seq: u32) -> Option<i64> {
        let base = self.base?;
        let at_next = base.wrapping_add(self.next as u32);
        Some(self.next as i64 + i64::from(seq.wrapping_sub(at_next) as i32))
    }

    /// Records a FIN at offset `at` (the first FIN wins; a retransmitted FIN is the same).
    pub fn set_fin(&mut self, at: i64) {
        if self.fin.is_none() && at >= 0 {
            self.fin = Some(at as u64);
        }
    }

    /// Takes a segment whose payload starts at offset `off`: `data` present, `lost` more bytes
    /// cut by the capture. Hands out whatever became deliverable, in order.
    pub fn segment(
        &mut self,
        off: i64,
        data: &[u8],
        lost: u64,
        max_buffer: usize,
        emit: &mut dyn FnMut(Out<'_>),
    ) {
        self.segment_with(off, data, lost, false, 0, max_buffer, emit);
    }

    /// [`Half::segment`], with the `lost` bytes `suppressed` (seen, not copied): they are
    /// handed out as [`Out::Skipped`] instead of [`Out::Gap`]. `ts` is the segment's capture
    /// time, kept with its bytes if they are held.
    #[expect(clippy::too_many_arguments, reason = "one segment's facts")]
    pub fn segment_with(
        &mut self,
        off: i64,
        data: &[u8],
        lost: u64,
        suppressed: bool,
        ts: Ts,
        max_buffer: usize,
        emit: &mut dyn FnMut(Out<'_>),
    ) {
        let seg_len = data.len() as u64 + lost;
        let end = off + seg_len as i64;
        if seg_len == 0 || end <= self.next as i64 {
            return; // nothing new (a pure ACK, or a retransmission of delivered bytes)
        }
        if off > self.next as i64 && off as u64 - self.next > MAX_SEQ_JUMP {
            emit(Out::OutOfWindow);
            return;
        }
        loop {
            if off <= self.next as i64 {
                self.in_order(off, data, lost, suppressed, emit);
                return;
            }
            let off = off as u64;
            let new_cost = data.len() + HELD_OVERHEAD;
            if self.buffered + new_cost <= max_buffer {
                self.hold(off, data, lost, suppressed, ts, emit);
                return;
            }
            // Over the bound: give up on the first hole, which frees the bytes after it.
            let target = self.held.keys().next().copied().unwrap_or(off).min(off);
            self.skip_to(target, emit);
        }
    }

    /// Delivers a segment that starts at or before `next`, interleaving bytes already held
    /// (first seen wins) and draining what becomes contiguous.
    fn in_order(
        &mut self,
        off: i64,
        data: &[u8],
        lost: u64,
        suppressed: bool,
        emit: &mut dyn FnMut(Out<'_>),
    ) {
        let data_end = off + data.len() as i64;
        let end = (data_end + lost as i64) as u64;
        let mut mismatch = false;
        let mut cur = self.next;
        while cur < end {
            let first = self.held.first_key_value().map(|(k, _)| *k);
            match first {
                Some(k) if k <= cur => {
                    let Some((k, h)) = self.held.pop_first() else {
                        break;
                    };
                    self.buffered -= h.cost();
                    // Compare where both the held entry and the segment carry bytes.
                    let lo = cur.max(k) as i64;
                    let hi = ((k + h.data.len() as u64) as i64).min(data_end);
                    if lo < hi {
                        let a = &h.data[(lo - k as i64) as usize..(hi - k as i64) as usize];
                        let b = &data[(lo - off) as usize..(hi - off) as usize];
                        mismatch |= a != b;
                    }
                    self.emit_held(k, &h, emit);
                    cur = self.next;
                }
                _ => {
                    let piece_end = first.map_or(end, |k| k.min(end));
                    let cur_i = cur as i64;
                    if cur_i < data_end {
                        let stop = (piece_end as i64).min(data_end);
                        emit(Out::Data(
                            &data[(cur_i - off) as usize..(stop - off) as usize],
                            None,
                        ));
                    }
                    let lost_from = cur.max(data_end.max(0) as u64);
                    if piece_end > lost_from {
                        let n = piece_end - lost_from;
                        emit(if suppressed {
                            Out::Skipped(n)
                        } else {
                            Out::Gap(n)
                        });
                    }
                    cur = piece_end;
                    self.next = cur;
                }
            }
        }
        if mismatch {
            emit(Out::Mismatch);
        }
        self.drain(emit);
    }

    /// Hands out a held entry from `next` on (it starts at or before `next`).
    fn emit_held(&mut self, k: u64, h: &Held, emit: &mut dyn FnMut(Out<'_>)) {
        let end = k + h.len();
        if end <= self.next {
            return;
        }
        let from = self.next - k;
        let dlen = h.data.len() as u64;
        if from < dlen {
            emit(Out::Data(&h.data[from as usize..], Some(h.ts)));
        }
        if h.lost > 0 {
            let n = end - self.next.max(k + dlen);
            emit(if h.suppressed {
                Out::Skipped(n)
            } else {
                Out::Gap(n)
            });
        }
        self.next = end;
    }

    /// Hands out held entries that now start at or before `next`.
    fn drain(&mut self, emit: &mut dyn FnMut(Out<'_>)) {
        while let Some((&k, _)) = self.held.first_key_value() {
            if k > self.next {
                break;
            }
            let Some((k, h)) = self.held.pop_first() else {
                break;
            };
            self.buffered -= h.cost();
            self.emit_held(k, &h, emit);
        }
    }

    /// Copies the parts of `[off, off+len)` not already held; compares the parts that are.
    fn hold(
        &mut self,
        off: u64,
        data: &[u8],
        lost: u64,
        suppressed: bool,
        ts: Ts,
        emit: &mut dyn FnMut(Out<'_>),
    ) {
        let data_end = off + data.len() as u64;
        let end = data_end + lost;
        let mut mismatch = false;
        let mut cur = off;
        // The entry starting before `off` may cover its beginning.
        let mut pieces: Vec<(u64, u64)> = Vec::new(); // uncovered [from, to)
        let overlapping: Vec<(u64, u64, u64)> = self
            .held
            .range(..end)
            .filter(|(k, h)| **k + h.len() > off)
            .map(|(k, h)| (*k, *k + h.len(), *k + h.data.len() as u64))
            .collect();
        for (k, k_end, k_data_end) in overlapping {
            if k > cur {
                pieces.push((cur, k.min(end)));
            }
            let lo = cur.max(k);
            let hi = k_data_end.min(data_end);
            if lo < hi {
                if let Some(h) = self.held.get(&k) {
                    let a = &h.data[(lo - k) as usize..(hi - k) as usize];
                    let b = &data[(lo - off) as usize..(hi - off) as usize];
                    mismatch |= a != b;
                }
            }
            cur = cur.max(k_end);
        }
        if cur < end {
            pieces.push((cur, end));
        }
        for (from, to) in pieces {
            let d_to = to.min(data_end);
            let bytes = if from < d_to {
                data[(from - off) as usize..(d_to - off) as usize].to_vec()
            } else {
                Vec::new()
            };
            let h = Held {
                lost: to - from - bytes.len() as u64,
                data: bytes,
                suppressed,
                ts,
            };
            self.buffered += h.cost();
            self.held.insert(from, h);
        }
        if mismatch {
            emit(Out::Mismatch);
        }
    }

    /// Declares everything before `target` that is not held a gap, handing out held bytes on
    /// the way, then drains what is contiguous.
    pub fn skip_to(&mut self, target: u64, emit: &mut dyn FnMut(Out<'_>)) {
        while self.next < target {
            match self.held.first_key_value().map(|(k, _)| *k) {
                Some(k) if k <= self.next => self.drain(emit),
                first => {
                    let to = first.map_or(target, |k| k.min(target));
                    emit(Out::Gap(to - self.next));
                    self.next = to;
                }
            }
        }
        self.drain(emit);
    }

    /// At the end of the connection: hands out every held byte, with gaps for the holes, and a
    /// gap up to the FIN if bytes before it never came.
    pub fn flush(&mut self, emit: &mut dyn FnMut(Out<'_>)) {
        let last_held = self.held.last_key_value().map(|(k, h)| *k + h.len());
        let target = last_held.into_iter().chain(self.fin).max();
        if let Some(t) = target {
            self.skip_to(t, emit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        D(Vec<u8>),
        G(u64),
        S(u64),
        M,
        W,
    }

    fn run(h: &mut Half, off: i64, data: &[u8], lost: u64, max: usize) -> Vec<Ev> {
        let mut v = Vec::new();
        h.segment(off, data, lost, max, &mut |o| v.push(ev(o)));
        v
    }

    fn ev(o: Out<'_>) -> Ev {
        match o {
            Out::Data(d, _) => Ev::D(d.to_vec()),
            Out::Gap(n) => Ev::G(n),
            Out::Skipped(n) => Ev::S(n),
            Out::Mismatch => Ev::M,
            Out::OutOfWindow => Ev::W,
        }
    }

    #[test]
    fn suppressed_bytes_are_skipped_in_order_and_when_held() {
        let mut h = Half::default();
        h.set_base(0);
        let mut v = Vec::new();
        h.segment_with(0, b"ab", 8, true, 0, MAX, &mut |o| v.push(ev(o)));
        h.segment_with(20, b"", 5, true, 0, MAX, &mut |o| v.push(ev(o)));
        h.segment_with(10, b"", 10, false, 0, MAX, &mut |o| v.push(ev(o)));
        assert_eq!(v, vec![d("ab"), Ev::S(8), Ev::G(10), Ev::S(5)]);
        assert_eq!((h.next(), h.buffered()), (25, 0));
    }

    fn d(s: &str) -> Ev {
        Ev::D(s.as_bytes().to_vec())
    }

    const MAX: usize = 1 << 20;

    #[test]
    fn held_bytes_keep_their_segments_time() {
        let mut h = Half::default();
        h.set_base(0);
        let v = std::cell::RefCell::new(Vec::new());
        let mut take = |o: Out<'_>| {
            if let Out::Data(d, t) = o {
                v.borrow_mut().push((d.to_vec(), t));
            }
        };
        h.segment_with(6, b"world", 0, false, 20, MAX, &mut take);
        h.segment_with(11, b"!", 0, false, 30, MAX, &mut take);
        h.segment_with(0, b"hello ", 0, false, 40, MAX, &mut take);
        assert_eq!(
            *v.borrow(),
            vec![
                (b"hello ".to_vec(), None),
                (b"world".to_vec(), Some(20)),
                (b"!".to_vec(), Some(30))
            ]
        );
        // Declared lost: the bytes after the hole still say when they came.
        h.segment_with(20, b"late", 0, false, 50, MAX, &mut take);
        h.skip_to(20, &mut take);
        assert_eq!(v.borrow()[3], (b"late".to_vec(), Some(50)));
    }

    #[test]
    fn in_order_is_handed_out_directly() {
        let mut h = Half::default();
        h.set_base(100);
        assert_eq!(run(&mut h, 0, b"EHLO ", 0, MAX), vec![d("EHLO ")]);
        assert_eq!(run(&mut h, 5, b"x\r\n", 0, MAX), vec![d("x\r\n")]);
        assert_eq!(h.next(), 8);
        assert_eq!(h.buffered(), 0);
    }

    #[test]
    fn out_of_order_is_held_then_delivered() {
        let mut h = Half::default();
        h.set_base(0);
        assert_eq!(run(&mut h, 6, b"world", 0, MAX), vec![]);
        assert_eq!(h.buffered(), 5 + HELD_OVERHEAD);
        assert_eq!(
            run(&mut h, 0, b"hello ", 0, MAX),
            vec![d("hello "), d("world")]
        );
        assert_eq!(h.buffered(), 0);
    }

    #[test]
    fn overlaps_are_delivered_once() {
        let mut h = Half::default();
        h.set_base(0);
        assert_eq!(run(&mut h, 0, b"abcd", 0, MAX), vec![d("abcd")]);
        assert_eq!(run(&mut h, 2, b"cdef", 0, MAX), vec![d("ef")]);
        assert_eq!(run(&mut h, 0, b"abcdef", 0, MAX), vec![]);
        // Held pieces overlapping each other.
        assert_eq!(run(&mut h, 8, b"ijk", 0, MAX), vec![]);
        assert_eq!(run(&mut h, 7, b"hijkl", 0, MAX), vec![]);
        assert_eq!(
            run(&mut h, 6, b"gh", 0, MAX),
            vec![d("g"), d("h"), d("ijk"), d("l")]
        );
    }

    #[test]
    fn retransmit_mismatch_keeps_first_seen_bytes() {
        let mut h = Half::default();
        h.set_base(0);
        run(&mut h, 4, b"EFGH", 0, MAX);
        assert_eq!(run(&mut h, 4, b"EXGH", 0, MAX), vec![Ev::M]);
        // The filling segment also disagrees on a held byte: the held one wins.
        assert_eq!(
            run(&mut h, 0, b"ABCDEFGY", 0, MAX),
            vec![d("ABCD"), d("EFGH"), Ev::M]
        );
    }

    #[test]
    fn sequence_wraps() {
        let mut h = Half::default();
        h.set_base(u32::MAX - 2);
        assert_eq!(h.rel(u32::MAX - 2), Some(0));
        assert_eq!(h.rel(1), Some(4));
        assert_eq!(run(&mut h, 0, b"abc", 0, MAX), vec![d("abc")]);
        let off = h.rel(0).unwrap();
        assert_eq!(off, 3);
        assert_eq!(run(&mut h, off, b"def", 0, MAX), vec![d("def")]);
        assert_eq!(h.rel(u32::MAX), Some(2)); // behind: old data
    }

    #[test]
    fn snaplen_cut_becomes_a_gap_after_its_bytes() {
        let mut h = Half::default();
        h.set_base(0);
        assert_eq!(run(&mut h, 0, b"ab", 8, MAX), vec![d("ab"), Ev::G(8)]);
        // Cut segments held out of order keep their gap.
        assert_eq!(run(&mut h, 20, b"uv", 3, MAX), vec![]);
        assert_eq!(
            run(&mut h, 10, b"0123456789", 0, MAX),
            vec![d("0123456789"), d("uv"), Ev::G(3)]
        );
        assert_eq!(h.next(), 25);
    }

    #[test]
    fn skip_to_declares_the_hole() {
        let mut h = Half::default();
        h.set_base(0);
        run(&mut h, 0, b"ab", 0, MAX);
        run(&mut h, 5, b"fg", 0, MAX);
        let mut v = Vec::new();
        h.skip_to(9, &mut |o| v.push(ev(o)));
        assert_eq!(v, vec![Ev::G(3), d("fg"), Ev::G(2)]);
        assert_eq!(h.next(), 9);
    }

    #[test]
    fn the_bound_forces_the_first_hole() {
        let max = 2 * (4 + HELD_OVERHEAD);
        let mut h = Half::default();
        h.set_base(0);
        assert_eq!(run(&mut h, 10, b"kkkk", 0, max), vec![]);
        assert_eq!(run(&mut h, 20, b"uuuu", 0, max), vec![]);
        assert_eq!(run(&mut h, 30, b"EEEE", 0, max), vec![Ev::G(10), d("kkkk")]);
        assert!(h.buffered() <= max);
        let mut v = Vec::new();
        h.flush(&mut |o| v.push(ev(o)));
        assert_eq!(v, vec![Ev::G(6), d("uuuu"), Ev::G(6), d("EEEE")]);
    }

    #[test]
    fn flush_runs_up_to_the_fin() {
        let mut h = Half::default();
        h.set_base(0);
        run(&mut h, 0, b"ab", 0, MAX);
        h.set_fin(6);
        let mut v = Vec::new();
        h.flush(&mut |o| v.push(ev(o)));
        assert_eq!(v, vec![Ev::G(4)]);
        assert!(h.is_done());
    }

    #[test]
    fn far_jumps_are_refused() {
        let mut h = Half::default();
        h.set_base(0);
        assert_eq!(
            run(&mut h, MAX_SEQ_JUMP as i64 + 1, b"x", 0, MAX),
            vec![Ev::W]
        );
        assert_eq!(h.buffered(), 0);
    }
}
