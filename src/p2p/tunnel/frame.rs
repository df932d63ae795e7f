//! The tunnel's wire, sans-IO: one message of the pipe is one frame, and the stream
//! table that decides what a frame from the peer may do.
//!
//! ```text
//! frame = stream id (u32, big-endian) | kind (u8) | payload
//! kind  = 1 open | 2 data | 3 fin | 4 reset
//! ```
//!
//! `open`, `fin` and `reset` carry no payload; `data` carries 1 to [`MAX_DATA`] bytes.
//! Stream ids are chosen by the entrance alone, from 1 upwards, each larger than the
//! last, so a late frame of a finished stream is never taken for a new stream's.

use std::collections::{HashMap, HashSet};

/// The bytes before a frame's payload: the stream id and the kind.
pub const HEADER: usize = 5;

/// The most payload bytes in one data frame.
pub const MAX_DATA: usize = 60 * 1024;

/// The largest frame.
pub const MAX_FRAME: usize = HEADER + MAX_DATA;

/// What a frame does to its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new stream (entrance to exit only).
    Open = 1,
    /// Bytes of the stream.
    Data = 2,
    /// The sender sends no more on this stream (a TCP half-close).
    Fin = 3,
    /// The stream is over at once, both ways.
    Reset = 4,
}

/// One frame, borrowing its payload from the message it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The stream, never 0.
    pub stream: u32,
    /// What it does.
    pub kind: Kind,
    /// The bytes of a data frame; empty for the other kinds.
    pub payload: &'a [u8],
}

/// Why a frame is refused; the tunnel ends with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("a frame of {0} bytes is shorter than its header")]
    Short(usize),
    /// Stream 0 is no stream.
    #[error("stream id 0")]
    ZeroStream,
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A payload on a frame that carries none.
    #[error("a {0:?} frame with a payload")]
    Payload(Kind),
    /// A data frame without bytes.
    #[error("an empty data frame")]
    EmptyData,
    /// A data frame over [`MAX_DATA`].
    #[error("a data frame of {0} bytes is over the limit of {MAX_DATA}")]
    TooLarge(usize),
}

impl Frame<'_> {
    /// Parses one whole message. Every length is checked before anything else is done
    /// with it; nothing is allocated.
    ///
    /// # Errors
    ///
    /// A short message, stream 0, an unknown kind, a payload where none belongs, an
    /// empty or oversized data frame.
    pub fn parse(msg: &[u8]) -> Result<Frame<'_>, FrameError> {
        if msg.len() < HEADER {
            return Err(FrameError::Short(msg.len()));
        }
        if msg.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(msg.len() - HEADER));
        }
        let stream = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]);
        if stream == 0 {
            return Err(FrameError::ZeroStream);
        }
        let kind = match msg[4] {
            1 => Kind::Open,
            2 => Kind::Data,
            3 => Kind::Fin,
            4 => Kind::Reset,
            k => return Err(FrameError::UnknownKind(k)),
        };
        let payload = &msg[HEADER..];
        match kind {
            Kind::Data if payload.is_empty() => return Err(FrameError::EmptyData),
            Kind::Data => {}
            _ if !payload.is_empty() => return Err(FrameError::Payload(kind)),
            _ => {}
        }
        Ok(Frame {
            stream,
            kind,
            payload,
        })
    }
}

/// The header of a frame of `kind` on `stream`; the payload (for data) follows it.
pub fn header(stream: u32, kind: Kind) -> [u8; HEADER] {
    let id = stream.to_be_bytes();
    [id[0], id[1], id[2], id[3], kind as u8]
}

/// Which end of the tunnel a table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams (the local listener's side).
    Entrance,
    /// Takes streams and connects each to its target.
    Exit,
}

/// What to do with a frame from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Hand it to the stream's task.
    Deliver,
    /// A new stream from the peer: start it (exit only).
    Start,
    /// A new stream over the limit: answer with a reset, start nothing.
    Refuse,
    /// A late frame of a stream that is over here: drop it.
    Ignore,
}

/// A frame that breaks the rules of the stream table; the tunnel ends with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The frame did not parse.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The exit side opened a stream.
    #[error("the exit side may not open streams (stream {0})")]
    OpenFromExit(u32),
    /// An open for an id not above every id seen before.
    #[error("stream {0} opened again or out of order")]
    Reopened(u32),
    /// A frame for a stream never opened.
    #[error("a frame for stream {0}, which was never opened")]
    Unopened(u32),
    /// Data or a second fin on a stream the peer has finished.
    #[error("data on stream {0} after the peer's fin")]
    AfterFin(u32),
}

