//! Body types. `ReqBody` carries a client's request body to an instance and keeps what it sent,
//! up to the replay limit in memory and past it in a spill file ([`super::spill`]), so a retry
//! or replay can send it again; the rest of the client's body stays unread until someone asks
//! for it. `RespBody` carries a response to the client and
//! returns the instance connection to its pool when the body ends.

use super::h2body::RecvBody;
use super::inbound::Inbound;
use super::spill::{Spill, SpillStore};
use crate::instance::http1::H1Body;
use crate::pooled::Pooled;
use anyedge_telemetry::{AppMetrics, Direction};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body is over the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the body failed: {0}")]
    Read(Box<dyn std::error::Error + Send + Sync>),
    #[error("the request went to another instance; this copy stops")]
    Superseded,
    #[error("the kept body could not be read back from its spill file: {0}")]
    Spill(std::io::Error),
}

/// The recording shared by a body and its replays.
struct Recording<B> {
    rest: Option<B>,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    recorded: usize,
    limit: usize,
    overflowed: bool,
    done: bool,
    received: u64,
    max_body: u64,
    too_large: bool,
    /// Which copy may read on: older copies (an attempt whose answer was a replay, or that
    /// failed) stop, so they neither steal the client's chunks nor its wake-ups.
    generation: u64,
    /// Where the body past `limit` goes (`[http] replay_spill_dir`), when the node keeps
    /// such bodies; its file once the body went past `limit` (the bytes after `chunks`).
    store: Option<&'static SpillStore>,
    spill: Option<Spill>,
}