/// The open streams of one tunnel end, each with the driver's handle `T`, and the
/// rules of [`Route`]. Sans-IO: the driver carries its answers out.
#[derive(Debug)]
pub struct Table<T> {
    role: Role,
    max: usize,
    /// The highest id opened (or refused) so far.
    last: u32,
    open: HashMap<u32, T>,
    /// The open streams the peer has finished (sent its fin on).
    finished: HashSet<u32>,
}

impl<T> Table<T> {
    /// An empty table of at most `max` open streams.
    pub fn new(role: Role, max: usize) -> Self {
        Table {
            role,
            max,
            last: 0,
            open: HashMap::new(),
            finished: HashSet::new(),
        }
    }

    /// How many streams are open.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }

    /// The entrance opens a stream: its id (record it with [`insert`](Self::insert)
    /// before routing another frame), or `None` when the table is full or the ids are
    /// used up.
    pub fn open_local(&mut self) -> Option<u32> {
        debug_assert_eq!(self.role, Role::Entrance);
        if self.open.len() >= self.max || self.last == u32::MAX {
            return None;
        }
        self.last += 1;
        Some(self.last)
    }

    /// Decides what a frame from the peer does.
    ///
    /// # Errors
    ///
    /// A frame that breaks the rules: the tunnel must end.
    pub fn route(&mut self, frame: &Frame<'_>) -> Result<Route, TableError> {
        let id = frame.stream;
        if frame.kind == Kind::Open {
            if self.role == Role::Entrance {
                return Err(TableError::OpenFromExit(id));
            }
            if id <= self.last {
                return Err(TableError::Reopened(id));
            }
            self.last = id;
            return Ok(if self.open.len() >= self.max {
                Route::Refuse
            } else {
                Route::Start
            });
        }
        if id > self.last {
            return Err(TableError::Unopened(id));
        }
        if !self.open.contains_key(&id) {
            return Ok(Route::Ignore);
        }
        match frame.kind {
            Kind::Data | Kind::Fin if self.finished.contains(&id) => Err(TableError::AfterFin(id)),
            Kind::Fin => {
                self.finished.insert(id);
                Ok(Route::Deliver)
            }
            _ => Ok(Route::Deliver),
        }
    }

    /// Records a stream started after [`Route::Start`].
    pub fn insert(&mut self, id: u32, handle: T) {
        self.open.insert(id, handle);
    }

    /// The handle of an open stream.
    pub fn get(&self, id: u32) -> Option<&T> {
        self.open.get(&id)
    }