/// A client's request body, from whichever server read its head: our HTTP/2 server's (clients
/// and edges: an `h2` stream, [`RecvBody`]), our HTTP/1.1 server's ([`Inbound`]), or hyper's
/// (tests that serve with hyper).
pub(crate) enum ClientBody {
    /// No body (our server's requests without one).
    Empty,
    Hyper(Incoming),
    Inbound(Inbound),
    H2(RecvBody),
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> ClientBody {
        ClientBody::Hyper(body)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Inbound(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Inbound(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Inbound(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// A request body on its way to an instance. `B` is the client's body ([`ClientBody`]).
pub(crate) enum ReqBody<B = ClientBody> {
    Empty,
    Replay(ReplayBody<B>),
}

pub(crate) struct ReplayBody<B> {
    shared: Arc<Mutex<Recording<B>>>,
    /// Next recorded chunk this copy sends.
    pos: usize,
    /// Next byte of the spill file this copy sends.
    file_pos: u64,
    trailers_sent: bool,
    metrics: Arc<AppMetrics>,
    /// The recording's generation when this copy was made.
    generation: u64,
}

impl<B> ReqBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Wrap a client's body. `max_body` 0 is no limit.
    pub fn new(body: B, replay_limit: usize, max_body: u64, metrics: Arc<AppMetrics>) -> Self {
        Self::spilling(body, replay_limit, max_body, metrics, None)
    }

    /// Like [`Self::new`], keeping what goes past `replay_limit` in a file of `store`.
    pub fn spilling(
        body: B,
        replay_limit: usize,
        max_body: u64,
        metrics: Arc<AppMetrics>,
        store: Option<&'static SpillStore>,
    ) -> Self {
        if body.is_end_stream() {
            return Self::Empty;
        }
        Self::Replay(ReplayBody {
            shared: Arc::new(Mutex::new(Recording {
                rest: Some(body),
                chunks: Vec::new(),
                trailers: None,
                recorded: 0,
                limit: replay_limit,
                overflowed: false,
                done: false,
                received: 0,
                max_body,
                too_large: false,
                generation: 0,
                store,
                spill: None,
            })),
            pos: 0,
            file_pos: 0,
            trailers_sent: false,
            metrics,
            generation: 0,
        })
    }

    /// The copy for the next attempt at sending the request: like [`Self::replay`], and every
    /// older copy stops reading (its next poll is an error, which ends that send).
    pub fn next_attempt(&self) -> Option<ReqBody<B>> {
        match self {
            Self::Empty => Some(Self::Empty),
            Self::Replay(b) => {
                let mut rec = b.shared.lock().unwrap_or_else(PoisonError::into_inner);
                if rec.overflowed {
                    return None;
                }
                rec.generation += 1;
                Some(Self::Replay(ReplayBody {
                    shared: b.shared.clone(),
                    pos: 0,
                    file_pos: 0,
                    trailers_sent: false,
                    metrics: b.metrics.clone(),
                    generation: rec.generation,
                }))
            }
        }
    }

    /// The request has its answer: nothing will send the body again, so what is kept goes
    /// (memory and spill file), and the rest of the body, still streaming to the instance
    /// that answered, is no longer kept.
    pub fn stop_keeping(&self) {
        if let Self::Replay(b) = self {
            let mut rec = b.shared.lock().unwrap_or_else(PoisonError::into_inner);
            if !rec.overflowed && (rec.spill.is_some() || !rec.done) {
                rec.overflow("answered");
            }
        }
    }

    /// A copy that sends the body again from the start, or `None` when more than the replay
    /// limit was already read (those bytes are gone).
    pub fn replay(&self) -> Option<ReqBody<B>> {
        match self {
            Self::Empty => Some(Self::Empty),
            Self::Replay(b) => {
                let rec = b.shared.lock().unwrap_or_else(PoisonError::into_inner);
                (!rec.overflowed).then(|| {
                    Self::Replay(ReplayBody {
                        shared: b.shared.clone(),
                        pos: 0,
                        file_pos: 0,
                        trailers_sent: false,
                        metrics: b.metrics.clone(),
                        generation: rec.generation,
                    })
                })
            }
        }
    }
}

impl<B> Body for ReqBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Replay(b) => b.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Replay(b) => {
                let rec = b.shared.lock().unwrap_or_else(PoisonError::into_inner);
                rec.done
                    && b.pos >= rec.chunks.len()
                    && b.file_pos >= rec.spill.as_ref().map_or(0, Spill::len)
                    && (b.trailers_sent || rec.trailers.is_none())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Replay(b) => {
                let rec = b.shared.lock().unwrap_or_else(PoisonError::into_inner);
                match (&rec.rest, b.pos + b.file_pos as usize, rec.recorded) {
                    // A first copy that has sent nothing yet is exactly the client's body.
                    (Some(rest), 0, 0) if rec.spill.is_none() => rest.size_hint(),
                    _ => SizeHint::default(),
                }
            }
        }
    }
}

impl<B> ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut rec = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if self.generation < rec.generation {
            return Poll::Ready(Some(Err(BodyError::Superseded)));
        }
        if let Some(chunk) = rec.chunks.get(self.pos).cloned() {
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(spill) = rec.spill.as_ref().filter(|s| self.file_pos < s.len()) {
            // A replay sends what went to the file before it reads on from the client.
            return Poll::Ready(Some(match spill.read(self.file_pos) {
                Ok(chunk) => {
                    self.file_pos += chunk.len() as u64;
                    Ok(Frame::data(chunk))
                }
                Err(e) => Err(BodyError::Spill(e)),
            }));
        }
        if rec.done {
            if !self.trailers_sent {
                self.trailers_sent = true;
                if let Some(t) = rec.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        if let Some(spill) = rec.spill.as_ref() {
            // The disk is behind: read no more of the client's body until it catches up.
            if spill.poll_room(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let Some(rest) = rec.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(rest).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                rec.done = true;
                rec.rest = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(BodyError::Read(e.into())))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                rec.received += data.len() as u64;
                if rec.max_body > 0 && rec.received > rec.max_body {
                    rec.too_large = true;
                    return Poll::Ready(Some(Err(BodyError::TooLarge {
                        limit: rec.max_body,
                    })));
                }
                self.metrics.add_bytes(Direction::In, data.len() as u64);
                if !rec.overflowed && rec.spill.is_none() && rec.recorded + data.len() <= rec.limit
                {
                    rec.recorded += data.len();
                    rec.chunks.push(data.clone());
                    self.pos += 1;
                } else if !rec.overflowed {
                    match rec.keep_on_disk(&data) {
                        // This copy has sent all the file holds, this chunk included.
                        Some(len) => self.file_pos = len,
                        None => {
                            self.pos = 0;
                            self.file_pos = 0;
                        }
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Err(frame) => {
                let trailers = frame.into_trailers().ok();
                rec.trailers.clone_from(&trailers);
                self.trailers_sent = true;
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
        }
    }
}

impl<B> Recording<B> {
    /// Keep `data`, read past the memory limit, in the request's spill file: the file's
    /// length after it. When the node has no room to give (no store, the cap, a disk error),
    /// stop keeping (`None`): the body streams on and can no longer be sent again.
    fn keep_on_disk(&mut self, data: &Bytes) -> Option<u64> {
        let Some(store) = self.store else {
            self.overflow("no spill store");
            return None;
        };
        let spill = match self.spill.as_mut() {
            Some(spill) => spill,
            None => match Spill::new(store) {
                Ok(spill) => self.spill.insert(spill),
                Err(e) => {
                    Spill::refused(store);
                    tracing::warn!(error = %e, "request body not kept for a replay");
                    self.overflow("spill file");
                    return None;
                }
            },
        };
        match spill.append(data) {
            Ok(len) => Some(len),
            Err(e) => {
                Spill::refused(store);
                tracing::info!(error = %e, "request body not kept for a replay");
                self.overflow("spill store");
                None
            }
        }
    }

    /// Stop keeping the body: what was kept goes (its spill file with it).
    fn overflow(&mut self, why: &'static str) {
        tracing::debug!(
            limit = self.limit,
            why,
            "request body over the replay limit: it streams, and cannot be retried"
        );
        self.overflowed = true;
        self.chunks = Vec::new();
        self.spill = None;
    }
}

/// Errors of bodies on their way to the client.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from where the request went.
pub(crate) enum UpBody {
    /// An instance on our HTTP/1.1 client.
    H1(H1Body),
    /// An HTTP/2 instance, or a protocol switch's refusal (hyper's client).
    Hyper(Incoming),
    /// A worker (a backhaul stream).
    Stream(RecvBody),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpBody::Stream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::H1(b) => b.is_end_stream(),
            UpBody::Hyper(b) => b.is_end_stream(),
            UpBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::H1(b) => b.size_hint(),
            UpBody::Hyper(b) => b.size_hint(),
            UpBody::Stream(b) => b.size_hint(),
        }
    }
}

/// A request's access-log line, but for the bytes its answer sent: written when the answer's
/// body is done ([`RespBody::log_when_done`]).
pub(crate) struct AccessRecord {
    pub request_id: super::headers::RequestId,
    pub app: Option<Arc<str>>,
    pub outcome: super::attempt::Outcome,
    pub status: u16,
    /// From arrival until the answer's head was ready.
    pub first_byte: std::time::Duration,
    pub started: std::time::Instant,
}

impl AccessRecord {
    fn write(&self, bytes_out: u64) {
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let outcome = &self.outcome;
        anyedge_telemetry::access::record(&anyedge_telemetry::access::AccessLine {
            request_id: self.request_id.as_str(),
            app: self.app.as_deref().unwrap_or(""),
            instance: outcome.instance.as_ref().map_or("", |i| i.instance()),
            status: self.status,
            code: outcome.code.unwrap_or(""),
            fault: outcome.fault.map_or("", |f| f.as_str()),
            attempts: outcome.attempts,
            replays: outcome.replays,
            bytes_out,
            queue_us: micros(outcome.queue),
            connect_us: micros(outcome.connect),
            first_byte_us: micros(self.first_byte),
            total_us: micros(self.started.elapsed()),
        });
    }
}

/// A response body on its way to the client.
pub(crate) struct RespBody {
    kind: RespKind,
    metrics: Option<Arc<AppMetrics>>,
    /// Written when the body is dropped: the access-log line.
    access: Option<Pooled<AccessRecord>>,
    sent: u64,
    /// In-flight slots the request holds until its response has been sent.
    held: Option<Slots>,
    /// The request id, for our HTTP/1.1 server to write into the head (no `HeaderMap`).
    request_id: Option<super::headers::RequestId>,
}

/// The in-flight slots of one request, the app's and the instance's: released on drop.
pub(crate) struct Slots {
    _app: anyedge_catalog::Slot,
    _instance: anyedge_catalog::Slot,
}

impl Slots {
    pub fn new(app: anyedge_catalog::Slot, instance: anyedge_catalog::Slot) -> Slots {
        Slots {
            _app: app,
            _instance: instance,
        }
    }

    /// Keep the app's slot and release the instance's (the request goes to another one).
    pub fn into_app(self) -> anyedge_catalog::Slot {
        self._app
    }
}

enum RespKind {
    Full(Option<Bytes>),
    Upstream(UpBody),
}

impl RespBody {
    pub fn full(bytes: Bytes) -> RespBody {
        RespBody {
            kind: RespKind::Full((!bytes.is_empty()).then_some(bytes)),
            metrics: None,
            access: None,
            sent: 0,
            held: None,
            request_id: None,
        }
    }

    pub fn empty() -> RespBody {
        Self::full(Bytes::new())
    }

    pub fn upstream(body: UpBody, metrics: Arc<AppMetrics>) -> RespBody {
        let mut b = RespBody {
            kind: RespKind::Upstream(body),
            metrics: Some(metrics),
            access: None,
            sent: 0,
            held: None,
            request_id: None,
        };
        b.return_if_done();
        b
    }

    /// The instance's response head as received, when our HTTP/1.1 client kept it so
    /// (`Outbound::raw_answer`): the answer's fields are then its fields plus the response's
    /// `HeaderMap`, whose names replace the received ones.
    pub fn take_raw_head(&mut self) -> Option<super::http1::RawHead> {
        match &mut self.kind {
            RespKind::Upstream(UpBody::H1(b)) => b.take_raw_head(),
            _ => None,
        }
    }

    /// The body's next bytes copied to `out` when they are already read and small (at most
    /// `max`), counted as sent; `None`: read it by frames. Only an instance's answer on our
    /// HTTP/1.1 client has such bytes ([`super::http1::H1Body::copy_buffered`]).
    pub fn copy_buffered(&mut self, out: &mut Vec<u8>, max: usize) -> Option<usize> {
        let RespKind::Upstream(UpBody::H1(b)) = &mut self.kind else {
            return None;
        };
        let n = b.copy_buffered(out, max)?;
        self.sent += n as u64;
        if let Some(m) = &self.metrics {
            m.add_bytes(Direction::Out, n as u64);
        }
        self.return_if_done();
        Some(n)
    }

    /// The request id, for the writer of the answer's head (which names it): our HTTP/1.1
    /// server's answers carry it here instead of in their `HeaderMap`.
    pub fn set_request_id(&mut self, id: super::headers::RequestId) {
        self.request_id = Some(id);
    }

    pub fn take_request_id(&mut self) -> Option<super::headers::RequestId> {
        self.request_id.take()
    }

    /// Write `record` to the access log, with the bytes sent, when the body is finished or
    /// dropped.
    pub fn log_when_done(&mut self, record: Pooled<AccessRecord>) {
        self.access = Some(record);
    }

    /// Hold the request's in-flight slots until the body has been sent.
    pub fn hold(&mut self, slots: Slots) {
        self.held = Some(slots);
    }

    /// Give the slots back once the response has been read to its end (an HTTP/1.1 instance
    /// connection went back to its pool then).
    fn return_if_done(&mut self) {
        if let RespKind::Upstream(body) = &self.kind {
            if body.is_end_stream() {
                self.held = None;
            }
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            RespKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RespKind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
                if let Some(m) = &this.metrics {
                    m.add_bytes(Direction::Out, data.len() as u64);
                }
            }
        }
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Ok(_)))) {
            this.return_if_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RespKind::Full(b) => b.is_none(),
            RespKind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RespKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespKind::Upstream(body) => body.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let Some(record) = self.access.take() {
            record.write(self.sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A client body of ready frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn client_body(chunks: &[&'static str], trailer: bool) -> Frames {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if trailer {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push_back(Frame::trailers(t));
        }
        Frames(frames)
    }

    async fn read_all<B>(body: ReqBody<B>) -> (Vec<u8>, Option<HeaderMap>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let collected = body
            .collect()
            .await
            .map_err(|e| e.to_string())
            .expect("body");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    fn metrics() -> Arc<AppMetrics> {
        Arc::new(AppMetrics::default())
    }

    #[tokio::test]
    async fn a_replay_sends_the_same_body_and_trailers_again() {
        let body = ReqBody::new(client_body(&["hello ", "world"], true), 1024, 0, metrics());
        let replay_before = body.replay().expect("replayable");
        let (first, t1) = read_all(body).await;
        assert_eq!(first, b"hello world");
        assert_eq!(t1.expect("trailers")["grpc-status"], "0");
        let (again, t2) = read_all(replay_before).await;
        assert_eq!(again, b"hello world");
        assert_eq!(t2.expect("trailers")["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_replay_mid_way_resends_what_was_sent_then_reads_the_rest() {
        let mut body = ReqBody::new(client_body(&["a", "b", "c"], false), 1024, 0, metrics());
        let first = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(first, "a");
        let replay = body.replay().expect("within the limit");
        drop(body);
        assert_eq!(read_all(replay).await.0, b"abc");
    }

    #[tokio::test]
    async fn a_new_attempt_stops_the_older_copy() {
        let body = ReqBody::new(client_body(&["a", "b", "c"], false), 1024, 0, metrics());
        let mut first = body.next_attempt().expect("first attempt");
        let a = first.frame().await.expect("frame").expect("ok");
        assert_eq!(a.into_data().expect("data"), "a");
        let second = body.next_attempt().expect("second attempt");
        let stopped = first.frame().await.expect("a frame or an error");
        assert!(matches!(stopped, Err(BodyError::Superseded)));
        assert_eq!(read_all(second).await.0, b"abc", "the new copy gets it all");
    }

    #[tokio::test]
    async fn over_the_limit_it_streams_but_cannot_replay() {
        let body = ReqBody::new(client_body(&["12345", "67890"], false), 6, 0, metrics());
        let probe = body.replay().expect("nothing read yet");
        drop(probe);
        let mut body = body;
        let mut all = Vec::new();
        while let Some(f) = body.frame().await {
            all.extend_from_slice(&f.expect("ok").into_data().expect("data"));
        }
        assert_eq!(all, b"1234567890");
        assert!(body.replay().is_none());
    }

    #[tokio::test]
    async fn the_body_limit_is_enforced_while_streaming() {
        let body = ReqBody::new(client_body(&["12345", "67890"], false), 1024, 8, metrics());
        match body.collect().await {
            Err(err) => assert!(matches!(err, BodyError::TooLarge { limit: 8 })),
            Ok(_) => panic!("a body over the limit must fail"),
        }
    }

    /// A spill store in a directory that lives as long as the test process.
    fn spill_store() -> &'static SpillStore {
        let dir = Box::leak(Box::new(tempfile::tempdir().expect("tempdir")));
        let metrics = anyedge_telemetry::Metrics::new();
        Box::leak(Box::new(
            SpillStore::open(dir.path(), 1 << 20, metrics).expect("spill store"),
        ))
    }

    #[tokio::test]
    async fn past_the_limit_the_rest_is_spilled_and_replayed_in_order() {
        let store = spill_store();
        let chunks = ["12345", "67890", "abc", "defgh"];
        let body = ReqBody::spilling(client_body(&chunks, true), 6, 0, metrics(), Some(store));
        let mut first = body.next_attempt().expect("first attempt");
        for want in ["12345", "67890"] {
            let f = first.frame().await.expect("frame").expect("ok");
            assert_eq!(f.into_data().expect("data"), want);
        }
        // Asked for mid-way: the memory part, the file, then the client's rest.
        let (again, trailers) = read_all(body.next_attempt().expect("kept")).await;
        assert_eq!(again, b"1234567890abcdefgh");
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        let (third, _) = read_all(body.next_attempt().expect("kept")).await;
        assert_eq!(
            third, b"1234567890abcdefgh",
            "all of it from memory and the file"
        );
        body.stop_keeping();
        assert!(body.replay().is_none(), "answered: nothing kept");
        drop(body);
        // The file goes when its last write is done (on the blocking pool).
        let spilled = || {
            let node = &store.metrics().node;
            node.spill_bytes.load(std::sync::atomic::Ordering::Relaxed)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while spilled() > 0 && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(spilled(), 0);
    }

    #[tokio::test]
    async fn over_the_spill_cap_it_streams_but_cannot_replay() {
        let store = spill_store();
        store.set_limit(4);
        let body = ReqBody::spilling(
            client_body(&["12345", "67890"], false),
            5,
            0,
            metrics(),
            Some(store),
        );
        let (all, _) = read_all(body.next_attempt().expect("first")).await;
        assert_eq!(all, b"1234567890");
        assert!(body.replay().is_none());
    }

    #[test]
    fn an_empty_body_is_empty() {
        let body = ReqBody::new(Frames(VecDeque::new()), 1024, 0, metrics());
        assert!(body.is_end_stream());
    }
}