    /// The stream is over here: later frames for it are ignored.
    pub fn remove(&mut self, id: u32) -> Option<T> {
        self.finished.remove(&id);
        self.open.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(stream: u32, kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut v = header(stream, kind).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn every_kind_round_trips() {
        let data = vec![7u8; MAX_DATA];
        for (stream, kind, payload) in [
            (1, Kind::Open, &[][..]),
            (u32::MAX, Kind::Data, &b"x"[..]),
            (9, Kind::Data, &data[..]),
            (2, Kind::Fin, &[][..]),
            (3, Kind::Reset, &[][..]),
        ] {
            let wire = emit(stream, kind, payload);
            assert_eq!(
                Frame::parse(&wire),
                Ok(Frame {
                    stream,
                    kind,
                    payload
                })
            );
        }
    }

    #[test]
    fn every_cut_of_every_frame_is_refused_or_is_a_shorter_valid_data_frame() {
        for wire in [
            emit(1, Kind::Open, &[]),
            emit(5, Kind::Fin, &[]),
            emit(6, Kind::Reset, &[]),
            emit(7, Kind::Data, b"hello"),
        ] {
            for cut in 0..wire.len() {
                let got = Frame::parse(&wire[..cut]);
                if cut < HEADER {
                    assert_eq!(got, Err(FrameError::Short(cut)));
                } else if cut == HEADER {
                    // Only a data frame's payload can be cut, leaving it empty.
                    assert_eq!(got, Err(FrameError::EmptyData));
                } else {
                    assert_eq!(got.unwrap().payload, &wire[HEADER..cut]);
                }
            }
        }
    }

    #[test]
    fn bounds_and_bad_fields_are_refused() {
        let over = emit(1, Kind::Data, &vec![0; MAX_DATA + 1]);
        assert_eq!(Frame::parse(&over), Err(FrameError::TooLarge(MAX_DATA + 1)));
        assert_eq!(
            Frame::parse(&emit(0, Kind::Fin, &[])),
            Err(FrameError::ZeroStream)
        );
        let mut bad = emit(1, Kind::Fin, &[]);
        bad[4] = 9;
        assert_eq!(Frame::parse(&bad), Err(FrameError::UnknownKind(9)));
        bad[4] = 0;
        assert_eq!(Frame::parse(&bad), Err(FrameError::UnknownKind(0)));
        for kind in [Kind::Open, Kind::Fin, Kind::Reset] {
            assert_eq!(
                Frame::parse(&emit(1, kind, b"!")),
                Err(FrameError::Payload(kind))
            );
        }
    }

    fn frame(stream: u32, kind: Kind) -> Frame<'static> {
        Frame {
            stream,
            kind,
            payload: if kind == Kind::Data { b"x" } else { b"" },
        }
    }

    #[test]
    fn the_exit_starts_streams_in_order_up_to_its_limit_then_refuses() {
        let mut t: Table<()> = Table::new(Role::Exit, 2);
        assert_eq!(t.route(&frame(1, Kind::Open)), Ok(Route::Start));
        t.insert(1, ());
        assert_eq!(t.route(&frame(3, Kind::Open)), Ok(Route::Start));
        t.insert(3, ());
        assert_eq!(t.route(&frame(4, Kind::Open)), Ok(Route::Refuse));
        // A refused id is used up: data for it is late, not unopened.
        assert_eq!(t.route(&frame(4, Kind::Data)), Ok(Route::Ignore));
        assert_eq!(t.route(&frame(3, Kind::Open)), Err(TableError::Reopened(3)));
        assert_eq!(t.route(&frame(2, Kind::Open)), Err(TableError::Reopened(2)));
        assert_eq!(t.route(&frame(1, Kind::Data)), Ok(Route::Deliver));
        assert_eq!(t.route(&frame(9, Kind::Fin)), Err(TableError::Unopened(9)));
        t.remove(1);
        assert_eq!(t.route(&frame(1, Kind::Data)), Ok(Route::Ignore));
        assert_eq!(t.route(&frame(5, Kind::Open)), Ok(Route::Start));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn data_or_a_second_fin_after_the_peers_fin_breaks_the_rules_but_a_reset_does_not() {
        let mut t: Table<()> = Table::new(Role::Exit, 4);
        for id in [1, 2] {
            assert_eq!(t.route(&frame(id, Kind::Open)), Ok(Route::Start));
            t.insert(id, ());
        }
        assert_eq!(t.route(&frame(1, Kind::Fin)), Ok(Route::Deliver));
        assert_eq!(t.route(&frame(1, Kind::Data)), Err(TableError::AfterFin(1)));
        assert_eq!(t.route(&frame(1, Kind::Fin)), Err(TableError::AfterFin(1)));
        assert_eq!(t.route(&frame(1, Kind::Reset)), Ok(Route::Deliver));
        // The other stream is untouched, and a finished stream's late frames, once it
        // is over here, are only late.
        assert_eq!(t.route(&frame(2, Kind::Data)), Ok(Route::Deliver));
        t.remove(1);
        assert_eq!(t.route(&frame(1, Kind::Data)), Ok(Route::Ignore));
        assert!(t.finished.is_empty());
    }

    #[test]
    fn the_entrance_numbers_its_streams_and_refuses_opens_from_the_exit() {
        let mut t: Table<u8> = Table::new(Role::Entrance, 2);
        for id in [1, 2] {
            assert_eq!(t.open_local(), Some(id));
            t.insert(id, id as u8);
        }
        assert_eq!(t.open_local(), None);
        assert_eq!(
            t.route(&frame(3, Kind::Open)),
            Err(TableError::OpenFromExit(3))
        );
        assert_eq!(t.route(&frame(2, Kind::Reset)), Ok(Route::Deliver));
        assert_eq!(t.remove(2), Some(2));
        assert_eq!(t.route(&frame(2, Kind::Data)), Ok(Route::Ignore));
        assert_eq!(t.route(&frame(3, Kind::Data)), Err(TableError::Unopened(3)));
        assert_eq!(t.open_local(), Some(3));
    }
}
